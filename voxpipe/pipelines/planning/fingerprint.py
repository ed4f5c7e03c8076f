"""The planning fingerprint: what the planner needs to know about a dataset, measured as nnU-Net does.

Why not :func:`voxpipe.pipelines.data.fingerprint.compute_fingerprint`: that one works on the RAS
grid voxpipe trains on. nnU-Net's planner sees each file as SimpleITK reads it — storage axes in
``(z, y, x)`` order, no reorientation — after cropping to the bounding box of the non-zero voxels of
all channels; its rules break ties by axis position, so reproducing them exactly needs exactly that
view. This module measures it (with SimpleITK, as nnU-Net's default reader does), and records how
the storage axes map onto RAS, so the plan can be written in voxpipe's ``(x, y, z)``.

Per case: spacing (mm) and cropped shape in ``(z, y, x)``, the share of voxels kept by the crop, and
a seeded sample of foreground (label > 0) intensities per channel.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voxpipe.errors import InputError
from voxpipe.pipelines.data.datalists import dataset_label_groups, detect_layout, load_datalist

logger = logging.getLogger(__name__)

SAMPLES_PER_CASE = 10_000
# nnU-Net's channel names that pick a normalisation; any other name is z-scored.
NORMALISATION_BY_NAME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}


READERS = (
    "SimpleITKIO",
    "SimpleITKIOWithReorient",
    "NibabelIO",
    "NibabelIOWithReorient",
)  # nnU-Net's 3D readers


def _read_nibabel(path: str, *, reorient: bool) -> tuple[np.ndarray, list[float], np.ndarray, int]:
    """As nnU-Net's ``NibabelIO`` (``WithReorient``: to RAS first): the array transposed to ``(z, y, x)``,
    the header's zooms reversed."""
    import nibabel as nib
    from nibabel.orientations import io_orientation

    image = nib.load(path)
    if reorient:
        image = image.as_reoriented(io_orientation(image.affine))
    array = np.asanyarray(image.dataobj).astype(np.float32)
    dims = array.ndim
    if dims not in (3, 4):
        raise InputError(f"{path!r}: expected a 3D image (or 4D with channels), found {dims} dimensions")
    array = array.transpose((2, 1, 0, 3)[:dims] if dims == 4 else (2, 1, 0)[:dims])
    if dims == 4:
        array = np.moveaxis(array, 3, 0)
    zooms = [float(v) for v in image.header.get_zooms()[:3]][::-1]
    return array, zooms, np.asarray(image.affine)[:3, :3], dims


def _read_channels(
    paths: list[str], reader: str = "SimpleITKIO"
) -> tuple[np.ndarray, list[float], np.ndarray]:
    """Channels ``(C, z, y, x)`` as nnU-Net's reader gives them (SimpleITK unless the dataset.json names
    another in ``overwrite_image_reader_writer``), the spacing ``(z, y, x)`` and the 3 × 3 direction (columns: the storage axes i, j, k in world
    space). A 4D file (MSD) holds its channels on its 4th axis."""
    import SimpleITK as sitk

    arrays, spacing, direction = [], None, None
    for path in paths:
        if reader.startswith("Nibabel"):
            array, channel_spacing, matrix, dims = _read_nibabel(
                str(path), reorient=reader == "NibabelIOWithReorient"
            )
            arrays.extend(array if dims == 4 else [array])
            spacing, direction = (channel_spacing, matrix) if spacing is None else (spacing, direction)
            if not np.allclose(channel_spacing, spacing) or arrays[-1].shape != arrays[0].shape:
                raise InputError(
                    f"{path!r}: expected the grid of {paths[0]!r} (spacing {spacing[::-1]}, shape "
                    f"{arrays[0].shape[::-1]}), found spacing {channel_spacing[::-1]}, shape {arrays[-1].shape[::-1]}"
                )
            continue
        try:
            image = sitk.ReadImage(str(path))
            if (
                reader == "SimpleITKIOWithReorient"
            ):  # as nnU-Net's: DICOMOrient to "RAS" before reading the array
                image = sitk.DICOMOrient(image, "RAS")
        except RuntimeError as error:
            raise InputError(
                f"{path!r}: could not read the image ({str(error).strip().splitlines()[-1]})"
            ) from error
        array = sitk.GetArrayFromImage(image)
        dims = image.GetDimension()
        if dims == 4:
            channel_spacing = list(image.GetSpacing())[:3][::-1]
            matrix = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
            arrays.extend(array[c] for c in range(array.shape[0]))
        elif dims == 3:
            channel_spacing = list(image.GetSpacing())[::-1]
            matrix = np.asarray(image.GetDirection()).reshape(3, 3)
            arrays.append(array)
        else:
            raise InputError(f"{path!r}: expected a 3D image (or 4D with channels), found {dims} dimensions")
        if spacing is None:
            spacing, direction = channel_spacing, matrix
        elif not np.allclose(channel_spacing, spacing) or arrays[-1].shape != arrays[0].shape:
            raise InputError(
                f"{path!r}: expected the grid of {paths[0]!r} (spacing {spacing[::-1]}, shape "
                f"{arrays[0].shape[::-1]}), found spacing {channel_spacing[::-1]}, shape {arrays[-1].shape[::-1]}"
            )
    assert spacing is not None and direction is not None
    return np.stack(arrays), [abs(float(v)) for v in spacing], direction


def _nonzero_box(channels: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the voxels that are non-zero in any channel (the whole image when none is)."""
    mask = np.any(channels != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def ras_axes(direction: np.ndarray) -> list[int]:
    """For each storage axis (i, j, k), the world axis (0 = x, 1 = y, 2 = z) it runs along most."""
    return [int(np.argmax(np.abs(direction[:, k]))) for k in range(3)]


def dataset_info(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The dataset's ``dataset.json`` (MSD or nnU-Net v2), or ``{}`` for layouts without one."""
    path = Path(source)
    manifest = path if path.is_file() else path / "dataset.json"
    if not manifest.is_file():
        return {}
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{str(manifest)!r}: not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise InputError(f"{str(manifest)!r}: expected a JSON object, found {type(info).__name__}")
    return info


def planning_fingerprint(
    source: str | os.PathLike[str], *, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """The planning fingerprint of the labelled cases of a dataset (MSD, nnU-Net v2 raw, or any layout
    :func:`load_datalist` reads).

    Raises:
        InputError: no labelled case, an unreadable file, channels on different grids (named), or
            region-based labels.
    """
    info = dataset_info(source)
    layout = detect_layout(source)
    entries = [e for e in load_datalist(source, layout=layout) if e.get("label") and e.get("image")]
    if not entries:
        raise InputError(f"{str(source)!r}: expected labelled cases to plan from, found none")
    labels = dataset_label_groups(info, source=Path(source) / "dataset.json") if info.get("labels") else {}
    regions = [name for name, values in labels.items() if len(values) > 1]
    if regions:
        raise InputError(
            f"{str(source)!r}: labels {regions} are region-based (one name, several values); "
            "expected one value per label",
            hint="voxpipe plan trains one softmax class per label value; nnU-Net's region training is not supported",
        )
    channels_info = info.get("channel_names", info.get("modality")) or {"0": "CT"}
    channel_names = [str(channels_info[k]) for k in sorted(channels_info, key=lambda k: int(k))]
    reader = info.get("overwrite_image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise InputError(
            f"{str(source)!r}: dataset.json 'overwrite_image_reader_writer': expected one of {READERS}, found {reader!r}"
        )
    rng = np.random.default_rng(seed)
    cases: list[dict[str, Any]] = []
    samples: list[list[np.ndarray]] = [[] for _ in channel_names]
    found_labels: set[int] = set()
    for entry in tqdm(entries, desc="fingerprint", unit="case", disable=not progress):
        paths = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        channels, spacing, direction = _read_channels(paths, reader)
        if len(channels) != len(channel_names):
            raise InputError(
                f"{paths[0]!r}: expected {len(channel_names)} channel(s) {channel_names} (dataset.json), "
                f"found {len(channels)}"
            )
        label_array, _, _ = _read_channels([entry["label"]], reader)
        if label_array.shape[1:] != channels.shape[1:]:
            raise InputError(
                f"{entry['label']!r}: expected the image's shape {list(channels.shape[1:][::-1])}, "
                f"found {list(label_array.shape[1:][::-1])}"
            )
        box = _nonzero_box(channels)
        cropped = channels[(slice(None), *box)]
        shape_after = list(cropped.shape[1:])
        foreground = label_array[0][box] > 0
        found_labels.update(int(v) for v in np.unique(label_array[0]))
        for c in range(len(channel_names)):
            values = cropped[c][foreground]
            if values.size:
                samples[c].append(
                    rng.choice(values, size=min(SAMPLES_PER_CASE, values.size), replace=False).astype(
                        np.float64
                    )
                )
        cases.append(
            {
                "case": entry["case"],
                "spacing": spacing,
                "shape_before_crop": list(channels.shape[1:]),
                "shape_after_crop": shape_after,
                "relative_size_after_cropping": float(np.prod(shape_after) / np.prod(channels.shape[1:])),
                "ras_axes": ras_axes(direction),
            }
        )
    intensity = []
    for c, name in enumerate(channel_names):
        values = np.concatenate(samples[c]) if samples[c] else np.zeros(1)
        intensity.append(
            {
                "channel": name,
                "mean": float(values.mean()),
                "std": float(values.std()),
                "percentile_00_5": float(np.percentile(values, 0.5)),
                "median": float(np.median(values)),
                "percentile_99_5": float(np.percentile(values, 99.5)),
            }
        )
    if labels:
        label_values = {values[0]: name for name, values in labels.items()}
    else:
        label_values = {v: ("background" if v == 0 else f"label_{v}") for v in sorted(found_labels | {0})}
    return {
        "dataset": str(Path(source).resolve()),
        "layout": layout,
        "reader": reader,
        "n_cases": len(cases),
        # nnU-Net sizes its batch cap with dataset.json's numTraining, not with the files it found
        "num_training": int(info.get("numTraining", len(cases)))
        if str(info.get("numTraining", "")).isdigit()
        else len(cases),
        "channel_names": channel_names,
        "labels": {str(k): v for k, v in sorted(label_values.items())},
        "axis_order": "storage (z, y, x), as SimpleITK reads; ras_axes maps storage (i, j, k) to world (x, y, z)",
        "cases": cases,
        "median_relative_size_after_cropping": float(
            np.median([c["relative_size_after_cropping"] for c in cases])
        ),
        "foreground_intensity": intensity,
    }
