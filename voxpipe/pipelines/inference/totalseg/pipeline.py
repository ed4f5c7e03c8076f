"""A TotalSegmentator task run as TotalSegmentator 2.18.0 runs it, with nnU-Net's part done by voxpipe's
one predictor (:class:`voxpipe.pipelines.inference.nnunet.model.NnUNetModel`).

TotalSegmentator does more than call nnU-Net, and every step changes the map:

1. crop tasks first run a rough model (the 6 mm ``total`` model, the 3 mm one with ``robust_crop``,
   the 6 mm ``body`` model for trunk crops, or another task) and crop the image to the structures
   named, with a margin in mm (20 mm whenever the rough model is not another task, as its code does),
   the crop cast to int32;
2. the image is turned to the closest RAS orientation;
3. resampled by TotalSegmentator itself to the task's spacing (SciPy's ``zoom``, order 1 by default,
   cast to int32), so that nnU-Net's own resampling is a no-op;
4. split in three along z above 512·512·900 voxels (models of several parts only, or ``force_split``);
5. each model runs as ``nnUNetv2_predict`` does on the written file (step 0.5; 0.8 for ``total``,
   ``total_v3`` and ``total_mr``; no mirroring), the parts merged by name, later parts winning;
6. task post-processing at the model's resolution (``body``: the largest trunk component, extremity
   blobs under 50 000 mm³ removed; ``vertebrae_pp``: renumbering and dilation; ``--remove-small-blobs``);
7. the labels brought back with order 0 (exact shape, the input's affine forced), turned back, pasted
   into the crop, and written with the input's header.

Files TotalSegmentator writes and reads back between steps are written and read back here too
(uncompressed, in a temporary folder), so that nnU-Net's reader and nibabel's header arithmetic
see what they see there.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.totalseg import steps
from voxpipe.pipelines.inference.totalseg.tasks import auxiliary, classes, part_classes, task
from voxpipe.pipelines.inference.totalseg.weights import model_folder, weights_root

logger = logging.getLogger(__name__)

#: Above this many voxels (after resampling) a model of several parts runs on three overlapping thirds.
SPLIT_VOXELS = 512 * 512 * 900
_SPLIT_MARGIN = 20


@dataclass(frozen=True)
class Options:
    """TotalSegmentator's options, under voxpipe's names (``--roi-subset`` is ``roi_subset``...)."""

    fast: bool = False
    fastest: bool = False
    roi_subset: tuple[str, ...] | None = None
    roi_subset_robust: bool = False
    robust_crop: bool | None = None
    body_seg: bool = False
    force_split: bool = False
    remove_small_blobs: float | None = None  # mm³
    resampling_order: int = 1
    higher_order_resampling: bool = False
    save_lowres: bool = False
    statistics: bool = False
    exclude_border: bool = True
    aggregation: str = "mean"


@dataclass
class Result:
    """One task's map of one image: labels on the input's grid (or the model's with ``save_lowres``)."""

    image: nib.Nifti1Image  # uint8 labels, the input's header, TotalSegmentator's label table
    labels: dict[int, str]  # the structures this run writes (``roi_subset`` applied)
    source: nib.Nifti1Image  # the input as TotalSegmentator read it (for statistics)
    statistics: dict[str, Any] | None = None
    header: Any = None  # the input's header as the per-structure files get it (no label table)
    # The map before vertebrae_pp_refined's refinement and remove_outside: TotalSegmentator's default
    # per-structure writer (its process pool, up to 512·512·1000 voxels) saves its masks from it.
    unrefined: np.ndarray | None = None


class TotalSegmentator:
    """TotalSegmentator's tasks on this machine's weights; each model's weights are loaded once and
    kept for every later image (and every later task using the same model).

    Args:
        root: the weights folder (default :func:`weights_root`: TotalSegmentator's own).
        device: where the networks run (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``); on CUDA
            nnU-Net's fp16 autocast, as TotalSegmentator on a GPU.
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, device: str = "cpu", runtime: str = "torch"
    ) -> None:
        self.root = Path(root) if root is not None else weights_root()
        self.device, self.runtime = device, runtime
        self._models: dict[tuple[str, float], Any] = {}

    # -- the models ------------------------------------------------------------------------------
    def _model(
        self, task_id: int, trainer: str, plans: str, configuration: str, folds: Any, step: float, name: str
    ) -> Any:
        from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder
        from voxpipe.pipelines.inference.nnunet.model import NnUNetModel

        folder = model_folder(self.root, task_id, trainer, plans, configuration, task=name)
        key = (str(folder), tuple(folds) if folds is not None else None, step)
        if key not in self._models:
            self._models[key] = NnUNetModel(
                NnUNetFolder(folder, folds=list(folds) if folds is not None else None),
                step=step,
                mirroring=False,
                device=self.device,
                runtime=self.runtime,
            )
        model = self._models[key]
        for other in self._models.values():  # one OpenVINO network at a time (each holds GBs of buffers;
            if other is not model:  # the next use reloads it from the conversion cache in seconds)
                other.release_runtime()
        return model

    def _nnunet(self, model: Any, image: Path, out: Path, *, cropped: bool = False) -> nib.Nifti1Image:
        """``nnUNetv2_predict`` on one written file: the label map as nnU-Net writes it, read back.
        ``cropped``: TotalSegmentator's cropped-logits export (``--higher-order-resampling``)."""
        from voxpipe.pipelines.inference.nnunet.readers import read_case

        case = read_case([image], reader=str(model.folder.plans.get("image_reader_writer", "SimpleITKIO")))
        model.case_name = str(image)
        data = model.preprocess(case)
        shape = list(case.properties["shape_after_cropping"])
        if cropped and list(data.shape[1:]) != shape:
            logits = model.logits(data).numpy()
            resampler = model._resampler(case, case.properties["shape_after_resampling"])
            labels = model.folder.labels
            segmentation = model.place(
                steps.cropped_logits_labels(
                    logits,
                    shape,
                    resampler.rows(logits[0], 0, 0, resampler.shape[0]),
                    regions=list(labels.regions_class_order or []) if labels.regions is not None else None,
                    dtype=np.uint8 if len([v for v in labels.values if v]) < 255 else np.uint16,
                ),
                case,
            )
        else:
            segmentation = model.export(model.stream(data), case)
        model.write(segmentation, case, out)
        return _read(out)

    # -- TotalSegmentator's python_api.totalsegmentator ------------------------------------------
    def run(self, image: nib.Nifti1Image, name: str, options: Options | None = None) -> Result:
        """Task ``name`` on ``image`` (a NIfTI image as nibabel reads it), as ``totalsegmentator()``."""
        o = options or Options()
        spec = task(name, fast=o.fast, fastest=o.fastest, robust_crop=o.robust_crop)
        if o.save_lowres and not (o.fast or o.fastest):
            raise InputError(f"{name!r}: --save-lowres works with --fast or --fastest only")
        roi_subset = list(o.roi_subset) if o.roi_subset is not None else None
        robust_rs = o.roi_subset_robust or (name.endswith("_mr") and roi_subset is not None)
        if roi_subset is not None and not name.startswith("total"):
            raise InputError(f"{name!r}: --roi-subset works with the tasks total and total_mr only")
        if roi_subset is not None:
            unknown = sorted(set(roi_subset) - set(classes(name).values()))
            if unknown:
                raise InputError(f"--roi-subset: {unknown} are not structures of task {name!r}")
        body_seg = o.body_seg and not name.endswith("_mr")
        resample = spec.resample
        save_lowres = o.save_lowres
        if o.higher_order_resampling:
            resample, save_lowres = None, False
        crop = spec.crop
        if save_lowres and (crop is not None or roi_subset is not None or body_seg):
            raise InputError(
                f"{name!r}: --save-lowres does not work with cropping, --roi-subset or --body-seg"
            )
        fast_statistics = o.statistics and o.fast
        statistics = o.statistics and not o.fast

        crop_image: nib.Nifti1Image | None = None
        crop_addon = list(spec.crop_addon)
        remove_mask = None
        if crop is not None or roi_subset is not None:
            body_seg = False
            if spec.crop_model is None:
                mr = name.endswith("_mr")
                if robust_rs or spec.robust_crop:
                    crop_id, crop_spacing = (852 if mr else 297), 3.0
                else:
                    crop_id, crop_spacing = (852, 3.0) if mr else (298, 6.0)
                crop_task = "total_mr" if mr or spec.modality == "mr" else "total"
                crop_trainer = (
                    "nnUNetTrainer_2000epochs_NoMirroring" if mr else "nnUNetTrainer_4000epochs_NoMirroring"
                )
                if crop is not None and ("body_trunc" in crop or "body_extremities" in crop):
                    crop_id, crop_spacing, crop_trainer, crop_task = 300, 6.0, "nnUNetTrainer", "body"
                rough = self._predict(
                    image,
                    _Step(
                        name,
                        (crop_id,),
                        crop_trainer,
                        "nnUNetPlans",
                        "3d_fullres",
                        (0,),
                        (crop_spacing,) * 3,
                        crop_task,
                        crop_task,
                        False,
                    ),
                    resampling_order=o.resampling_order,
                ).image
                names_of = classes(crop_task)
                crop_addon = [20, 20, 20]
            else:
                rough = self.run(image, spec.crop_model, Options(resampling_order=o.resampling_order)).image
                names_of = classes(spec.crop_model)
            by_name = {v: k for k, v in names_of.items()}
            rough_labels = rough.get_fdata()
            mask = np.zeros(rough.shape, dtype=np.uint8)
            for roi in crop if crop is not None else roi_subset:  # type: ignore[union-attr]
                mask[rough_labels == by_name[roi]] = 1
            crop_image = nib.Nifti1Image(mask, rough.affine)
            if spec.remove_outside is not None:
                outside = np.zeros(rough.shape, dtype=np.uint8)
                for roi in spec.remove_outside:
                    outside[rough_labels == by_name[roi]] = 1
                remove_mask = outside
        if crop_image is None and body_seg:
            body = self._predict(
                image,
                _Step(
                    name,
                    (300,),
                    "nnUNetTrainer",
                    "nnUNetPlans",
                    "3d_fullres",
                    (0,),
                    (6.0,) * 3,
                    "body",
                    "body",
                    False,
                    binary=True,
                ),
                resampling_order=o.resampling_order,
            ).image
            crop_image = body

        body_mask = None
        if name == "vertebrae_pp_refined":
            body_mask = (
                self._predict(
                    image,
                    _Step(
                        name,
                        (305,),
                        "nnUNetTrainer_DASegOrd0",
                        "nnUNetPlans",
                        "3d_fullres",
                        (0,),
                        (1.5,) * 3,
                        "vertebrae_body",
                        "vertebrae_body",
                        False,
                        cropped_export=o.higher_order_resampling,
                    ),
                    resampling_order=o.resampling_order,
                )
                .image.get_fdata()
                .astype(np.uint8)
            )

        main = _Step(
            name,
            spec.task_ids,
            spec.trainer,
            spec.plans,
            spec.configuration,
            spec.folds,
            resample,
            "vertebrae_pp" if name == "vertebrae_pp_refined" else name,
            name,
            spec.several,
            cropped_export=o.higher_order_resampling,
        )
        result = self._predict(
            image,
            main,
            crop=crop_image,
            crop_addon=crop_addon,
            roi_subset=roi_subset,
            force_split=o.force_split,
            remove_small_blobs=o.remove_small_blobs,
            resampling_order=o.resampling_order,
            save_lowres=save_lowres and (o.fast or o.fastest),
            remove_mask=remove_mask,
            remove_dilation=spec.remove_outside_dilation,
            body_mask=body_mask,
            fast_statistics=fast_statistics,
            exclude_border=o.exclude_border,
            aggregation=o.aggregation,
        )
        if statistics:
            result.statistics = steps.statistics(
                result.image.get_fdata().astype(np.uint8),
                result.source,
                result.labels,
                exclude_border=o.exclude_border,
                aggregation=o.aggregation,
            )
        return result

    # -- TotalSegmentator's nnunet.nnUNet_predict_image ------------------------------------------
    def _predict(
        self,
        image: nib.Nifti1Image,
        step: _Step,
        *,
        crop: nib.Nifti1Image | None = None,
        crop_addon: Sequence[int] = (3, 3, 3),
        roi_subset: list[str] | None = None,
        force_split: bool = False,
        remove_small_blobs: float | None = None,
        resampling_order: int = 1,
        save_lowres: bool = False,
        remove_mask: np.ndarray | None = None,
        remove_dilation: float | None = None,
        body_mask: np.ndarray | None = None,
        fast_statistics: bool = False,
        exclude_border: bool = True,
        aggregation: str = "mean",
    ) -> Result:
        original = image
        if len(original.shape) == 2:
            raise InputError("TotalSegmentator's models need a 3D image, found a 2D one")
        if len(original.shape) > 3:
            logger.warning("a %dD image: only its first volume is segmented", len(original.shape))
            original = nib.Nifti1Image(original.get_fdata()[:, :, :, 0], original.affine)
        labels = classes(step.output_task)
        if roi_subset is not None:
            labels = {k: v for k, v in labels.items() if v in roi_subset}
        resample = step.resample
        if save_lowres and crop is not None:
            raise InputError("--save-lowres does not work with cropping or --roi-subset")
        current = nib.Nifti1Image(original.get_fdata(), original.affine)
        box = None
        if crop is not None:
            if crop.get_fdata().sum() == 0:
                logger.info("%s: the crop is empty; the map is empty", step.output_task)
                empty = nib.Nifti1Image(np.zeros(current.shape, dtype=np.uint8), current.affine)
                return Result(steps.label_table(empty, labels), labels, original)
            current, box = steps.crop_to_mask(current, crop, crop_addon, np.int32)
        current = nib.as_closest_canonical(current)
        shape_before = current.shape
        resampled = current
        if resample is not None:
            resampled = steps.change_spacing(current, resample, order=resampling_order, dtype=np.int32)

        with tempfile.TemporaryDirectory(prefix="voxpipe-totalseg.") as tmp:
            scratch = Path(tmp)
            written = scratch / "s01_0000.nii"
            nib.save(resampled, written)
            resampled = _read(written)
            pieces = [written]
            size = resampled.shape
            split = (np.prod(size) > SPLIT_VOXELS and size[2] > 200 and step.several) or force_split
            third = size[2] // 3
            if split and third < _SPLIT_MARGIN - 1:  # TotalSegmentator's own split fails here too
                raise InputError(
                    f"--force-split: expected at least {3 * (_SPLIT_MARGIN - 1)} slices at the model's "
                    f"spacing (three thirds with {_SPLIT_MARGIN}-slice overlaps, "
                    f"as TotalSegmentator splits), found {size[2]}",
                    hint="leave out --force-split for this scan",
                )
            if split:
                data = resampled.get_fdata()
                m = _SPLIT_MARGIN
                bounds = [(None, third + m), (third + 1 - m, third * 2 + m), (third * 2 + 1 - m, None)]
                pieces = []
                for index, (lo, hi) in enumerate(bounds):
                    piece = scratch / f"s0{index + 1}_0000.nii"
                    nib.save(nib.Nifti1Image(data[:, :, lo:hi], resampled.affine), piece)
                    pieces.append(piece)
                del data
            step_size = 0.8 if step.task_name in ("total", "total_v3", "total_mr") else 0.5
            ids = list(step.task_ids)
            if step.several and roi_subset is not None:
                ids = [
                    tid
                    for tid in ids
                    if any(v in roi_subset for v in part_classes(step.task_name, tid).values())
                ]
            outputs = [scratch / p.name.replace("_0000", "") for p in pieces]
            if step.several:
                by_name = {v: k for k, v in classes(step.task_name).items()}
                combined = [np.zeros(_read(p).shape, dtype=np.uint8) for p in pieces]
                for tid in ids:
                    model = self._model(
                        tid, step.trainer, step.plans, step.configuration, step.folds, step_size, step.name
                    )
                    part = part_classes(step.task_name, tid)
                    lut = np.zeros(max(part) + 1, dtype=np.uint8)
                    for value, structure in part.items():
                        lut[value] = by_name[structure]
                    for index, piece in enumerate(pieces):
                        seg = np.asanyarray(
                            self._nnunet(model, piece, outputs[index], cropped=step.cropped_export).dataobj
                        ).astype(np.uint8)
                        if seg.size and seg.max() >= len(lut):
                            lut = np.pad(lut, (0, int(seg.max()) + 1 - len(lut)))
                        mapped = lut[seg]
                        np.copyto(combined[index], mapped, where=mapped != 0)
                for index, output in enumerate(outputs):
                    nib.save(nib.Nifti1Image(combined[index], resampled.affine), output)
            else:
                (tid,) = ids
                model = self._model(
                    tid, step.trainer, step.plans, step.configuration, step.folds, step_size, step.name
                )
                for piece, output in zip(pieces, outputs, strict=True):
                    self._nnunet(model, piece, output, cropped=step.cropped_export)
            if split:
                whole = np.zeros(resampled.shape, dtype=np.uint8)
                m = _SPLIT_MARGIN
                whole[:, :, :third] = _read(outputs[0]).get_fdata()[:, :, :-m]
                whole[:, :, third : third * 2] = _read(outputs[1]).get_fdata()[:, :, m - 1 : -m]
                whole[:, :, third * 2 :] = _read(outputs[2]).get_fdata()[:, :, m - 1 :]
                nib.save(nib.Nifti1Image(whole, resampled.affine), outputs[0])
            predicted = _read(outputs[0])

        task_labels = classes(step.task_name)
        aux = auxiliary(step.task_name)
        if aux:
            data = predicted.get_fdata()
            for value in aux:
                data[data == value] = 0
            predicted = nib.Nifti1Image(data.astype(np.uint8), predicted.affine)
        zooms = predicted.header.get_zooms()
        voxel = np.prod(zooms)
        if step.task_name == "body":
            data = steps.keep_largest(predicted.get_fdata().astype(np.uint8), task_labels, ["body_trunc"])
            predicted = nib.Nifti1Image(data, predicted.affine)
            voxel = np.prod(predicted.header.get_zooms())
            data = steps.remove_small(
                predicted.get_fdata().astype(np.uint8), task_labels, ["body_extremities"], 50000 / voxel
            )
            predicted = nib.Nifti1Image(data, predicted.affine)
        if step.task_name == "vertebrae_pp":
            data = steps.vertebrae_pp(
                predicted.get_fdata().astype(np.uint8),
                task_labels,
                voxel_volume=np.prod(predicted.header.get_zooms()),
                spacing=predicted.header.get_zooms(),
            )
            predicted = nib.Nifti1Image(data, predicted.affine)
        if remove_small_blobs:
            voxel = np.prod(predicted.header.get_zooms())
            data = steps.remove_small(
                predicted.get_fdata().astype(np.uint8),
                task_labels,
                list(task_labels.values()),
                remove_small_blobs / voxel,
            )
            predicted = nib.Nifti1Image(data, predicted.affine)
        stats = None
        if fast_statistics:
            stats = steps.statistics(
                predicted.get_fdata(),
                resampled,
                labels,
                exclude_border=exclude_border,
                aggregation=aggregation,
            )
        if resample is not None and not save_lowres:
            predicted = steps.change_spacing(
                predicted, resample, shape=shape_before, order=0, dtype=np.uint8, affine=current.affine
            )
        predicted = steps.undo_canonical(predicted, original)
        if box is not None:
            predicted = steps.undo_crop(predicted, original, box)
        data = predicted.get_fdata().astype(np.uint8)
        if step.binary:
            data = (data > 0).astype(np.uint8)
        refined = (body_mask is not None and step.output_task == "vertebrae_pp_refined") or (
            remove_dilation is not None and remove_mask is not None
        )
        unrefined = data.copy() if refined else None  # what its default per-structure writer saves
        if body_mask is not None and step.output_task == "vertebrae_pp_refined":
            data = steps.refine_vertebrae(data, body_mask, labels, original.header.get_zooms())
        if roi_subset is not None:
            data *= np.isin(data, list(labels)).astype(np.uint8)
        if remove_dilation is not None and remove_mask is not None:
            voxels = int(remove_dilation / np.mean(original.header.get_zooms()))
            data = steps.remove_outside(data, remove_mask, voxels)
        header = predicted.header.copy() if save_lowres else original.header.copy()
        header.set_data_dtype(np.uint8)
        out = nib.Nifti1Image(data, predicted.affine, header)
        return Result(
            steps.label_table(out, labels), labels, original, stats, header=header, unrefined=unrefined
        )


@dataclass(frozen=True)
class _Step:
    """One ``nnUNet_predict_image`` call: the model(s) and the task whose rules apply."""

    name: str  # the task the user asked for (for messages)
    task_ids: tuple[int, ...]
    trainer: str
    plans: str
    configuration: str
    folds: tuple[int, ...] | None
    resample: tuple[float, ...] | None
    task_name: str  # whose labels and post-processing the models' output gets
    output_task: str  # whose labels the written map has
    several: bool
    binary: bool = False
    cropped_export: bool = False  # TotalSegmentator's cropped-logits export (--higher-order-resampling)


def _read(path: Path) -> nib.Nifti1Image:
    """A NIfTI file (``.nii``) read whole into memory, header and all, as nibabel reads it from disk
    (the temporary folder goes away)."""
    return nib.Nifti1Image.from_bytes(path.read_bytes())


__all__ = ["SPLIT_VOXELS", "Options", "Result", "TotalSegmentator"]
