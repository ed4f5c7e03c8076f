"""Predict label maps for image files with a bundle's inference config.

The bundle does the work (MONAI preprocessing, sliding-window inferer, ``Invertd`` back to the
source grid, :mod:`voxpipe.transforms.postprocess`, :class:`voxpipe.transforms.io.SaveLabelLiked`);
this module turns a user's inputs (files, folders of files, DICOM series folders) into the bundle's
``datalist``, checks the weights exist first, and gives batch behaviour:

* every input's header is read before the network runs; unreadable inputs are set aside;
* a case that fails while the bundle runs is recorded and the run continues with the next case;
* ``resume=True`` skips cases whose output already exists (outputs are written atomically, so an
  existing output is complete);
* failures are summarised at the end in one :class:`InferenceFailed` error (exit code 2) after all
  other cases were written; ``statistics.csv``/``.json`` (:mod:`voxpipe.pipelines.stats`) cover the
  written cases.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.bundle import find_config, innermost_error, run_bundle
from voxpipe.transforms.io import (
    VOLUME_SUFFIXES,
    case_id,
    find_volumes,
    load_volume,
    read_geometry,
    volume_suffix,
)

logger = logging.getLogger(__name__)

# What the bundles' LoadVolumed reads (nibabel for NIfTI, SimpleITK for the rest); a folder without
# such files is read as a DICOM series.
INFER_SUFFIXES = VOLUME_SUFFIXES


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files from a mix of files and folders (a folder contributes the images directly in it;
    a folder holding no image files but DICOM slices is one input, a DICOM series).

    Raises:
        InputError: a path does not exist, is not an image, a folder holds no images, two inputs share
            a case id (their outputs would overwrite each other), or nothing was given.
    """
    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in find_volumes(path) if volume_suffix(p) in INFER_SUFFIXES]
            if not found:
                from voxpipe.transforms.dicom import discover_series

                try:
                    discover_series(path)
                except InputError:
                    raise InputError(
                        f"{str(path)!r}: expected image files ({', '.join(INFER_SUFFIXES)}) or DICOM slices in this folder, found neither"
                    ) from None
                found = [path]
            images.extend(found)
        elif path.is_file():
            if volume_suffix(path) not in INFER_SUFFIXES:
                raise InputError(
                    f"{str(path)!r}: expected an image file ({', '.join(INFER_SUFFIXES)}), found {volume_suffix(path) or path.suffix!r}",
                    hint="convert other formats with `voxpipe data convert`",
                )
            images.append(path)
        else:
            raise InputError(f"{str(path)!r}: expected an image file or folder, found nothing at that path")
    if not images:
        raise InputError("inputs: expected at least one image file or folder, found none")
    seen: dict[str, Path] = {}
    for image in images:
        if case_id(image) in seen:
            raise InputError(f"{str(image)!r}: same case id {case_id(image)!r} as {str(seen[case_id(image)])!r}; outputs would collide")
        seen[case_id(image)] = image
    return images


class InferenceFailed(InputError):
    """Some cases failed; the others were written. ``failures`` maps input path → reason."""

    def __init__(self, message: str, *, outputs: list[Path], failures: dict[str, str]) -> None:
        super().__init__(message)
        self.outputs = outputs
        self.failures = failures


def _output_path(output_dir: Path, image: Path) -> Path:
    return output_dir / f"{case_id(image)}.nii.gz"


def _complete(path: Path) -> bool:
    try:
        read_geometry(path)
    except InputError:
        return False
    return True


def infer_with_bundle(
    bundle_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    statistics: bool = True,
    dicom_seg: bool = False,
) -> list[Path]:
    """Segment every input image; one ``<case id>.nii.gz`` per image on the image's exact grid.

    Args:
        bundle_dir: bundle folder with ``configs/inference.yaml``.
        inputs: image files, folders of image files, DICOM series folders.
        output_dir: where the label maps (and ``statistics.csv``/``.json``) are written.
        weights: network weights; default ``<bundle_dir>/models/model.pt``.
        overrides: further config overrides (e.g. ``{"patch_size": [64, 64, 32]}``).
        resume: skip inputs whose output exists and is readable.
        statistics: write per-case statistics of the written label maps.
        dicom_seg: for DICOM series inputs, also write ``<case id>.dcm``, a DICOM-SEG referencing
            the series (:func:`voxpipe.transforms.dicom_seg.write_dicom_seg`).

    Returns:
        Paths of the label maps (written or, with ``resume``, already present), in input order.

    Raises:
        InputError: bad inputs or missing weights (before anything runs).
        InferenceFailed: some cases failed; every other case was written first.
    """
    images = collect_inputs(inputs)
    checkpoint = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
    if not checkpoint.is_file():
        raise InputError(
            f"{str(checkpoint)!r}: expected network weights (the inference config's 'checkpoint'), found no file",
            hint="train the bundle first (voxpipe train) or pass --weights FILE",
        )
    out_dir = Path(output_dir)
    failures: dict[str, str] = {}
    done = [p for p in images if resume and _complete(_output_path(out_dir, p))]
    if done:
        logger.info("resume: %d of %d cases already have outputs; skipped", len(done), len(images))
    pending = []
    for image in (p for p in images if p not in done):
        try:
            read_geometry(image)
        except InputError as error:
            failures[str(image)] = str(error)
            logger.error("%s: skipped (%s)", image, error)
        else:
            pending.append(image)
    values = {
        "output_dir": str(out_dir.resolve()),
        "checkpoint": str(checkpoint.resolve()),
        **(overrides or {}),
    }
    while pending:
        before = {p: _stamp(_output_path(out_dir, p)) for p in pending}
        try:
            run_bundle(bundle_dir, config="inference", overrides={**values, "datalist": [{"image": str(p.resolve())} for p in pending]})
            pending = []
        except Exception as error:  # one case's failure must not cost the others
            fresh = [p for p in pending if _stamp(_output_path(out_dir, p)) != before[p]]
            unwritten = [p for p in pending if p not in fresh]
            if not unwritten or (fresh and pending.index(unwritten[0]) < pending.index(fresh[-1])):
                raise  # not attributable to one case: a set-up error, reported as is
            # Attributable to a case when the engine was already writing cases, or when voxpipe's own
            # loading/writing refused the case; otherwise (weights that do not fit, a bad override)
            # it is a set-up error and is reported as such.
            root = innermost_error(error) if isinstance(error, BundleError) or not isinstance(error, InputError) else error
            if not fresh and not (isinstance(root, InputError) and not isinstance(root, BundleError)):
                raise
            failed = unwritten[0]
            reason = str(error).splitlines()[0]
            failures[str(failed)] = reason
            logger.error("%s: inference failed (%s); continuing with the next case", failed, failures[str(failed)])
            pending = pending[pending.index(failed) + 1 :]
    outputs = [_output_path(out_dir, p) for p in images if str(p) not in failures]
    missing = [str(p) for p in outputs if not p.is_file()]
    if missing:
        raise InputError(f"{str(bundle_dir)!r}: inference finished but wrote no output for {missing}")
    written = [p for p in images if str(p) not in failures]
    if statistics and outputs:
        _write_statistics(bundle_dir, overrides or {}, written, out_dir)
    if dicom_seg:
        from voxpipe.transforms.dicom_seg import write_dicom_seg

        for image in (p for p in written if p.is_dir()):
            label = load_volume(_output_path(out_dir, image), label=True)
            write_dicom_seg(label.array, image, out_dir / f"{case_id(image)}.dcm", names=_label_names(bundle_dir))
    if failures:
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in failures.items())
        raise InferenceFailed(
            f"{len(failures)} of {len(images)} cases failed (the other {len(outputs)} were written to {str(out_dir)!r}):\n  {listing}",
            outputs=outputs, failures=failures,
        )  # fmt: skip
    return outputs


def _stamp(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _label_names(bundle_dir: str | os.PathLike[str]) -> dict[int, str]:
    """Label value → name from the bundle's metadata (``outputs.pred.channel_def``)."""
    import json

    metadata = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
    channels = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    return {int(k): str(v) for k, v in channels.items() if int(k)} or {1: "foreground"}


def _write_statistics(bundle_dir: str | os.PathLike[str], overrides: Mapping[str, Any], images: list[Path], out_dir: Path) -> None:
    """Per-case statistics from the written label maps and their source images."""
    from monai.bundle import ConfigParser

    from voxpipe.pipelines.stats import case_statistics, write_statistics

    config = ConfigParser.load_config_file(str(find_config(bundle_dir, "inference")))
    lesion_labels = overrides.get("lesion_labels", config.get("lesion_labels", []))
    names = _label_names(bundle_dir)
    per_case = {}
    for image in images:
        label = load_volume(_output_path(out_dir, image))
        source = load_volume(image)
        intensity = source.array if source.array.shape == label.array.shape else None
        per_case[case_id(image)] = case_statistics(label.array, label.affine, names=names, image=intensity, lesion_labels=lesion_labels)
    write_statistics(per_case, out_dir)
