"""Anatomical post-processing of predicted label maps, configured per class in the bundle.

MONAI has the pieces for single masks (``KeepLargestConnectedComponent``, ``FillHoles``), but its
``RemoveSmallObjects`` treats the values of an integer label map as ready-made objects rather than
finding connected components per class, sizes in voxels unless told the spacing, and nothing in MONAI
expresses "a tumour must lie inside or touch the liver". :class:`PostProcessd` does all four on the
label map, in millimetres from the prediction's own affine, in this order:

1. ``fill_holes``: background enclosed by a class becomes that class (3D, per class);
2. ``largest``: per group of labels (e.g. ``[[1, 2]]`` liver with its tumours, ``[[1], [2]]`` each
   lung), only the largest 26-connected component of the group's union is kept;
3. ``inside``: ``{2: [1]}`` removes components of label 2 that neither lie in nor touch label 1;
4. ``min_size_mm3``: ``{2: 20}`` removes components of label 2 smaller than 20 mm³.

Removed voxels become background (0). Everything runs inside the bounding box of the labelled voxels
(plus one voxel), and steps 2–4 label components slab by slab (:class:`SlabComponents`): a component
map of the whole box is never held. scipy labels one slab at a time and the components that touch
across slab faces are joined as a graph (``scipy.sparse.csgraph``), so the result is the whole-array
labelling's, exactly, while the memory is one slab's int32 map instead of the box's (on a fragmented
512 × 512 × 600 prediction, ~70 MB instead of ~630 MB). Why our own: neither scipy nor MONAI labels
components in bounded memory.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from voxpipe.errors import InputError

_FULL = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


def _voxel_mm3(affine: Any) -> float:
    matrix = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    return float(abs(np.linalg.det(matrix[:3, :3])))


def postprocess_labels(
    label: np.ndarray,
    *,
    voxel_mm3: float = 1.0,
    fill_holes: Sequence[int] = (),
    largest: Sequence[Sequence[int]] = (),
    inside: Mapping[int, Sequence[int]] | None = None,
    min_size_mm3: Mapping[int, float] | None = None,
    in_place: bool = False,
) -> np.ndarray:
    """Post-process an integer label map ``(X, Y, Z)`` (see module doc for the order); returns a new
    array, or ``label`` itself changed with ``in_place`` (no copy of the whole map)."""
    if np.ndim(label) != 3:
        raise InputError(f"post-processing: expected a 3D label map (X, Y, Z), found shape {np.shape(label)}")
    out = label if in_place and isinstance(label, np.ndarray) else np.array(label, copy=True)
    box = foreground_box(out)
    if box is not None:
        _postprocess_in_place(
            out[box],
            voxel_mm3=voxel_mm3,
            fill_holes=fill_holes,
            largest=largest,
            inside=inside,
            min_size_mm3=min_size_mm3,
        )
    return out


def foreground_box(label: np.ndarray, margin: int | Sequence[int] = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``label != 0`` grown by ``margin`` voxels per side (one value
    or one per axis; clipped), or ``None`` if empty.

    Component labelling and morphology inside this box (grown by one voxel) give the same result as
    on the whole array at a fraction of the memory (scipy's int32 component maps are 4 bytes per voxel).
    """
    margins = (
        [int(margin)] * label.ndim if isinstance(margin, (int, np.integer)) else [int(m) for m in margin]
    )
    box = []
    for axis in range(label.ndim):
        others = tuple(a for a in range(label.ndim) if a != axis)
        hits = np.flatnonzero(np.any(label, axis=others))
        if hits.size == 0:
            return None
        box.append(
            slice(
                max(int(hits[0]) - margins[axis], 0),
                min(int(hits[-1]) + 1 + margins[axis], label.shape[axis]),
            )
        )
    return tuple(box)


SLAB = 32  # slices (last axis) labelled at once by SlabComponents
WHOLE_FIRST = True  # SlabComponents tries one uint16 map of the whole box first (tests switch it off)
# ... when the box is at most this big (scipy's labelling needs several bytes a voxel)
WHOLE_MAX_VOXELS = 64 * 2**20


def _in(out: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``np.isin(out, values)`` for a few values, with one temporary instead of one per value."""
    mask = out == int(values[0])
    for value in values[1:]:
        mask |= out == int(value)
    return mask


class SlabComponents:
    """26-connected components of ``np.isin(out, values)``, labelled slab by slab along the last axis.

    Each slab is labelled by ``scipy.ndimage.label``; components of neighbouring slabs that touch
    (26-connectivity across the face between them) are joined with
    ``scipy.sparse.csgraph.connected_components``. :attr:`sizes` holds each component's voxel count;
    :meth:`slabs` yields every slab's map of component numbers (1..:attr:`count`, 0 outside). Each
    slab's own labels are kept as uint16 when its count fits (2 bytes a voxel, half of scipy's int32
    map of the whole box) and labelled again otherwise. The numbering is not scipy's whole-array
    numbering; the components are the same. Without an explicit ``slab``, a box of at most
    :data:`WHOLE_MAX_VOXELS` is labelled first into one uint16 map (one pass: an organ's box, a trained
    network's few components); a larger box, or more than 65 535 components, takes the slab path
    (a fragmented prediction over a whole 512 × 512 × 600 scan: scipy's labelling of the whole box
    raised the peak by 1.5 GiB there).
    """

    def __init__(self, out: np.ndarray, values: Sequence[int], slab: int | None = None) -> None:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        self.out, self.values = out, [int(v) for v in values]
        self.slab = max(1, int(SLAB if slab is None else slab))
        whole_first = slab is None and WHOLE_FIRST and out.size <= WHOLE_MAX_VOXELS
        if whole_first:  # first the whole box in one uint16 map (scipy's own numbering, one pass)
            whole = np.empty(out.shape, dtype=np.uint16)
            try:
                count = int(ndimage.label(_in(out, self.values), structure=_FULL, output=whole))
            except RuntimeError:  # more than 65535 components: slab by slab, in bounded memory
                del whole
            else:
                self.slab, self._kept, self._offsets = max(out.shape[-1], 1), [whole], [0]
                self.count = count
                self._component = np.arange(1, count + 1, dtype=np.int64)
                self.sizes = np.bincount(whole.ravel(), minlength=count + 1)[1:].astype(np.int64)
                return
        offsets, sizes, rows, cols = [], [], [], []
        total = 0
        previous_face: np.ndarray | None = None
        self._kept: list[np.ndarray] | None = []
        for _, labels, count in self._labelled():
            if self._kept is not None:
                self._kept = self._kept + [labels.astype(np.uint16)] if count < 2**16 else None
            offsets.append(total)
            sizes.append(np.bincount(labels.ravel(), minlength=count + 1)[1:])
            if previous_face is not None:
                pairs = _touching(previous_face, labels[..., 0])
                if pairs.size:
                    rows.append(pairs[:, 0] + offsets[-2] - 1)
                    cols.append(pairs[:, 1] + total - 1)
            previous_face = labels[..., -1].copy()
            total += count
        self._offsets = offsets
        if total == 0:
            self.count, self._component, self.sizes = 0, np.zeros(0, np.int64), np.zeros(0, np.int64)
            return
        row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(row.size, np.int8), (row, col)), shape=(total, total))
        count, component = connected_components(graph, directed=False)
        self.count = int(count)
        self._component = component.astype(np.int64) + 1  # slab label (global) → component number
        self.sizes = np.bincount(self._component, weights=np.concatenate(sizes), minlength=count + 1)[
            1:
        ].astype(np.int64)

    def _labelled(self):
        depth = self.out.shape[-1]
        for start in range(0, depth, self.slab):
            stop = min(start + self.slab, depth)
            labels, count = ndimage.label(_in(self.out[..., start:stop], self.values), structure=_FULL)
            yield start, labels, int(count)

    def slabs(self):
        """``(start, stop, numbers)`` per slab: ``numbers`` maps the slab's voxels to component numbers."""
        if self._kept is not None:
            labelled = ((i * self.slab, kept, 0) for i, kept in enumerate(self._kept))
        else:
            labelled = self._labelled()
        for (start, labels, _), offset in zip(labelled, self._offsets, strict=True):
            lookup = np.concatenate(([0], self._component[offset : offset + int(labels.max(initial=0))]))
            yield start, start + labels.shape[-1], lookup[labels]

    def largest(self) -> int:
        """The number of the largest component; among equal sizes, the one whose first voxel comes first
        in C order (the one scipy's whole-array labelling numbers first, so the same one is kept)."""
        tied = np.flatnonzero(self.sizes == self.sizes.max()) + 1
        if tied.size == 1:
            return int(tied[0])
        first = np.full(self.count + 1, np.iinfo(np.int64).max, dtype=np.int64)
        for start, _, numbers in self.slabs():
            where = np.nonzero(np.isin(numbers, tied))
            if where[0].size:
                index = np.ravel_multi_index((*where[:-1], where[-1] + start), self.out.shape)
                np.minimum.at(first, numbers[where], index)
        return int(tied[np.argmin(first[tied])])

    def remove(self, numbers: np.ndarray) -> None:
        """Set the voxels of the given component numbers to background (0) in ``out``."""
        numbers = np.asarray(numbers, dtype=np.int64)
        if not numbers.size:
            return
        gone = np.zeros(self.count + 1, dtype=bool)
        gone[numbers] = True
        for start, stop, labels in self.slabs():
            self.out[..., start:stop][gone[labels]] = 0


def _touching(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Unique ``(label in lower, label in upper)`` pairs of 26-neighbours across two adjacent planes."""
    found = []
    nx, ny = lower.shape
    width = int(upper.max()) + 1
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            a = lower[max(dx, 0) : nx + min(dx, 0), max(dy, 0) : ny + min(dy, 0)]
            b = upper[max(-dx, 0) : nx + min(-dx, 0), max(-dy, 0) : ny + min(-dy, 0)]
            both = (a > 0) & (b > 0)
            if both.any():  # one int64 key per pair: a 1D unique sorts far faster than rows
                found.append(np.unique(a[both].astype(np.int64) * width + b[both]))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    keys = np.unique(np.concatenate(found))
    return np.stack([keys // width, keys % width], axis=1)


def _postprocess_in_place(
    out: np.ndarray,
    *,
    voxel_mm3: float,
    fill_holes: Sequence[int],
    largest: Sequence[Sequence[int]],
    inside: Mapping[int, Sequence[int]] | None,
    min_size_mm3: Mapping[int, float] | None,
) -> None:
    for value in fill_holes:
        filled = ndimage.binary_fill_holes(out == value)
        filled &= out == 0
        out[filled] = value
        del filled
    for group in largest:
        components = SlabComponents(out, list(group))
        if components.count > 1:
            keep = components.largest()
            components.remove(np.setdiff1d(np.arange(1, components.count + 1), [keep]))
    for value, hosts in (inside or {}).items():
        components = SlabComponents(out, [int(value)])
        if components.count:
            touching = np.zeros(components.count + 1, dtype=bool)
            depth = out.shape[-1]
            for start, stop, numbers in components.slabs():
                low, high = max(start - 1, 0), min(stop + 1, depth)  # a halo plane: dilation reaches across
                near = ndimage.binary_dilation(_in(out[..., low:high], list(hosts)), structure=_FULL)
                near = near[..., start - low : start - low + (stop - start)]
                touching[numbers[near]] = True
            touching[0] = True
            components.remove(np.flatnonzero(~touching))
    for value, limit in (min_size_mm3 or {}).items():
        components = SlabComponents(out, [int(value)])
        if components.count:
            small = np.flatnonzero(components.sizes * voxel_mm3 < float(limit)) + 1
            components.remove(small)


class PostProcessd(MapTransform):
    """Dict transform over discrete label maps ``(1, X, Y, Z)`` (or ``(X, Y, Z)``); spacing from ``.affine``.

    A tensor prediction is changed in place (it is the inference chain's own array; copying it would
    add a whole label map to the peak memory); a numpy array is copied.

    Args:
        keys: label-map keys (after ``AsDiscreted(argmax=True)``).
        fill_holes, largest, inside, min_size_mm3: see :func:`postprocess_labels`; bundle YAML keys
            may be strings (``{"2": [1]}``), they are converted to integers.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        *,
        fill_holes: Sequence[int] = (),
        largest: Sequence[Sequence[int]] = (),
        inside: Mapping[Any, Sequence[int]] | None = None,
        min_size_mm3: Mapping[Any, float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.options = {
            "fill_holes": [int(v) for v in fill_holes],
            "largest": [[int(v) for v in group] for group in largest],
            "inside": {int(k): [int(v) for v in hosts] for k, hosts in (inside or {}).items()},
            "min_size_mm3": {int(k): float(v) for k, v in (min_size_mm3 or {}).items()},
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            affine = getattr(pred, "affine", None)
            voxel = _voxel_mm3(affine) if affine is not None else 1.0
            array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            squeeze = array.ndim == 4
            labels = array[0] if squeeze else array
            if not np.issubdtype(labels.dtype, np.integer):  # AsDiscreted gives float class indices
                labels = np.rint(labels).astype(np.int16)
            # in place: the prediction is this chain's own array (a copy of the map is 157 MB at 512 × 512 × 600)
            result = postprocess_labels(
                labels, voxel_mm3=voxel, in_place=isinstance(pred, torch.Tensor), **self.options
            )
            result = result[None] if squeeze else result
            if isinstance(pred, torch.Tensor):
                out = torch.as_tensor(result.astype(array.dtype, copy=False))
                d[key] = (
                    MetaTensor(out, meta=pred.meta, applied_operations=pred.applied_operations)
                    if isinstance(pred, MetaTensor)
                    else out
                )
            else:
                d[key] = result.astype(array.dtype)
        return d
