"""Per-case statistics of a predicted label map: what a radiology researcher reads off a segmentation.

Per structure: volume (ml) and mean / standard deviation of the image intensity inside it (HU for
CT). Per lesion class (e.g. liver tumour): the number of lesions (26-connected components), the
largest lesion's volume (ml) and its largest 3D diameter (mm; the longest distance between two voxel
centres of the lesion, found on its convex hull). Nothing in MONAI computes these; scipy does the
component labelling and the hull.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.postprocess import SlabComponents, foreground_box


def _segment_ends(mask: np.ndarray) -> np.ndarray:
    """The first and last ``True`` voxel of every line along axis 0 that holds one, as (N, 3) indices.

    The convex hull of a voxel set is the hull of these ends (every other voxel lies on a segment
    between two of them), so a lesion of 50 M voxels gives at most 2 × Y × Z candidate points
    instead of 50 M: bounded memory and time whatever its size.
    """
    mask = np.asarray(mask, dtype=bool)
    present = mask.any(axis=0)
    first = np.argmax(mask, axis=0)
    last = mask.shape[0] - 1 - np.argmax(mask[::-1], axis=0)
    ys, zs = np.nonzero(present)
    ends = np.concatenate([np.stack([first[ys, zs], ys, zs], 1), np.stack([last[ys, zs], ys, zs], 1)])
    return np.unique(ends, axis=0)


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    """Indices of ``points`` that include every vertex of their convex hull, in the dimension the
    points span: a flat lesion (one slice thick) is hulled in its plane, a line by its two ends, so
    the pairs compared stay few whatever the lesion's size."""
    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    rank = int((singular > 1e-9 * max(float(singular[0]), 1.0)).sum())
    if rank <= 1:
        along = centred @ axes[0]
        return np.unique([int(np.argmin(along)), int(np.argmax(along))])
    try:
        return ConvexHull(centred @ axes[:rank].T).vertices
    except (QhullError, ValueError):  # degenerate after all: joggled, which keeps every extreme point's index
        return ConvexHull(centred @ axes[:rank].T, qhull_options="QJ").vertices


def largest_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Longest distance (mm) between two voxel centres of ``mask`` (0 for an empty mask or one voxel).

    Exact: the farthest pair of a point set lies on its convex hull, whose vertices are among the
    ends of the mask's lines (:func:`_segment_ends`); an affine map keeps both properties.
    """
    index = _segment_ends(mask)
    if len(index) < 2:
        return 0.0
    points = index @ np.asarray(affine, dtype=float)[:3, :3].T
    points = points[_hull_vertices(points)]
    from scipy.spatial.distance import cdist

    longest = 0.0
    for start in range(0, len(points), 1024):  # every pair of hull vertices, 1024 rows at a time
        longest = max(longest, float(cdist(points[start : start + 1024], points).max()))
    return longest


def _moments(
    label: np.ndarray, image: np.ndarray | None, classes: int, *, slab: int = 16
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Voxel count, and mean and standard deviation of ``image``, of every label value ``0..classes-1``.

    Two passes over slabs of the last axis, each voxel's value added to its label's sum by
    ``np.bincount`` in float64 (the second pass: squared deviations from the mean): every structure
    at once, where one mask per structure read the whole map once per class (100 classes: a minute
    on a 600-slice CT), and no float64 copy of a structure's voxels. Means and deviations are NaN
    for absent values.
    """
    counts = np.zeros(classes, dtype=np.int64)
    sums = np.zeros(classes) if image is not None else None
    depth = label.shape[-1]
    for start in range(0, depth, slab):
        part = label[..., start : start + slab].ravel()
        counts += np.bincount(part, minlength=classes)[:classes]
        if sums is not None:
            values = np.asarray(image[..., start : start + slab], dtype=np.float64).ravel()
            sums += np.bincount(part, weights=values, minlength=classes)[:classes]
    if sums is None:
        return counts, None, None
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    squares = np.zeros(classes)
    lookup = np.nan_to_num(means)
    for start in range(0, depth, slab):
        part = label[..., start : start + slab].ravel()
        deviations = np.asarray(image[..., start : start + slab], dtype=np.float64).ravel() - lookup[part]
        squares += np.bincount(part, weights=deviations * deviations, minlength=classes)[:classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, means, np.sqrt(squares / counts)


def case_statistics(
    label: np.ndarray,
    affine: np.ndarray,
    *,
    names: Mapping[int, str],
    image: np.ndarray | Callable[[], np.ndarray | None] | None = None,
    lesion_labels: Sequence[int] = (),
) -> dict[str, Any]:
    """Statistics of one label map ``(X, Y, Z)`` on ``affine`` (mm); ``image`` on the same grid if given
    (or a function that loads it: it is then dropped before the lesions are labelled, which keeps a
    600-slice CT's intensities out of that stage's peak memory).

    Returns:
        ``{name: {"volume_ml", "mean", "std", [lesion_count, largest_lesion_ml, largest_lesion_diameter_mm]}}``
        for every named non-zero label (absent structures have volume 0 and no mean).
    """
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    label = np.asarray(label)
    if label.dtype.kind not in "iu" or (label.size and int(label.min()) < 0):
        label = label.astype(np.int64)  # values bincount cannot index are nobody's structure
        label[label < 0] = 0
    classes = max([int(v) for v in names] + [int(label.max()) if label.size else 0]) + 1
    box = foreground_box(label, 0)  # every structure lies in it; the background's numbers are not used
    if box is None:
        box = tuple(slice(0, 0) for _ in label.shape)
    intensities = image() if callable(image) else image
    counts, means, stds = _moments(label[box], None if intensities is None else intensities[box], classes)
    del intensities
    stats: dict[str, Any] = {}
    for value, name in sorted(names.items()):
        if int(value) <= 0:
            continue
        count = int(counts[int(value)])
        entry: dict[str, Any] = {"volume_ml": count * voxel_ml}
        if means is not None and stds is not None:
            entry["mean"], entry["std"] = (
                (float(means[int(value)]), float(stds[int(value)])) if count else (None, None)
            )
        if int(value) in {int(v) for v in lesion_labels}:
            mask = label == int(value)
            box = foreground_box(mask)  # label components in the lesions' bounding box, not the whole scan
            lesions = np.ascontiguousarray(mask[box] if box else mask).view(np.uint8)
            components = SlabComponents(lesions, [1])  # bounded memory for a fragmented prediction
            entry["lesion_count"] = int(components.count)
            if components.count:
                biggest = components.largest()
                entry["largest_lesion_ml"] = float(components.sizes[biggest - 1] * voxel_ml)
                largest = np.zeros(lesions.shape, dtype=bool)
                for start, stop, numbers in components.slabs():
                    largest[..., start:stop] = numbers == biggest
                entry["largest_lesion_diameter_mm"] = largest_diameter_mm(largest, affine)
            else:
                entry["largest_lesion_ml"] = entry["largest_lesion_diameter_mm"] = 0.0
        stats[name] = entry
    return stats


def write_statistics(
    per_case: Mapping[str, Mapping[str, Any]], output_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """``statistics.json`` (nested) and ``statistics.csv`` (one row per case, ``<structure>_<field>`` columns)."""
    folder = Path(output_dir)
    json_path = write_text_atomic(folder / "statistics.json", json.dumps(per_case, indent=2) + "\n")
    columns: list[str] = []
    rows = []
    for case, structures in per_case.items():
        row: dict[str, Any] = {"case": case}
        for name, fields in structures.items():
            for field, value in fields.items():
                column = f"{name}_{field}"
                if column not in columns:
                    columns.append(column)
                row[column] = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else value)
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", *columns], restval="")
    writer.writeheader()
    writer.writerows(rows)
    return json_path, write_text_atomic(folder / "statistics.csv", buffer.getvalue())


def write_shard_statistics(
    per_case: Mapping[str, Mapping[str, Any]], output_dir: str | os.PathLike[str], shard: tuple[int, int]
) -> tuple[Path, Path]:
    """One shard's statistics (``statistics-shard-K-of-N.json``), then ``statistics.csv``/``.json`` of all shards so far.

    The merge runs under an exclusive lock on ``.statistics.lock`` in ``output_dir`` (``fcntl.flock``;
    a local disk or an NFS that supports it). Every shard writes its part before it takes the lock,
    so the last shard to merge sees every part: the final files cover all finished shards, whichever
    finishes last. Parts of a run with another shard count are ignored.
    """
    from voxpipe.transforms.files import exclusive_lock

    folder = Path(output_dir)
    k, n = shard
    write_text_atomic(folder / f"statistics-shard-{k}-of-{n}.json", json.dumps(per_case, indent=2) + "\n")
    with exclusive_lock(folder / ".statistics.lock"):
        merged: dict[str, Any] = {}
        for part in sorted(folder.glob(f"statistics-shard-*-of-{n}.json")):
            merged.update(json.loads(part.read_text()))
        return write_statistics(dict(sorted(merged.items())), folder)
