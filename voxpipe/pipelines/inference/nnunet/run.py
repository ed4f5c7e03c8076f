"""``voxpipe infer`` for an nnU-Net model folder (or a model of several nnU-Net parts): the case loop.

Each case is read with the plans' reader, preprocessed in the prefetch thread while the previous case
runs, streamed through :class:`voxpipe.pipelines.inference.nnunet.model.NnUNetModel` (the one
predictor) and written as nnU-Net writes it; the batch behaviour (one case failing on its own, resume,
shards, the summary) is :mod:`voxpipe.pipelines.inference.cases`'.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.cases import (
    InferenceFailed,
    case_name,
    check_shard,
    collect_inputs,
    is_complete,
    require_series,
    run_cases,
)
from voxpipe.pipelines.inference.models import merge_parts
from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder
from voxpipe.pipelines.inference.nnunet.model import NnUNetModel
from voxpipe.pipelines.inference.nnunet.readers import Case, read_case

logger = logging.getLogger(__name__)


def paths_of(case: Any) -> list[Path]:
    """The channel files of a case (one path, or nnU-Net's ``case_0000``, ``case_0001``... tuple)."""
    return list(case) if isinstance(case, tuple) else [case]


def infer_with_nnunet(
    folder: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    step: float = 0.5,
    tta: bool = False,
    resume: bool = False,
    statistics: bool = True,
    shard: tuple[int, int] | None = None,
    parts: Sequence[Mapping[str, Any]] | None = None,
    names: Mapping[int, str] | None = None,
    dicom_seg: bool = False,
    fast: bool = False,
    device: str = "cpu",
    runtime: str = "torch",
    save_probabilities: bool = False,
) -> list[Path]:
    """``voxpipe infer`` for an nnU-Net model folder: one ``<case>.nii.gz`` per input on its grid.

    With ``parts`` (a multi-part model's manifest entries: ``folder`` relative to ``folder``, and
    ``labels``, part label → merged label), every part runs on each case and the maps are merged
    (:func:`voxpipe.pipelines.inference.models.merge_parts`); ``names`` then name the merged labels.

    A DICOM series folder is read with voxpipe's series loader (slice order, spacing and orientation
    checked) and handed to the model as SimpleITK would read the same volume written as NIfTI; with
    ``dicom_seg``, ``<case>.dcm`` is written beside the label map: a DICOM-SEG referencing the series,
    one coded segment per structure found.

    The folds' weights are loaded once; the cases run through the one case loop
    (:func:`voxpipe.pipelines.inference.cases.run_cases`: the next case is read while this one
    runs, each case succeeds or fails on its own). With ``save_probabilities``, ``<case>.npz``
    (``probabilities``, (C, z, y, x) float32) and ``<case>.pkl`` (the case's properties) beside the
    map, as ``nnUNetv2_predict --save_probabilities`` writes them. ``tta`` is nnU-Net's mirroring over the
    checkpoint's allowed axes; ``fast`` is :class:`NnUNetModel`'s fast path; ``device`` where the
    networks run (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``; fp16 autocast on CUDA, as
    nnU-Net); ``runtime`` what runs them on the CPU (``torch``, ``openvino``, ``openvino-int8``:
    :mod:`voxpipe.pipelines.inference.runtimes`). Writes ``statistics.csv``/``.json`` with ``dataset.json``'s names.

    Raises:
        InputError: bad inputs (before anything runs). BundleError: the folder does not load.
        InferenceFailed: some cases failed; every other case was written first.
    """
    from voxpipe.transforms.files import remove_stale_temporaries
    from voxpipe.transforms.io import read_geometry

    root = Path(folder)
    if save_probabilities and parts:
        raise InputError(
            f"{str(root)!r}: --save-probabilities: a model of several merged parts has no one probability map",
            hint="run a part's own folder to save its probabilities",
        )
    entries = list(parts) if parts else [{"folder": ".", "labels": None}]
    models = [NnUNetFolder(root / e["folder"], folds=folds, checkpoint=checkpoint) for e in entries]
    model = models[0]
    images = collect_inputs(inputs, channels=len(model.channels))
    if shard is not None:
        k, n = check_shard(shard)
        images = images[k - 1 :: n]
    if dicom_seg:
        require_series(images)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    predictors = [
        NnUNetModel(m, step=step, mirroring=tta, fast=fast, device=device, runtime=runtime) for m in models
    ]  # every part's weights, once
    failures: dict[str, str] = {}
    reader = str(model.plans.get("image_reader_writer", "SimpleITKIO"))

    paths = paths_of
    scratch = Path(
        tempfile.mkdtemp(prefix=".voxpipe-series.", dir=out)
    )  # DICOM series as NIfTI, removed at the end

    def readable(case: Any) -> list[Path]:
        """The case's files as SimpleITK reads them: a DICOM series becomes one NIfTI of voxpipe's loading."""
        if isinstance(case, Path) and case.is_dir():
            from voxpipe.transforms.io import load_volume, save_nifti

            volume = load_volume(case)
            converted = scratch / f"{case_name(case)}_0000.nii.gz"
            save_nifti(np.asarray(volume.array), volume.affine, converted)
            return [converted]
        return paths_of(case)

    def output(case: Any) -> Path:  # nnU-Net's naming: the channel suffix (_0000) dropped
        return out / f"{re.sub(r'_[0-9]{4}$', '', case_name(case))}.nii.gz"

    def prepare(case: Any) -> tuple[Any, Case, list[Path], np.ndarray | None]:
        for path in paths(case):  # voxpipe's header checks: SimpleITK reads a truncated .nii.gz as zeros
            read_geometry(path)
        files = readable(case)
        item = read_case(files, reader=reader)
        # one model: its preprocessing runs here, in the prefetch thread, while the previous case runs
        data = predictors[0].preprocess(item) if len(predictors) == 1 else None
        return case, item, files, data

    def execute(prepared: tuple[Any, Case, list[Path], np.ndarray | None]) -> None:
        case, item, files, data = prepared
        maps = []
        for index, predictor in enumerate(predictors):
            predictor.case_name = str(files[0])
            part = item if index == 0 else read_case(files, reader=reader)  # each part: its own copy
            ready = data if data is not None else predictor.preprocess(part)
            if save_probabilities:  # nnU-Net's format needs the whole C × grid
                logits = predictor.logits(ready)
                maps.append(predictor.export(logits, part))
                _write_probabilities(predictor.probabilities(logits, part), part, output(case))
                continue
            maps.append(predictor.export(predictor.stream(ready), part))
        segmentation = maps[0] if parts is None else merge_parts(maps, entries)
        written = predictors[0].write(segmentation, item, output(case))
        if dicom_seg:
            from voxpipe.transforms.dicom_seg import write_dicom_seg
            from voxpipe.transforms.io import load_volume

            label = load_volume(written, label=True)  # on the grid voxpipe loads the series with
            present = {int(v) for v in np.unique(label.array) if v}
            write_dicom_seg(
                label.array,
                case,
                written.with_name(f"{case_name(case)}.dcm"),
                names={v: label_names[v] for v in present},
            )
        for file in files:
            if file.parent == scratch:
                file.unlink()

    label_names = {int(k): v for k, v in (names or model.labels.names).items() if int(k)}
    pending = [p for p in images if not (resume and is_complete(output(p)))]
    try:
        for result in run_cases(pending, prepare=prepare, execute=execute):
            if not result.ok:
                failures[str(paths(result.case)[0])] = result.reason
                logger.error("%s: inference failed (%s)", result.case, result.reason)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written = [p for p in images if str(paths(p)[0]) not in failures]
    outputs = [output(p) for p in written]
    if statistics and outputs:
        from voxpipe.pipelines.inference.stats import (
            case_statistics,
            write_shard_statistics,
            write_statistics,
        )
        from voxpipe.transforms.io import load_volume

        per_case = {}
        for image, written_path in zip(written, outputs, strict=True):
            label = load_volume(written_path)
            source = load_volume(paths(image)[0])
            intensity = source.array if source.array.shape == label.array.shape else None
            per_case[output(image).name[: -len(".nii.gz")]] = case_statistics(
                label.array, label.affine, names=label_names, image=intensity
            )
        if shard is not None:  # the shards of one folder: each adds its part, the last one merges all
            write_shard_statistics(per_case, out, check_shard(shard))
        else:
            write_statistics(per_case, out)
    if failures:
        raise InferenceFailed.of(
            failures, total=len(images), outputs=outputs, where=f"were written to {str(out)!r}"
        )
    return outputs


def _write_probabilities(probabilities: np.ndarray, case: Case, labels_path: Path) -> None:
    """``<case>.npz`` and ``<case>.pkl`` as ``nnUNetv2_predict --save_probabilities`` writes them."""
    import pickle

    from voxpipe.transforms.files import atomic_path

    stem = labels_path.name[: -len(".nii.gz")]
    with atomic_path(labels_path.with_name(f"{stem}.npz")) as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, probabilities=probabilities)
    properties = {
        "sitk_stuff": {k: tuple(case.geometry[k]) for k in ("spacing", "origin", "direction")},
        "spacing": [float(s) for s in case.spacing],
        "shape_before_cropping": tuple(int(s) for s in case.properties["shape_before_cropping"]),
        "bbox_used_for_cropping": [[int(a), int(b)] for a, b in case.properties["box"]],
        "shape_after_cropping_and_before_resampling": tuple(
            int(s) for s in case.properties["shape_after_cropping"]
        ),
    }
    with atomic_path(labels_path.with_name(f"{stem}.pkl")) as tmp:
        tmp.write_bytes(pickle.dumps(properties))


__all__ = ["infer_with_nnunet", "paths_of"]
