"""Read DICOM Segmentation objects (DICOM-SEG) as label maps on a given voxel grid.

Why our own: MONAI reads no DICOM-SEG, and highdicom (which does) is not a voxpipe dependency for
one read path; pydicom gives the frames and the functional groups, and what is needed on top is
small: which segment each frame belongs to, where the frame lies (ImagePositionPatient of each
frame, shared orientation and pixel spacing), and placing its pixels on the grid of the image the
SEG annotates. That placement is exact or refused: a frame must lie on the target lattice (its
rows and columns along target axes, its position on whole voxels, within 1e-2 voxel), otherwise a
:class:`~voxpipe.errors.GeometryError` names both geometries. Each segment becomes the label value
of its SegmentNumber; FRACTIONAL segmentations are thresholded at one half; voxels claimed by two
segments are an error (a label map cannot hold both).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from voxpipe.errors import GeometryError, InputError
from voxpipe.transforms.io import LPS_TO_RAS

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LATTICE_TOL = 1e-2  # voxels


@dataclass(frozen=True)
class SegFrames:
    """The frames of a DICOM-SEG: masks (n, rows, cols), their segment numbers and LPS positions."""

    path: Path
    masks: np.ndarray
    segments: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray  # row direction, column direction (LPS)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_spacing: float | None
    labels: dict[int, str]


def is_dicom_seg(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM file holding a Segmentation object (header read only)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # not DICOM at all
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"


def _group(ds: pydicom.Dataset, frame: pydicom.Dataset, name: str, path: Path) -> pydicom.Dataset:
    """A functional group item from the frame, else from the shared groups."""
    if name in frame:
        return frame[name].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and name in shared[0]:
        return shared[0][name].value[0]
    raise InputError(f"{str(path)!r}: DICOM-SEG frame has no {name} (per-frame or shared); expected one")


def read_seg(path: str | os.PathLike[str]) -> SegFrames:
    """Frames, segments and frame geometry of a DICOM-SEG file.

    Raises:
        InputError: not a SEG, unreadable, or missing the functional groups that place frames.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for bad files
        raise InputError(f"{str(path)!r}: could not be read as DICOM-SEG ({error})") from error
    if str(ds.get("Modality", "")) != "SEG":
        raise InputError(f"{str(path)!r}: expected a DICOM-SEG (Modality SEG), found Modality {ds.get('Modality', '?')!r}")
    pixels = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        masks = pixels >= float(ds.get("MaximumFractionalValue", 255)) / 2.0
    else:
        masks = pixels != 0
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(frames) != len(masks):
        raise InputError(f"{str(path)!r}: {len(masks)} frames but {len(frames)} per-frame functional groups; expected one per frame")
    segments, positions, orientations, spacings = [], [], [], []
    for frame in frames:
        segments.append(int(_group(ds, frame, "SegmentIdentificationSequence", path).ReferencedSegmentNumber))
        positions.append([float(v) for v in _group(ds, frame, "PlanePositionSequence", path).ImagePositionPatient])
        orientations.append([float(v) for v in _group(ds, frame, "PlaneOrientationSequence", path).ImageOrientationPatient])
        measures = _group(ds, frame, "PixelMeasuresSequence", path)
        spacings.append([float(v) for v in measures.PixelSpacing])
    orientation, spacing = np.asarray(orientations), np.asarray(spacings)
    if np.abs(orientation - orientation[0]).max(initial=0) > 1e-4 or np.abs(spacing - spacing[0]).max(initial=0) > 1e-4:
        raise InputError(f"{str(path)!r}: frames with different orientation or pixel spacing; expected one plane geometry")
    measures = _group(ds, frames[0], "PixelMeasuresSequence", path) if frames else None
    between = measures.get("SpacingBetweenSlices") if measures is not None else None
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
    return SegFrames(
        path, masks, np.asarray(segments), np.asarray(positions), orientation[0] if len(orientation) else np.zeros(6),
        (float(spacing[0][0]), float(spacing[0][1])) if len(spacing) else (1.0, 1.0),
        float(between) if between else None, labels,
    )  # fmt: skip


def seg_grid(seg: SegFrames) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid holding every frame: the SEG's own lattice (columns, rows, slices) and its RAS affine.

    Used when no image grid is at hand (a missing prediction). The slice step is SpacingBetweenSlices
    when given, else the smallest step between frame positions (1 mm for a single position).
    """
    row, col = seg.orientation[:3], seg.orientation[3:]
    normal = np.cross(row, col)
    along = seg.positions @ normal
    distinct = np.unique(np.round(along, 4))
    steps = np.diff(distinct)
    step = seg.slice_spacing or (float(steps.min()) if steps.size else 1.0)
    first = seg.positions[int(np.argmin(along))]
    lps = np.eye(4)
    lps[:3, 0] = row * seg.pixel_spacing[1]
    lps[:3, 1] = col * seg.pixel_spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = first
    depth = int(round((distinct[-1] - distinct[0]) / step)) + 1 if distinct.size else 1
    return (int(seg.masks.shape[2]), int(seg.masks.shape[1]), depth), LPS_TO_RAS @ lps


def seg_to_label_map(seg: SegFrames, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The SEG as a label map (segment number per voxel) on the grid ``shape`` (x, y, z) / RAS ``affine``.

    Raises:
        GeometryError: a frame is off the grid's lattice or outside it (both geometries named).
        InputError: two segments claim the same voxel.
    """
    shape = tuple(int(n) for n in shape[:3])
    top = int(seg.segments.max(initial=0))
    label = np.zeros(shape, dtype=np.uint8 if top < 256 else np.int16)
    to_index = np.linalg.inv(LPS_TO_RAS @ np.asarray(affine, dtype=float))
    row, col = seg.orientation[:3], seg.orientation[3:]
    step_c = to_index[:3, :3] @ (row * seg.pixel_spacing[1])  # index change per frame column
    step_r = to_index[:3, :3] @ (col * seg.pixel_spacing[0])  # index change per frame row
    for name, step in (("row direction", step_c), ("column direction", step_r)):
        if np.abs(step - np.round(step)).max() > LATTICE_TOL or np.abs(np.round(step)).sum() != 1:
            raise GeometryError(
                f"{str(seg.path)!r}: SEG frames ({name} {np.round(step, 4).tolist()} voxels per pixel, pixel spacing "
                f"{seg.pixel_spacing} mm) do not lie on the image grid (shape {shape}, spacing "
                f"{np.round(np.linalg.norm(affine[:3, :3], axis=0), 4).tolist()} mm); expected the SEG's source image grid"
            )
    step_c, step_r = np.round(step_c).astype(np.int64), np.round(step_r).astype(np.int64)
    for mask, segment, position in zip(seg.masks, seg.segments, seg.positions, strict=True):
        start = to_index[:3, :3] @ position + to_index[:3, 3]
        if np.abs(start - np.round(start)).max() > LATTICE_TOL:
            raise GeometryError(
                f"{str(seg.path)!r}: a SEG frame at {np.round(position, 3).tolist()} mm (LPS) falls between voxels of the "
                f"image grid (index {np.round(start, 3).tolist()}); expected the SEG's source image grid"
            )
        rows, cols = np.nonzero(mask)
        if not rows.size:
            continue
        index = np.round(start).astype(np.int64) + np.outer(cols, step_c) + np.outer(rows, step_r)
        if index.min() < 0 or np.any(index.max(axis=0) >= shape):
            raise GeometryError(
                f"{str(seg.path)!r}: segment {segment} reaches voxel {index.max(axis=0).tolist()} / {index.min(axis=0).tolist()}, "
                f"outside the image grid of shape {shape}; expected the SEG's source image grid"
            )
        where = tuple(index.T)
        taken = label[where]
        clash = (taken != 0) & (taken != segment)
        if clash.any():
            raise InputError(
                f"{str(seg.path)!r}: segments {int(taken[clash][0])} and {segment} overlap in {int(clash.sum())} voxels of one "
                "frame; a label map cannot hold both (evaluate them as separate SEG files)"
            )
        label[where] = segment
    return label
