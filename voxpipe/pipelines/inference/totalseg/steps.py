"""TotalSegmentator 2.18.0's image steps around nnU-Net, with its rounding: resampling, crop, turn to RAS
and back, post-processing, the label-table header extension, statistics.

Each function gives the same numbers as the TotalSegmentator function it is named after (the tests
run TotalSegmentator itself on generated scans and compare voxel for voxel); they are written here
because TotalSegmentator cannot be installed beside voxpipe (see :mod:`.tasks`). They work on nibabel
images, as TotalSegmentator does, because its results depend on nibabel's header arithmetic (float32
zooms, the affine after a file round trip).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

Box = list[list[int]]


# -- geometry ----------------------------------------------------------------------------------------
def change_spacing(
    image: nib.Nifti1Image,
    spacing: Sequence[float] | None = None,
    *,
    shape: Sequence[int] | None = None,
    order: int = 0,
    dtype: Any = None,
    affine: np.ndarray | None = None,
) -> nib.Nifti1Image:
    """TotalSegmentator's ``change_spacing``: SciPy's ``zoom`` (edge mode ``nearest``) to ``spacing``
    (x, y, z mm) or to exactly ``shape``, cast to ``dtype`` (truncating, as NumPy casts), the affine's
    columns scaled (or ``affine`` forced). The image comes back untouched where its zooms already are
    the spacing asked for."""
    data = image.get_fdata()
    old = np.array(data.shape)
    zooms = np.array(image.header.get_zooms())[:3]
    if shape is not None:
        zoom = np.array(shape) / old
        target = zooms / zoom
    else:
        assert spacing is not None
        target = np.array(spacing)
        zoom = zooms / target
    if np.array_equal(zooms, target):
        return image
    scaled = np.copy(image.affine)
    for axis in range(3):
        scaled[:3, axis] = scaled[:3, axis] / zoom[axis]
    resampled = ndimage.zoom(data, zoom, mode="nearest", order=order)
    if dtype is not None:
        resampled = resampled.astype(dtype)
    return nib.Nifti1Image(resampled, scaled if affine is None else affine)


def crop_to_mask(
    image: nib.Nifti1Image, mask: nib.Nifti1Image, addon_mm: Sequence[float], dtype: Any
) -> tuple[nib.Nifti1Image, Box]:
    """TotalSegmentator's ``crop_to_mask``: the mask's bounding box grown by ``addon_mm`` (truncated to
    whole voxels of ``image``), clipped to the image; the crop cast to ``dtype``; the affine moved."""
    addon = (np.array(addon_mm) / np.array(image.header.get_zooms())).astype(int)
    found = np.nonzero(mask.get_fdata() > 0)
    shape = mask.shape
    if len(found[0]) == 0:
        box = [[0, shape[0]], [0, shape[1]], [0, shape[2]]]
    else:
        box = [[int(f.min()) - int(a), int(f.max()) + 1 + int(a)] for f, a in zip(found, addon, strict=True)]
    box = [[max(0, lo), min(size, hi)] for (lo, hi), size in zip(box, shape, strict=True)]
    data = image.get_fdata()[tuple(slice(lo, hi) for lo, hi in box)]
    moved = np.copy(image.affine)
    moved[:3, 3] = np.dot(image.affine, np.array([box[0][0], box[1][0], box[2][0], 1]))[:3]
    return nib.Nifti1Image(data.astype(dtype), moved), box


def undo_crop(image: nib.Nifti1Image, reference: nib.Nifti1Image, box: Box) -> nib.Nifti1Image:
    """The cropped ``image`` pasted back into ``reference``'s grid (zeros elsewhere)."""
    full = np.zeros(reference.shape)
    full[tuple(slice(lo, hi) for lo, hi in box)] = image.get_fdata()
    return nib.Nifti1Image(full, reference.affine)


def undo_canonical(image: nib.Nifti1Image, original: nib.Nifti1Image) -> nib.Nifti1Image:
    """The inverse of ``nib.as_closest_canonical`` for ``original``'s orientation."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return image.as_reoriented(ornt_transform(axcodes2ornt("RAS"), io_orientation(original.affine)))


# -- post-processing ---------------------------------------------------------------------------------
def _components_kept(mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """The voxels of ``mask``'s connected components (faces) with low < size <= high."""
    components, count = ndimage.label(mask)
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    keep = (sizes > low) & (sizes <= high)
    keep[0] = False
    return keep[components]


def keep_largest(data: np.ndarray, labels: Mapping[int, str], names: Sequence[str]) -> np.ndarray:
    """Each named structure reduced to its largest connected component (the first of equal ones)."""
    by_name = {v: k for k, v in labels.items()}
    for name in names:
        value = by_name[name]
        mask = data == value
        components, count = ndimage.label(mask)
        data[mask] = 0
        if count:
            sizes = np.bincount(components.ravel())[1:]
            data[components == int(np.argmax(sizes)) + 1] = value
    return data


def remove_small(
    data: np.ndarray, labels: Mapping[int, str], names: Sequence[str], low: float, high: float = 1e10
) -> np.ndarray:
    """Each named structure without its components of ``low`` voxels or fewer (or above ``high``)."""
    by_name = {v: k for k, v in labels.items()}
    for name in names:
        value = by_name[name]
        mask = data == value
        kept = _components_kept(mask, low, high)
        data[mask] = 0
        data[kept] = value
    return data


def extract_skin(ct: nib.Nifti1Image, body: nib.Nifti1Image) -> nib.Nifti1Image:
    """TotalSegmentator's skin: the body's outer shell (1 voxel out, 3 in) at -200..250 HU, without
    components of 5 voxels or fewer."""
    hu = ct.get_fdata()
    grown = ndimage.binary_dilation(body.get_fdata(), iterations=1).astype(np.uint8)
    shell = grown - ndimage.binary_erosion(grown, iterations=3).astype(np.uint8)
    shell[~((hu > -200) & (hu < 250))] = 0
    skin = _components_kept(shell > 0.5, 5, 1e10)
    return nib.Nifti1Image(skin.astype(np.uint8), ct.affine)


def remove_outside(data: np.ndarray, mask: np.ndarray, dilation: int) -> np.ndarray:
    """Labels outside ``mask`` grown by ``dilation`` voxels set to 0 (TotalSegmentator's ``remove_outside_of_mask``)."""
    grown = ndimage.binary_dilation(mask, iterations=dilation)  # (0: grown until it stops, as SciPy does)
    data[grown == 0] = 0
    return data


def _labels_touch(data: np.ndarray) -> bool:
    for axis in range(data.ndim):
        a = np.take(data, range(1, data.shape[axis]), axis=axis)
        b = np.take(data, range(0, data.shape[axis] - 1), axis=axis)
        if np.any((a > 0) & (b > 0) & (a != b)):
            return True
    return False


def _ellipsoid(spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    if radius_mm <= 0:
        return np.ones((1, 1, 1), dtype=bool)
    radii = [radius_mm / s for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g * g) / (r * r) for g, r in zip(grids, radii, strict=True)) <= 1


def dilate_labels(
    data: np.ndarray, labels: Mapping[int, str], spacing: Sequence[float], dilation_mm: float
) -> np.ndarray:
    """Each label grown by an ellipsoid of ``dilation_mm`` into background only (label by label, in order)."""
    if dilation_mm <= 0:
        return data
    element = _ellipsoid(spacing, dilation_mm)
    reach = np.ceil([dilation_mm / s for s in spacing]).astype(int)
    out = data.copy()
    for value in sorted(labels):
        where = np.nonzero(data == value)
        if len(where[0]) == 0:
            continue
        box = tuple(
            slice(max(int(w.min()) - r, 0), min(int(w.max()) + r + 1, data.shape[axis]))
            for axis, (w, r) in enumerate(zip(where, reach, strict=True))
        )
        grown = ndimage.binary_dilation(data[box] == value, structure=element)
        window = out[box]
        window[(window == 0) & grown] = value
    return out


def vertebrae_pp(
    data: np.ndarray,
    labels: Mapping[int, str],
    *,
    voxel_volume: float,
    spacing: Sequence[float],
    min_size_mm3: float = 100,
    dilation_mm: float = 3,
) -> np.ndarray:
    """TotalSegmentator's ``vertebrae_pp`` post-processing: where two vertebra labels touch, the bodies
    (components of at least ``min_size_mm3``) are renumbered from the bottom (from C1 down in head-only
    scans); then every vertebra is grown by ``dilation_mm`` into background. Where only one body is
    kept, TotalSegmentator fails (IndexError); voxpipe labels it as it would label several."""
    data = data.astype(np.uint8, copy=False)
    if not _labels_touch(data):
        return dilate_labels(data, labels, spacing, dilation_mm)
    components, _ = ndimage.label(data > 0)
    sizes = np.bincount(components.ravel())
    kept = np.flatnonzero(sizes * voxel_volume >= min_size_mm3)
    kept = kept[kept != 0]
    if len(kept) == 0:
        return np.zeros_like(data, dtype=np.uint8)
    lookup = np.zeros(sizes.shape, dtype=bool)
    lookup[kept] = True
    keep = lookup[components]
    cleaned = data.copy()
    cleaned[~keep] = 0
    present = sorted(int(v) for v in np.unique(cleaned) if int(v) in labels)
    if not present:
        return np.zeros_like(data, dtype=np.uint8)
    by_name = {v: k for k, v in labels.items()}
    c1, l5 = by_name["vertebrae_C1"], by_name["vertebrae_L5"]
    from_top = l5 not in present and c1 in present
    # (one centre per kept component: TotalSegmentator 2.18.0 wraps a single one in a list again and
    # fails on it with an IndexError; here one vertebral body is labelled like several)
    centres = ndimage.center_of_mass(keep, components, kept)
    order = sorted(
        ((int(c), centre[2]) for c, centre in zip(kept, centres, strict=True)),
        key=lambda item: item[1],
        reverse=from_top,
    )
    values = range(c1, max(labels) + 1) if from_top else range(max(present), min(labels) - 1, -1)
    out = np.zeros_like(data, dtype=np.uint8)
    for (component, _), value in zip(order, values, strict=False):  # (as many as both have)
        out[components == component] = value
    return dilate_labels(out, labels, spacing, dilation_mm)


def refine_vertebrae(
    data: np.ndarray, body: np.ndarray, labels: Mapping[int, str], spacing: Sequence[float]
) -> np.ndarray:
    """``vertebrae_pp_refined``: the vertebrae grown 2 mm, then cut to the vertebral-body model's label 1."""
    if data.shape != body.shape:
        raise ValueError(f"vertebrae_pp and vertebrae_body shapes differ: {data.shape} vs {body.shape}")
    refined = dilate_labels(data, labels, spacing, 2)
    refined[body != 1] = 0
    return refined.astype(np.uint8, copy=False)


# -- TotalSegmentator's cropped-logits export (--higher-order-resampling) ---------------------------
#: The margin (voxels, model grid) around each structure's low-resolution box.
_CROP_MARGIN = 3


def _box(mask: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray] | None:
    found = np.nonzero(mask)
    if len(found[0]) == 0:
        return None
    shape = np.array(mask.shape)
    start = np.maximum(np.array([f.min() for f in found]) - margin, 0)
    end = np.minimum(np.array([f.max() + 1 for f in found]) + margin, shape)
    return start, end


def _channel_in_box(
    channel: np.ndarray, shape: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[Any, Any]:
    """One channel's logits resampled (first order, edge ``nearest``) onto the part of the output grid
    its box covers, at pixel-centre coordinates computed in float32, as TotalSegmentator computes them."""
    old = np.array(channel.shape)
    scale = shape / old
    low = np.maximum(np.floor(start * scale).astype(int), 0)
    high = np.minimum(np.ceil(end * scale).astype(int), shape)
    if np.any(high <= low):
        return None, None
    crop = channel[tuple(slice(a, b) for a, b in zip(start, end, strict=True))].astype(float, copy=False)
    axes = [
        (np.arange(a, b, dtype=np.float32) + 0.5) * o / n - 0.5 - s
        for a, b, o, n, s in zip(low, high, old, shape, start, strict=True)
    ]
    grid = np.array(np.meshgrid(*axes, indexing="ij"), dtype=np.float32)
    values = ndimage.map_coordinates(crop, grid, order=1, mode="nearest")
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True)), values


def cropped_logits_labels(
    logits: np.ndarray,
    shape: Sequence[int],
    background: np.ndarray,
    *,
    regions: Sequence[int] | None,
    dtype: Any,
) -> np.ndarray:
    """TotalSegmentator 2.18's export for ``--higher-order-resampling`` (its patch of nnU-Net's): not
    nnU-Net's argmax of every resampled channel, but the background channel resampled whole
    (``background``: nnU-Net's resampling of channel 0) and each class found on the model's grid
    resampled only in its box (3 voxels of margin), winning where it beats the best score so far (the
    score held in the logits' float16). Region models: each region's logit > 0 in its box, in order.
    (Where the shapes already agree TotalSegmentator exports as nnU-Net does: the caller's job.)"""
    out_shape = np.array(shape).astype(int)
    labels = np.zeros(out_shape, dtype=dtype)
    if regions is not None:
        for c, value in enumerate(regions):
            box = _box(logits[c] > 0, _CROP_MARGIN)
            if box is None:
                continue
            where, values = _channel_in_box(logits[c], out_shape, *box)
            if where is not None:
                labels[where][values > 0] = value
        return labels
    best = np.asarray(background)
    coarse = np.argmax(logits, axis=0)
    for value in np.unique(coarse):
        value = int(value)
        if value == 0 or value >= logits.shape[0]:
            continue
        box = _box(coarse == value, _CROP_MARGIN)
        if box is None:
            continue
        where, values = _channel_in_box(logits[value], out_shape, *box)
        if where is None:
            continue
        better = values > best[where]
        labels[where][better] = value
        best[where][better] = values[better]
    return labels


# -- output ------------------------------------------------------------------------------------------
_COLOURS = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (255, 0, 128), (128, 255, 128), (0, 128, 255), (128, 128, 128), (185, 170, 155),
)  # fmt: skip


def label_table(image: nib.Nifti1Image, labels: Mapping[int, str]) -> nib.Nifti1Image:
    """TotalSegmentator's label-table header extension (a Caret ``LabelTable``, NIfTI extension code 0),
    which its ``load_multilabel_nifti`` and 3D Slicer read the structure names from."""
    rows = ""
    for value, name in labels.items():
        red, green, blue = _COLOURS[value % len(_COLOURS)]
        rows += (
            f'<Label Key="{value}" Red="{red / 255}" Green="{green / 255}" Blue="{blue / 255}" '
            f'Alpha="1"><![CDATA[{name}]]></Label>\n'
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]>'
        '</Date>   <VolumeInformation Index="0">   <LabelTable>\n'
        + rows
        + "\n  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]>"
        "</VolumeType>   </VolumeInformation></CaretExtension>\n              "
    )
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode("utf-8")))
    return image


def read_label_table(path: str | Path) -> dict[int, str]:
    """The names in a label map's TotalSegmentator label-table extension."""
    import re

    image = nib.load(str(path))
    for extension in image.header.extensions:
        text = extension.get_content().decode("utf-8", "replace")
        if "<LabelTable>" in text:
            return {
                int(key): name
                for key, name in re.findall(r'<Label Key="(-?\d+)"[^>]*><!\[CDATA\[(.*?)\]\]></Label>', text)
            }
    return {}


def touches_border(mask: np.ndarray) -> bool:
    """TotalSegmentator's border rule: a structure within 3 voxels of any face is cut off by the scan."""
    for axis in range(3):
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis], high[axis] = slice(None, 3), slice(-3, None)
        if np.any(mask[tuple(low)]) or np.any(mask[tuple(high)]):
            return True
    return False


def statistics(
    labels_map: np.ndarray,
    ct: nib.Nifti1Image,
    labels: Mapping[int, str],
    *,
    exclude_border: bool = True,
    aggregation: str = "mean",
) -> dict[str, dict[str, float]]:
    """TotalSegmentator's ``statistics.json``: per structure its volume (mm³) and mean (or median) HU of
    the CT cast to int16, 0 for both where the structure touches the border (``exclude_border``)."""
    hu = ct.get_fdata().astype(np.int16)
    zooms = ct.header.get_zooms()
    voxel = zooms[0] * zooms[1] * zooms[2]
    out: dict[str, dict[str, float]] = {}
    for value, name in labels.items():
        mask = labels_map == value
        if exclude_border and touches_border(mask):
            out[name] = {"volume": 0.0, "intensity": 0.0}
            continue
        count = mask.sum()  # (NumPy's int64 times the float32 voxel: float64, as TotalSegmentator)
        if count == 0:
            intensity = 0.0
        elif aggregation == "median":
            intensity = float(np.median(hu[mask]).round(5))
        else:
            intensity = float(np.average(hu, weights=mask.astype(np.uint8)).round(5))
        out[name] = {"volume": float(count * voxel), "intensity": intensity}
    return out


def write_statistics(stats: Mapping[str, Any], path: Path) -> Path:
    from voxpipe.transforms.files import write_text_atomic

    write_text_atomic(path, json.dumps(stats, indent=4))
    return path


__all__ = [
    "change_spacing",
    "cropped_logits_labels",
    "crop_to_mask",
    "dilate_labels",
    "extract_skin",
    "keep_largest",
    "label_table",
    "read_label_table",
    "refine_vertebrae",
    "remove_outside",
    "remove_small",
    "statistics",
    "touches_border",
    "undo_canonical",
    "undo_crop",
    "vertebrae_pp",
    "write_statistics",
]
