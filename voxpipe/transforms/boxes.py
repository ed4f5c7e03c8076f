"""Boxes as data: voxel boxes on an image grid ↔ boxes in world mm, with the convention named.

Two conventions get confused in detection code (MONAI tutorials#1114, #1278), so both are fixed
here and written into every box file:

* **voxel** boxes follow ``monai.apps.detection`` (``convert_mask_to_box``): corner coordinates on
  the array's axes, and voxel ``i`` spans ``[i, i + 1)``. So box coordinate ``c`` is voxel-centre index
  ``c - 0.5``, and the affine (which maps voxel centres) applies to ``c - 0.5``;
* **world** boxes are in mm, in ``world_lps`` (ITK/DICOM/LUNA16 physical space) or ``world_ras``
  (NIfTI/nibabel). A box on an oblique grid is not axis-aligned in the world, so its world box is
  the axis-aligned box around all 8 transformed corners. MONAI's ``apply_affine_to_boxes`` moves only
  two corners, which is exact for scaling and flips but not for rotations; that is why this is our
  own code.

Box modes (``xyzxyz``, ``cccwhd``, ...) are MONAI's (``monai.data.box_utils.convert_box_mode``).
A box file (:func:`write_boxes_json`) holds ``{"space", "mode", "boxes": [{"box", "label",
"score"?}], "image"?}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapTransform
from scipy import ndimage

from voxpipe.errors import InputError
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import LPS_TO_RAS

SPACES = ("world_lps", "world_ras", "voxel")
MODES = ("xyzxyz", "xxyyzz", "xyzwhd", "cccwhd")


def _world_affine(affine: np.ndarray, space: str) -> np.ndarray:
    """Voxel-centre index → world mm in ``space`` (the image's ``affine`` maps to RAS)."""
    if space not in ("world_lps", "world_ras"):
        raise InputError(f"box space: expected world_lps or world_ras, found {space!r}")
    affine = np.asarray(affine, dtype=float)
    return LPS_TO_RAS @ affine if space == "world_lps" else affine


def points_to_world(points: np.ndarray, affine: np.ndarray, *, space: str = "world_lps") -> np.ndarray:
    """Voxel-centre indices ``(N, 3)`` (fractional allowed) → world mm ``(N, 3)``."""
    matrix = _world_affine(affine, space)
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def points_to_voxel(points: np.ndarray, affine: np.ndarray, *, space: str = "world_lps") -> np.ndarray:
    """World mm ``(N, 3)`` → fractional voxel-centre indices ``(N, 3)``."""
    matrix = np.linalg.inv(_world_affine(affine, space))
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _corners(boxes: np.ndarray) -> np.ndarray:
    """``(N, 6)`` xyzxyz → ``(N, 8, 3)`` corners."""
    low, high = boxes[:, :3], boxes[:, 3:]
    picks = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    return np.where(picks[None] == 0, low[:, None, :], high[:, None, :])


def _enclosing(corners: np.ndarray) -> np.ndarray:
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def voxel_boxes_to_world(boxes: np.ndarray, affine: np.ndarray, *, space: str = "world_lps") -> np.ndarray:
    """Voxel boxes ``(N, 6)`` xyzxyz (MONAI detection convention) → world boxes xyzxyz in mm (axis-aligned, enclosing)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 6)
    corners = _corners(boxes).reshape(-1, 3) - 0.5  # box coordinates → voxel-centre indices
    return _enclosing(points_to_world(corners, affine, space=space).reshape(-1, 8, 3))


def world_boxes_to_voxel(boxes: np.ndarray, affine: np.ndarray, *, space: str = "world_lps") -> np.ndarray:
    """World boxes ``(N, 6)`` xyzxyz in mm → voxel boxes xyzxyz (MONAI detection convention, enclosing)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 6)
    corners = points_to_voxel(_corners(boxes).reshape(-1, 3), affine, space=space) + 0.5
    return _enclosing(corners.reshape(-1, 8, 3))


def boxes_from_instances(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box of each instance of an instance label map: ``(voxel boxes (N, 6) xyzxyz, instance values (N,))``.

    Same convention as MONAI's ``convert_mask_to_box`` (voxel i spans [i, i+1)); scipy's
    ``find_objects`` finds them without one mask per instance in memory.
    """
    instances = np.asarray(instances)
    if instances.ndim != 3:
        raise InputError(f"instance map: expected a 3D array, found shape {instances.shape}")
    boxes, values = [], []
    for value, found in enumerate(ndimage.find_objects(instances.astype(np.int64)), start=1):
        if found is None:
            continue
        boxes.append(
            [found[0].start, found[1].start, found[2].start, found[0].stop, found[1].stop, found[2].stop]
        )
        values.append(value)
    return np.asarray(boxes, dtype=float).reshape(-1, 6), np.asarray(values, dtype=np.int64)


def convert_mode(boxes: np.ndarray, src: str, dst: str) -> np.ndarray:
    """MONAI's box-mode conversion (``xyzxyz``, ``xxyyzz``, ``xyzwhd``, ``cccwhd``) on ``(N, 6)`` arrays."""
    from monai.data.box_utils import convert_box_mode

    for mode in (src, dst):
        if mode not in MODES:
            raise InputError(f"box mode: expected one of {', '.join(MODES)}, found {mode!r}")
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 6)
    return (
        np.asarray(convert_box_mode(boxes, src_mode=src, dst_mode=dst), dtype=float) if len(boxes) else boxes
    )


def write_boxes_json(
    path: str | os.PathLike[str],
    boxes: np.ndarray,
    *,
    space: str,
    mode: str = "cccwhd",
    labels: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    image: str | None = None,
    extra: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write boxes (given in ``xyzxyz`` in ``space``) as a box file in ``mode``, atomically."""
    if space not in SPACES:
        raise InputError(f"box space: expected one of {', '.join(SPACES)}, found {space!r}")
    converted = convert_mode(boxes, "xyzxyz", mode)
    items = []
    for index, box in enumerate(converted):
        item: dict[str, Any] = {"box": [round(float(v), 4) for v in box]}
        if labels is not None:
            item["label"] = int(labels[index])
        if scores is not None:
            item["score"] = float(scores[index])
        if extra is not None:
            item.update(extra[index])
        items.append(item)
    document = {"space": space, "mode": mode, **({"image": image} if image else {}), "boxes": items}
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def read_boxes_json(path: str | os.PathLike[str]) -> tuple[np.ndarray, str, list[dict[str, Any]]]:
    """A box file → ``(boxes (N, 6) xyzxyz, space, items)``.

    Raises:
        InputError: not JSON, or the space, the mode or a box is missing or malformed (named, with the box's index).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{str(path)!r}: expected a JSON box file, found {error}") from error
    if not isinstance(document, dict):
        raise InputError(
            f"{str(path)!r}: expected a JSON object with space, mode and boxes, found {type(document).__name__}"
        )
    space, mode = document.get("space"), document.get("mode")
    if space not in SPACES:
        raise InputError(
            f"{str(path)!r}: expected 'space' to be one of {', '.join(SPACES)} (which coordinates the boxes "
            f"are in), found {space!r}"
        )
    if mode not in MODES:
        raise InputError(f"{str(path)!r}: expected 'mode' to be one of {', '.join(MODES)}, found {mode!r}")
    items = document.get("boxes")
    if not isinstance(items, list):
        raise InputError(f"{str(path)!r}: expected a list under 'boxes', found {type(items).__name__}")
    rows = []
    for index, item in enumerate(items):
        box = item.get("box") if isinstance(item, dict) else None
        if not (
            isinstance(box, list)
            and len(box) == 6
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in box)
        ):
            raise InputError(
                f"{str(path)!r}: boxes[{index}]: expected 'box' with 6 finite numbers, found {box!r}"
            )
        rows.append(box)
    boxes = convert_mode(np.asarray(rows, dtype=float).reshape(-1, 6), mode, "xyzxyz")
    if np.any(boxes[:, 3:] < boxes[:, :3]):
        bad = int(np.flatnonzero(np.any(boxes[:, 3:] < boxes[:, :3], axis=1))[0])
        raise InputError(
            f"{str(path)!r}: boxes[{bad}]: expected a box with positive size, found {items[bad]['box']}"
        )
    return boxes, space, items


def meta_affine(image: Any) -> np.ndarray:
    """The RAS affine of a MONAI ``MetaTensor`` (the grid its boxes are on), as a float64 array."""
    from monai.utils import convert_to_numpy

    return np.asarray(convert_to_numpy(image.affine), dtype=float)


class WorldBoxesToVoxeld(MapTransform):
    """Boxes in world mm (``world_lps`` or ``world_ras``, ``xyzxyz``) → voxel boxes on the image's current grid.

    A MONAI-style dictionary transform for detection pipelines: place it after the geometric
    transforms (``Orientationd``, ``Spacingd``), so the boxes follow the grid the network sees. The
    image's ``affine`` (MONAI ``MetaTensor``, RAS) gives the grid; the boxes become MONAI detection
    voxel boxes (``xyzxyz``, voxel i spans [i, i + 1)), float32 tensors, enclosing on oblique grids.
    Why not MONAI's ``AffineBoxToImageCoordinated``: it moves two corners, which is not the enclosing
    box once the grid is rotated. A key with no boxes gives a ``(0, 6)`` tensor.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "box",
        *,
        image_key: str = "image",
        space: str = "world_lps",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.space = image_key, space
        _world_affine(np.eye(4), space)  # checks the space now

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data[image_key]``: a MetaTensor (C, X, Y, Z); ``data[box_key]``: (N, 6) world boxes."""
        import torch

        item = dict(data)
        image = item[self.image_key]
        from monai.utils import convert_to_numpy

        affine = meta_affine(image)
        for key in self.key_iterator(item):
            boxes = np.asarray(convert_to_numpy(item[key]), dtype=float).reshape(-1, 6)
            item[key] = torch.as_tensor(
                world_boxes_to_voxel(boxes, affine, space=self.space), dtype=torch.float32
            )
        return item


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every ``xyzxyz`` box of ``a`` with every one of ``b``: (len(a), len(b))."""
    low = np.maximum(a[:, None, :3], b[None, :, :3])
    high = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    volume_a = np.prod(a[:, 3:] - a[:, :3], axis=1)
    volume_b = np.prod(b[:, 3:] - b[:, :3], axis=1)
    return inter / np.maximum(volume_a[:, None] + volume_b[None, :] - inter, 1e-12)


def weighted_box_clustering(
    boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float = 0.1, n_views: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the boxes of several test-time views (flips) into one box per object.

    nnDetection's weighted box clustering, simplified; MONAI has only NMS. The highest-scoring
    box and every box overlapping it by more than ``iou_threshold`` form a cluster. The cluster
    becomes one box, the score-weighted mean of its boxes, with score ``sum(scores) / n_views``:
    a view that did not see the object counts as 0, and a box seen once among 8 views keeps 1/8 of its
    score. Repeats on what is left. Boxes ``xyzxyz`` ``(N, 6)``.

    Returns:
        ``(boxes (M, 6), scores (M,))``, highest score first.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 6)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if n_views < 1:
        raise InputError(f"weighted box clustering: expected n_views >= 1, found {n_views}")
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    left = np.ones(len(boxes), dtype=bool)
    merged, merged_scores = [], []
    iou = _iou_matrix(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    for first in range(len(boxes)):
        if not left[first]:
            continue
        members = left & (iou[first] > iou_threshold)
        members[first] = True
        weights = scores[members]
        merged.append((boxes[members] * weights[:, None]).sum(axis=0) / max(weights.sum(), 1e-12))
        merged_scores.append(min(float(weights.sum()) / n_views, 1.0))
        left &= ~members
    return np.asarray(merged, dtype=float).reshape(-1, 6), np.asarray(merged_scores, dtype=float)
