"""``voxpipe infer TASK``: a TotalSegmentator task on many images, written as TotalSegmentator writes them.

Per case (``<case>`` is the input's name without its suffix):

- by default ``<out>/<case>/<structure>.nii.gz``, one binary mask per structure, named as
  TotalSegmentator names them, with the input's header (``body`` adds ``body.nii.gz`` and
  ``skin.nii.gz``, as TotalSegmentator does);
- with ``ml``, ``<out>/<case>.nii.gz``: the one multilabel map with TotalSegmentator's label-table
  header extension (its own tools and 3D Slicer read the names from it);
- with ``statistics``, its ``statistics.json`` (in the case folder; ``<out>/<case>_statistics.json``
  beside a multilabel map);
- with ``dicom_seg`` (DICOM series inputs), ``<out>/<case>.dcm``: a DICOM-SEG referencing the series,
  one coded segment per structure found.

A case folder is written under a temporary name and renamed when complete, so ``resume`` skips only
finished cases. The models are loaded once for all cases; the batch rules (one case failing on its
own, shards, the summary) are :mod:`voxpipe.pipelines.inference.cases`'.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.cases import (
    InferenceFailed,
    case_name,
    check_shard,
    collect_inputs,
    first_path,
    require_series,
    run_cases,
)
from voxpipe.pipelines.inference.totalseg import steps
from voxpipe.pipelines.inference.totalseg.pipeline import Options, Result, TotalSegmentator
from voxpipe.pipelines.inference.totalseg.tasks import task

logger = logging.getLogger(__name__)

#: Up to this many voxels TotalSegmentator writes the per-structure files with its process pool.
POOL_VOXELS = 512 * 512 * 1000


def read_image(path: Path) -> nib.Nifti1Image:
    """The input as TotalSegmentator reads it: a NIfTI file with nibabel (header and all); other formats
    and DICOM series through voxpipe's loader (checked slice order, spacing and orientation), as NIfTI."""
    from voxpipe.transforms.io import load_volume, read_geometry

    name = path.name.lower()
    if path.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz")):
        read_geometry(path)  # voxpipe's header checks (a truncated file is named, not read as zeros)
        try:
            image = nib.load(str(path))
            image.get_fdata()
        except Exception as error:  # nibabel raises many kinds for broken files
            raise InputError(f"{str(path)!r}: expected a NIfTI image nibabel reads ({error})") from None
        if not isinstance(image, nib.Nifti1Image):
            image = nib.Nifti1Image(image.get_fdata(), image.affine)
        return image
    volume = load_volume(path)
    image = nib.Nifti1Image(np.asarray(volume.array), volume.affine)
    if path.is_dir():  # a DICOM series: in LAS voxel order, as dicom2nifti hands it to TotalSegmentator
        return on_grid_of(image, _LAS)
    return image


#: An affine of LAS voxel order (dicom2nifti's, which TotalSegmentator reads DICOM series through).
_LAS = np.diag([-1.0, 1.0, 1.0, 1.0])


def on_grid_of(image: nib.Nifti1Image, affine: np.ndarray) -> nib.Nifti1Image:
    """``image`` turned (axes permuted and flipped, no resampling) to the voxel order of ``affine``:
    TotalSegmentator's orientation-dependent steps (``vertebrae_pp_refined``'s ellipsoid of even size)
    see a DICOM series in dicom2nifti's LAS order; its map goes back to the series' own grid for a
    DICOM-SEG."""
    from nibabel.orientations import io_orientation, ornt_transform

    return image.as_reoriented(ornt_transform(io_orientation(image.affine), io_orientation(affine)))


def output_paths(out: Path, case: str, *, ml: bool) -> tuple[Path, Path]:
    """(the case's output: its folder or its multilabel file, its statistics.json)."""
    if ml:
        return out / f"{case}.nii.gz", out / f"{case}_statistics.json"
    return out / case, out / case / "statistics.json"


def write_result(result: Result, target: Path, *, ml: bool, task_name: str, statistics_path: Path) -> None:
    """TotalSegmentator's files for one case (see the module docstring), each complete or absent."""
    from voxpipe.transforms.files import atomic_path

    if ml:
        with atomic_path(target) as tmp:
            nib.save(result.image, str(tmp))
    else:
        staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        data = np.asarray(result.image.dataobj)
        if result.unrefined is not None and data.size <= POOL_VOXELS:
            data = result.unrefined  # (TotalSegmentator's default writer: see Result.unrefined)
        for value, name in result.labels.items():
            mask = nib.Nifti1Image((data == value).astype(np.uint8), result.image.affine, result.header)
            nib.save(mask, str(staging / f"{name}.nii.gz"))
        if task_name == "body":
            trunk = nib.load(str(staging / "body_trunc.nii.gz"))
            both = np.zeros(trunk.shape, dtype=np.uint8)
            for name in ("body_trunc", "body_extremities"):
                both[nib.load(str(staging / f"{name}.nii.gz")).get_fdata() > 0.5] = 1
            body = nib.Nifti1Image(both, trunk.affine)
            nib.save(body, str(staging / "body.nii.gz"))
            nib.save(
                steps.extract_skin(result.source, nib.load(str(staging / "body.nii.gz"))),
                str(staging / "skin.nii.gz"),
            )
        if result.statistics is not None:
            steps.write_statistics(result.statistics, staging / statistics_path.name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return
    if result.statistics is not None:
        steps.write_statistics(result.statistics, statistics_path)


def infer_with_totalsegmentator(
    name: str,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    options: Options | None = None,
    ml: bool = False,
    root: str | os.PathLike[str] | None = None,
    device: str = "auto",
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    dicom_seg: bool = False,
    runner: TotalSegmentator | None = None,
) -> list[Path]:
    """TotalSegmentator's task ``name`` on every input, from the weights folder ``root`` (default: the
    one TotalSegmentator uses on this machine); the paths written (case folders or files). Each model
    is loaded once for all the inputs; pass the ``runner`` of an earlier task to keep its models too
    (``voxpipe infer total,lung_vessels,body``: the crop models are shared).

    Raises:
        InputError: bad inputs or missing weights (before anything runs).
        InferenceFailed: some cases failed; every other case was written first.
    """
    from voxpipe.transforms.files import process_alive, remove_stale_temporaries

    options = options or Options()
    spec = task(name, fast=options.fast, fastest=options.fastest, robust_crop=options.robust_crop)
    runner = runner or TotalSegmentator(root, device=device)
    from voxpipe.pipelines.inference.totalseg.tasks import models_of
    from voxpipe.pipelines.inference.totalseg.weights import model_folder

    if not (options.fast or options.fastest):  # every model needed is there, before the first case
        for task_id in models_of(name):
            if task_id in spec.task_ids:
                model_folder(runner.root, task_id, spec.trainer, spec.plans, spec.configuration, task=name)
    images = collect_inputs(inputs)
    if shard is not None:
        k, n = check_shard(shard)
        images = images[k - 1 :: n]
    if dicom_seg:
        require_series(images)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    from voxpipe.transforms.files import write_text_atomic

    write_text_atomic(out / "totalseg.json", json.dumps(describe_run(name, options), indent=2) + "\n")
    for stale in out.glob(".*.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)

    def target(case: Any) -> tuple[Path, Path]:
        return output_paths(out, case_name(case), ml=ml)

    def prepare(case: Any) -> tuple[Any, nib.Nifti1Image]:
        return case, read_image(first_path(case))

    def execute(prepared: tuple[Any, nib.Nifti1Image]) -> None:
        case, image = prepared
        result = runner.run(image, name, options)
        path, stats = target(case)
        write_result(result, path, ml=ml, task_name=name, statistics_path=stats)
        if dicom_seg:
            from voxpipe.transforms.dicom_seg import write_dicom_seg
            from voxpipe.transforms.io import read_geometry

            _, series_affine = read_geometry(first_path(case))  # the grid voxpipe loads the series on
            labels = np.asarray(on_grid_of(result.image, series_affine).dataobj)
            present = {int(v) for v in np.unique(labels) if v}
            write_dicom_seg(
                labels, case, out / f"{case_name(case)}.dcm", names={v: result.labels[v] for v in present}
            )

    pending = [p for p in images if not (resume and target(p)[0].exists())]
    failures: dict[str, str] = {}
    for result in run_cases(pending, prepare=prepare, execute=execute):
        if not result.ok:
            failures[str(first_path(result.case))] = result.reason
            logger.error("%s: %s failed (%s)", result.case, name, result.reason)
    written = [target(p)[0] for p in images if str(first_path(p)) not in failures]
    if failures:
        raise InferenceFailed.of(
            failures, total=len(images), outputs=written, where=f"were written to {str(out)!r}"
        )
    return written


def describe_run(name: str, options: Options) -> dict[str, Any]:
    """What the run chose, and from what (written beside the outputs as ``totalseg.json``)."""
    spec = task(name, fast=options.fast, fastest=options.fastest, robust_crop=options.robust_crop)
    return {
        "task": name,
        "models": list(spec.task_ids),
        "trainer": spec.trainer,
        "configuration": spec.configuration,
        "folds": spec.folds,
        "spacing_mm": spec.resample,
        "crop": spec.crop,
        "source": "TotalSegmentator 2.18.0's task table",
        "options": dict(vars(options)),
    }


__all__ = [
    "describe_run",
    "infer_with_totalsegmentator",
    "on_grid_of",
    "output_paths",
    "read_image",
    "write_result",
]
