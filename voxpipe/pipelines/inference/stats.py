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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from voxpipe.transforms.io import write_text_atomic
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


def largest_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Longest distance (mm) between two voxel centres of ``mask`` (0 for an empty mask or one voxel).

    Exact: the farthest pair of a point set lies on its convex hull, whose vertices are among the
    ends of the mask's lines (:func:`_segment_ends`); an affine map keeps both properties.
    """
    index = _segment_ends(mask)
    if len(index) < 2:
        return 0.0
    points = index @ np.asarray(affine, dtype=float)[:3, :3].T
    try:
        points = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # flat or tiny lesions: all points (few by construction)
        pass
    from scipy.spatial.distance import cdist

    longest = 0.0
    for start in range(0, len(points), 1024):  # every pair of hull vertices, 1024 rows at a time
        longest = max(longest, float(cdist(points[start : start + 1024], points).max()))
    return longest


def _masked_mean_std(image: np.ndarray, mask: np.ndarray, *, slab: int = 16) -> tuple[float, float]:
    """Mean and standard deviation of ``image`` inside ``mask`` (count > 0), two passes over slabs of
    the last axis in float64: no float64 copy of every voxel of a structure (800 MB for a large organ)."""
    image = np.asarray(image)
    count, total = 0, 0.0
    for start in range(0, mask.shape[-1], slab):
        values = image[..., start : start + slab][mask[..., start : start + slab]]
        count += values.size
        total += float(values.sum(dtype=np.float64))
    mean = total / count
    squares = 0.0
    for start in range(0, mask.shape[-1], slab):
        values = image[..., start : start + slab][mask[..., start : start + slab]].astype(np.float64)
        squares += float(np.square(values - mean).sum())
    return mean, float(np.sqrt(squares / count))


def case_statistics(
    label: np.ndarray,
    affine: np.ndarray,
    *,
    names: Mapping[int, str],
    image: np.ndarray | None = None,
    lesion_labels: Sequence[int] = (),
) -> dict[str, Any]:
    """Statistics of one label map ``(X, Y, Z)`` on ``affine`` (mm); ``image`` on the same grid if given.

    Returns:
        ``{name: {"volume_ml", "mean", "std", [lesion_count, largest_lesion_ml, largest_lesion_diameter_mm]}}``
        for every named non-zero label (absent structures have volume 0 and no mean).
    """
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    stats: dict[str, Any] = {}
    for value, name in sorted(names.items()):
        if int(value) == 0:
            continue
        mask = label == int(value)
        count = int(mask.sum())
        entry: dict[str, Any] = {"volume_ml": count * voxel_ml}
        if image is not None:
            entry["mean"], entry["std"] = _masked_mean_std(image, mask) if count else (None, None)
        if int(value) in {int(v) for v in lesion_labels}:
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
    from voxpipe.transforms.io import exclusive_lock

    folder = Path(output_dir)
    k, n = shard
    write_text_atomic(folder / f"statistics-shard-{k}-of-{n}.json", json.dumps(per_case, indent=2) + "\n")
    with exclusive_lock(folder / ".statistics.lock"):
        merged: dict[str, Any] = {}
        for part in sorted(folder.glob(f"statistics-shard-*-of-{n}.json")):
            merged.update(json.loads(part.read_text()))
        return write_statistics(dict(sorted(merged.items())), folder)
