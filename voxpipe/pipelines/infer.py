"""Predict label maps for image files with a bundle's inference config.

The bundle does the work (MONAI preprocessing, sliding-window inferer, ``Invertd`` back to the
source grid, :class:`voxpipe.transforms.io.SaveLabelLiked`); this module turns a user's inputs
(files and folders of files) into the bundle's ``datalist`` and checks the weights exist first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError
from voxpipe.pipelines.bundle import run_bundle
from voxpipe.transforms.io import VOLUME_SUFFIXES, case_id, find_volumes, volume_suffix

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


def infer_with_bundle(
    bundle_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Segment every input image; one ``<case id>.nii.gz`` per image on the image's exact grid.

    Args:
        bundle_dir: bundle folder with ``configs/inference.yaml``.
        inputs: image files and/or folders of image files.
        output_dir: where the label maps are written.
        weights: network weights; default ``<bundle_dir>/models/model.pt``.
        overrides: further config overrides (e.g. ``{"patch_size": [64, 64, 32]}``).

    Returns:
        Paths of the written label maps, in input order.
    """
    images = collect_inputs(inputs)
    checkpoint = Path(weights) if weights is not None else Path(bundle_dir) / "models" / "model.pt"
    if not checkpoint.is_file():
        raise InputError(
            f"{str(checkpoint)!r}: expected network weights (the inference config's 'checkpoint'), found no file",
            hint="train the bundle first (voxpipe train) or pass --weights FILE",
        )
    values = {
        "datalist": [{"image": str(p.resolve())} for p in images],
        "output_dir": str(Path(output_dir).resolve()),
        "checkpoint": str(checkpoint.resolve()),
        **(overrides or {}),
    }
    run_bundle(bundle_dir, config="inference", overrides=values)
    outputs = [Path(output_dir) / f"{case_id(p)}.nii.gz" for p in images]
    missing = [str(p) for p in outputs if not p.is_file()]
    if missing:
        raise InputError(f"{str(bundle_dir)!r}: inference finished but wrote no output for {missing}")
    return outputs
