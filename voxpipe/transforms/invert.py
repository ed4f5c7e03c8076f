"""Class probabilities on the network grid → a label map on the source image's grid, slab by slab.

MONAI's ``Invertd`` brings a prediction back by replaying the inverse of every spatial transform on
all class channels at once: for a 512 × 512 × 600 CT with 3 classes that is 1.9 GB of float32
probabilities on the source grid, a float32 sampling grid of the same size, and a float32 argmax
input, several GB at the peak, to produce a uint8 label map of 157 MB. :class:`ResampleArgmaxd`
gives the same labels (trilinear interpolation of the probabilities between voxel centres, border
values outside the network grid, then argmax, as ``Invertd(nearest_interp=False)`` +
``AsDiscreted(argmax=True)``) without that peak: it maps source voxel centres into the network grid
through the two affines MONAI tracks (the source's ``original_affine`` and the preprocessed image's
``affine``, which already account for orientation, spacing and crops) and interpolates one slab of
source slices at a time, keeping only the uint8 labels (and, if asked, float16 probabilities).

On axis-aligned grids (any storage flips; not oblique or axis-swapped ones) the work is done by
:class:`SourceArgmax`, which takes the network grid's rows in order along its first axis and
interpolates each 16-row slab of the source grid as soon as the rows it reads have arrived. So the
inferer can hand it rows as its windows finish
(:mod:`voxpipe.pipelines.inference.predictor`; the inference engine
links the two when ``ResampleArgmaxd`` starts a bundle's post-processing) and the C × network grid
of logits is never held: with 100 classes on a 600-slice CT that is 2.5 GB in float16. The whole-grid
path feeds the same class in blocks of rows, so both give the same labels.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from voxpipe.errors import InputError
from voxpipe.transforms.postprocess import foreground_box
from voxpipe.transforms.rows import RowStream

logger = logging.getLogger(__name__)

SOURCE_ROWS = 16  # source rows (first axis) interpolated together by SourceArgmax: its unit of streaming
FEED_ROWS = 8  # network rows resample_argmax hands to SourceArgmax at once
PRUNE_ABOVE = 4  # with more classes than this, those that cannot win in a block are not interpolated
#: Metadata flag of a prediction that already is the label map on the source grid (the inferer streamed
#: its rows through :meth:`ResampleArgmaxd.streamer`); ResampleArgmaxd passes it through.
SOURCE_LABELS = "voxpipe_labels_on_source_grid"


def _matrix(affine: Any) -> np.ndarray:
    return np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)


def resample_argmax(
    probabilities: torch.Tensor,
    *,
    source_affine: np.ndarray,
    network_affine: np.ndarray,
    source_shape: Sequence[int],
    slab: int = 16,
    keep_probabilities: bool = False,
    softmax: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Argmax of ``probabilities`` interpolated at the voxel centres of the source grid.

    Args:
        probabilities: ``(C, X, Y, Z)`` class probabilities (or logits) on the network grid; float16
            is read as it is (each slab is computed in float32), so a many-class prediction is not
            copied whole.
        source_affine: 4 × 4 voxel → world (mm) of the source grid.
        network_affine: 4 × 4 voxel → world (mm) of the network grid, same world frame.
        source_shape: ``(X, Y, Z)`` of the source grid.
        slab: source slices (last axis) interpolated at once; memory grows with it.
        keep_probabilities: also return the interpolated probabilities as float16 ``(C, X, Y, Z)``.
        softmax: ``probabilities`` are logits: the softmax over classes is taken on each slab's block
            of the network grid before interpolating (the same values as a softmax of the whole
            volume first, without a second C × grid tensor).

    Returns:
        ``(labels, probabilities_or_None)``: uint8 ``(X, Y, Z)`` labels (int16 above 255 classes).
    """
    if probabilities.ndim != 4:
        raise InputError(
            f"resample_argmax: expected probabilities (C, X, Y, Z), found shape {tuple(probabilities.shape)}"
        )
    classes = probabilities.shape[0]
    mapping = np.linalg.inv(network_affine) @ source_affine  # source voxel → network voxel
    sx, sy, sz = (int(v) for v in source_shape)
    volume = probabilities.detach().cpu()
    volume = volume if volume.dtype in (torch.float16, torch.bfloat16) else volume.float()
    if separable(mapping):  # axis-aligned grids (flips included): slab by slab, as when streamed
        stream = SourceArgmax(
            classes=classes,
            source_affine=source_affine,
            network_affine=network_affine,
            source_shape=(sx, sy, sz),
            network_shape=volume.shape[1:],
            softmax=softmax,
            keep_probabilities=keep_probabilities,
            slab=slab,
        )
        for start in range(0, volume.shape[1], FEED_ROWS):  # as the sliding window hands them on
            stream.add(start, volume[:, start : start + FEED_ROWS])
        return stream.result()
    volume = volume[None]
    slab = (
        max(1, int(slab) * 4 // max(classes, 4)) if classes > 4 else int(slab)
    )  # a slab's block: ~4 classes' worth
    label_dtype = torch.uint8 if classes <= 256 else torch.int16
    labels = torch.zeros((sx, sy, sz), dtype=label_dtype)
    kept = torch.empty((classes, sx, sy, sz), dtype=torch.float16) if keep_probabilities else None
    region = (
        [(0, sx), (0, sy), (0, sz)]
        if keep_probabilities
        else _changing_region(volume[0], mapping, (sx, sy, sz))
    )
    if region is None:
        return labels, kept  # class 0 wins everywhere on the network grid, so everywhere on the source grid
    (x0, x1), (y0, y1), (z0, z1) = region
    size = torch.tensor(probabilities.shape[1:], dtype=torch.float64)
    scale = 2.0 / torch.clamp(size - 1.0, min=1.0)  # align_corners=True: voxel index → [-1, 1]
    matrix = torch.from_numpy(mapping[:3, :3]) * scale[:, None]
    offset = torch.from_numpy(mapping[:3, 3]) * scale - 1.0
    # grid_sample reads (N, C, D, H, W) with grid (x→W, y→H, z→D): our X, Y, Z are D, H, W.
    matrix, offset = matrix.flip(0).float(), offset.flip(0).float()
    volume = volume.float()  # grid_sample: oblique grids, rare; the whole volume in float32
    if softmax:
        volume = torch.softmax(volume, dim=1)
    ii = torch.arange(x0, x1, dtype=torch.float32)[:, None, None, None] * matrix[:, 0]
    jj = torch.arange(y0, y1, dtype=torch.float32)[None, :, None, None] * matrix[:, 1]
    plane = ii + jj + offset  # (X, Y, 1, 3): the k-independent part
    for start in range(z0, z1, slab):
        stop = min(start + slab, z1)
        kk = torch.arange(start, stop, dtype=torch.float32)[None, None, :, None] * matrix[:, 2]
        grid = (plane + kk)[None]  # (1, X, Y, k, 3)
        values = torch.nn.functional.grid_sample(
            volume, grid, mode="bilinear", padding_mode="border", align_corners=True
        )[0]
        labels[x0:x1, y0:y1, start:stop] = channel_argmax(values, label_dtype)
        if kept is not None:
            kept[:, :, :, start:stop] = values.to(torch.float16)
    return labels, kept


def channel_argmax(values: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``values.argmax(0)`` for (C, ...) tensors with few channels, as C − 1 elementwise passes.

    ``torch.argmax`` over the leading dimension of a large CPU tensor reduces along a strided axis
    and was the slowest step of the whole inversion (5 of 6 s on a 512 × 512 × 150 CT). Ties go to
    the first channel, as with ``argmax``.
    """
    best = values[0].clone()
    index = torch.zeros(values.shape[1:], dtype=dtype)
    for channel in range(1, values.shape[0]):
        better = values[channel] > best
        index[better] = channel
        torch.maximum(best, values[channel], out=best)
    return index


def _axis(
    mapping: np.ndarray, axis: int, start: int, stop: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices ``start:stop`` along ``axis`` → network (lower index, upper index, weight), border-clamped."""
    coords = np.clip(mapping[axis, axis] * np.arange(start, stop) + mapping[axis, 3], 0.0, size - 1.0)
    lower = np.minimum(np.floor(coords).astype(np.int64), max(size - 2, 0))
    upper = np.minimum(lower + 1, size - 1)
    return (
        torch.from_numpy(lower),
        torch.from_numpy(upper),
        torch.from_numpy((coords - lower).astype(np.float32)),
    )


def _candidates(values: torch.Tensor) -> torch.Tensor | None:
    """The classes of ``values`` ``(C, X, Y, k)`` that can be the argmax somewhere once interpolated
    in X and Y, in order; None when every class can.

    A point between network voxels takes a convex combination of the 2 × 2 corners of its cell (as
    ``torch.lerp`` computes it, never outside their range), so a class whose largest corner value is
    below another class's smallest corner value in that cell loses there, strictly. A class that
    loses so in every cell of the block is dropped: the argmax over the rest, in order, is the
    argmax over all, ties included. With a trained network only a few classes are near each cell.
    """
    low, high = values, values
    for axis in (1, 2):
        if values.shape[axis] > 1:
            first = [slice(None)] * 4
            second = [slice(None)] * 4
            first[axis], second[axis] = slice(0, -1), slice(1, None)
            low = torch.minimum(low[tuple(first)], low[tuple(second)])
            high = torch.maximum(high[tuple(first)], high[tuple(second)])
    floor = low.amax(dim=0)  # in each cell, the value some class reaches everywhere
    keep = (high >= floor).flatten(1).any(dim=1)
    if bool(keep.all()):
        return None
    return torch.nonzero(keep).flatten()


def _changing_region(
    volume: torch.Tensor, mapping: np.ndarray, source_shape: Sequence[int]
) -> list[tuple[int, int]] | None:
    """The source-grid box outside which the interpolated argmax is certainly class 0; None if it is 0 everywhere.

    Trilinear interpolation is a convex combination of the 8 network voxels around a point: where
    class 0 is the argmax at all of them, it is at least every other class there too, so the argmax
    stays 0 (ties go to the first class, as ``argmax`` breaks them). So only source voxels whose
    neighbourhood reaches a network voxel with another argmax need interpolating: the box of those
    network voxels, grown by one voxel (unbounded where it touches the grid's edge, since points
    beyond the edge take border values), mapped into the source grid.
    """
    box = foreground_box((channel_argmax(volume, torch.int16) != 0).numpy())  # grown by one voxel
    if box is None:
        return None
    corners = [
        (-1e6 if b.start == 0 else b.start, 1e6 if b.stop >= size else b.stop - 1)
        for b, size in zip(box, volume.shape[1:], strict=True)
    ]
    points = np.array([[x, y, z, 1.0] for x in corners[0] for y in corners[1] for z in corners[2]]).T
    source = (np.linalg.inv(mapping) @ points)[:3]  # network voxel → source voxel
    low = np.clip(np.floor(source.min(axis=1)) - 1, 0, np.array(source_shape)).astype(int)
    high = np.clip(np.ceil(source.max(axis=1)) + 2, 0, np.array(source_shape)).astype(int)
    if (high <= low).any():
        return None
    return [(int(a), int(b)) for a, b in zip(low, high, strict=True)]


def separable(mapping: np.ndarray) -> bool:
    """Whether a source voxel → network voxel mapping is axis-aligned (scaling, flips, shifts: no
    rotation or axis swap), so trilinear interpolation separates into three 1D interpolations."""
    linear = mapping[:3, :3]
    return bool(
        np.allclose(linear, np.diag(np.diag(linear)), atol=1e-9) and np.all(np.abs(np.diag(linear)) > 1e-9)
    )


class SourceArgmax:
    """Source-grid labels from rows of network-grid class scores, handed on in order along the first axis.

    The source grid is cut into slabs of :data:`SOURCE_ROWS` rows of its first axis; a slab is
    interpolated (:func:`resample_argmax`'s numbers) as soon as the network rows it reads have
    arrived, and network rows no slab still needs are dropped. So a sliding window that hands on
    finished rows (:func:`voxpipe.pipelines.inference.sliding_window.stream_sliding_window`) never
    needs the C × network grid, and :func:`resample_argmax`, which hands on the whole grid at once,
    computes the same slabs the same way: the labels do not depend on how the rows arrive.

    Only for axis-aligned grids (:func:`separable`); oblique or axis-swapped grids take
    :func:`resample_argmax`'s ``grid_sample`` path over the whole grid.

    Args:
        classes: channels of the rows (None: taken from the first rows).
        source_affine, network_affine: 4 × 4 voxel → world (mm) of the two grids.
        source_shape, network_shape: ``(X, Y, Z)`` of each.
        softmax: the rows are logits (the softmax is taken block by block).
        keep_probabilities: also keep the interpolated values, float16 ``(C, X, Y, Z)``.
        slab: sets how many values are interpolated at once: ``slab`` source slices of the whole
            first two axes, for 4 classes.
    """

    def __init__(
        self,
        *,
        classes: int | None,
        source_affine: np.ndarray,
        network_affine: np.ndarray,
        source_shape: Sequence[int],
        network_shape: Sequence[int],
        softmax: bool = False,
        keep_probabilities: bool = False,
        slab: int = 16,
    ) -> None:
        self.mapping = np.linalg.inv(np.asarray(network_affine, dtype=np.float64)) @ np.asarray(
            source_affine, dtype=np.float64
        )
        if not separable(self.mapping):
            raise ValueError("SourceArgmax: the grids are not axis-aligned; use resample_argmax")
        self.classes, self.softmax = (None if classes is None else int(classes)), bool(softmax)
        self.keep_probabilities = bool(keep_probabilities)
        self.source_shape = tuple(int(v) for v in source_shape)
        self.network_shape = tuple(int(v) for v in network_shape)
        sx, sy, sz = self.source_shape
        self.budget = max(1, int(slab)) * sx * sy * 4  # values per block: as slab slices of 4 classes
        self.labels: torch.Tensor | None = None
        self.kept: torch.Tensor | None = None
        self.axes = [
            _axis(self.mapping, axis, 0, size, self.network_shape[axis])
            for axis, size in enumerate(self.source_shape)
        ]
        lower, upper, _ = self.axes[0]
        slabs = [
            (
                start,
                min(start + SOURCE_ROWS, sx),
                int(lower[start : start + SOURCE_ROWS].min()),
                int(upper[start : start + SOURCE_ROWS].max()) + 1,
            )
            for start in range(0, sx, SOURCE_ROWS)
        ]
        self.stream = RowStream(
            in_rows=self.network_shape[0], slabs=slabs, compute=self._slab, prepare=self._prepare
        )
        self.seconds = 0.0  # spent here, for --timings (the stitcher calls add from inside the inferer)

    def add(self, start: int, rows: torch.Tensor) -> None:
        """Network rows ``start`` to ``start + n`` of all channels, ``(C, n, Y, Z)``; kept (not copied)
        while a slab still needs them, so the caller must not write into ``rows`` afterwards."""
        began = time.perf_counter()
        if self.classes is None:
            self.classes = int(rows.shape[0])
        if self.labels is None:
            self.labels = torch.zeros(
                self.source_shape, dtype=torch.uint8 if self.classes <= 256 else torch.int16
            )
            if self.keep_probabilities:
                self.kept = torch.empty((self.classes, *self.source_shape), dtype=torch.float16)
        if (
            start != self.stream.next_row
            or tuple(rows.shape[2:]) != self.network_shape[1:]
            or rows.shape[0] != self.classes
        ):
            raise ValueError(
                f"SourceArgmax: expected rows from {self.stream.next_row} of shape ({self.classes}, n, "
                f"{self.network_shape[1]}, {self.network_shape[2]}), found rows from {start} of {tuple(rows.shape)}"
            )
        self.stream.add(start, rows)
        self.seconds += time.perf_counter() - began

    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 probabilities, row by row (so the numbers do not depend on how rows are grouped):
        each network voxel's softmax is taken once, not once for every source slice that reads it."""
        prepared = torch.empty(rows.shape, dtype=torch.float32)
        for row in range(rows.shape[1]):
            values = rows[:, row].contiguous().float()
            prepared[:, row] = torch.softmax(values, dim=0) if self.softmax else values
        return prepared

    @property
    def held(self) -> torch.Tensor | None:
        """The network rows held now, ``(C, n, Y, Z)`` joined (a copy); None when none are."""
        if not self.stream.held_rows:
            return None
        first = self.stream.held[0][0]
        return self.stream.rows(first, first + self.stream.held_rows)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(labels, probabilities_or_None)`` once every network row has been added."""
        if not self.stream.complete:
            raise ValueError(
                f"SourceArgmax: {self.stream.next_row} of {self.network_shape[0]} network rows added; the labels are incomplete"
            )
        self.stream.held = []
        assert self.labels is not None
        return self.labels, self.kept

    def _range(self, axis: int, start: int, stop: int, low: int, high: int) -> tuple[int, int] | None:
        """The source indices of ``start:stop`` along ``axis`` whose two network neighbours reach ``low..high``."""
        lower, upper, _ = self.axes[axis]
        hits = np.flatnonzero(((upper[start:stop] >= low) & (lower[start:stop] <= high)).numpy())
        return None if hits.size == 0 else (start + int(hits[0]), start + int(hits[-1]) + 1)

    def _slab(self, part: torch.Tensor, lo: int, s0: int, s1: int) -> None:
        """Interpolate source rows ``s0:s1`` from ``part``, the network rows from ``lo`` they read."""
        assert self.labels is not None and self.classes is not None
        _, sy, sz = self.source_shape
        if self.kept is not None:
            region = [(s0, s1), (0, sy), (0, sz)]
        else:
            # Trilinear interpolation is a convex combination of the 8 network voxels around a point:
            # where class 0 is the argmax at all of them it stays the argmax (ties go to the first
            # class), so only source voxels with a neighbour of another class are interpolated.
            box = foreground_box((channel_argmax(part, torch.int16) != 0).numpy(), 0)
            if box is None:
                return
            ranges = [
                self._range(0, s0, s1, lo + box[0].start, lo + box[0].stop - 1),
                self._range(1, 0, sy, box[1].start, box[1].stop - 1),
                self._range(2, 0, sz, box[2].start, box[2].stop - 1),
            ]
            if any(r is None for r in ranges):
                return
            region = [r for r in ranges if r is not None]
        (x0, x1), (y0, y1), (z0, z1) = region
        xl, xh, xw = (v[x0:x1] for v in self.axes[0])
        yl, yh, yw = (v[y0:y1] for v in self.axes[1])
        xl, xh = xl - lo, xh - lo
        ya, yb = int(min(yl.min(), yh.min())), int(max(yl.max(), yh.max())) + 1
        part = part[:, :, ya:yb]
        yl, yh = yl - ya, yh - ya
        step = max(1, self.budget // (self.classes * (x1 - x0) * (y1 - y0)))
        for start in range(z0, z1, step):
            stop = min(start + step, z1)
            zl, zh, zw = (v[start:stop] for v in self.axes[2])
            lower, upper = part.index_select(3, zl), part.index_select(3, zh)
            values = torch.lerp(lower, upper, zw)  # (C, X', Y', k)
            del lower, upper
            classes = _candidates(values) if self.kept is None and PRUNE_ABOVE < values.shape[0] else None
            if classes is not None:
                values = values.index_select(0, classes)
            values = torch.lerp(values.index_select(2, yl), values.index_select(2, yh), yw[:, None])
            values = torch.lerp(values.index_select(1, xl), values.index_select(1, xh), xw[:, None, None])
            index = channel_argmax(values, self.labels.dtype)
            if classes is not None:
                index = classes[index.long()].to(self.labels.dtype)
            self.labels[x0:x1, y0:y1, start:stop] = index
            if self.kept is not None:
                self.kept[:, x0:x1, y0:y1, start:stop] = values.to(torch.float16)


class ResampleArgmaxd(MapTransform):
    """Replace ``data[key]`` (class probabilities on the network grid) by the argmax label map on the
    grid of the source image ``data[reference_key]`` (see module doc).

    The network grid's affine is ``data[reference_key].affine`` (the preprocessed image); the source
    grid is its ``meta["original_affine"]`` and ``meta["spatial_shape"]``, as MONAI's loaders record
    them. The result is a ``(1, X, Y, Z)`` uint8 ``MetaTensor`` with the source affine. A prediction
    flagged :data:`SOURCE_LABELS` already is that label map (the inferer streamed its rows through
    :meth:`streamer`) and is passed through with the source affine.

    Args:
        keys: prediction keys (after ``Activationsd(softmax=True)``, or logits with ``softmax``).
        reference_key: the preprocessed image key.
        softmax: the prediction holds logits; the softmax is taken slab by slab on the way (no second
            C × grid tensor: with many classes, ``Activationsd`` would double the peak memory).
        slab: source slices interpolated at once.
        probabilities_dir: if given, also write the interpolated probabilities (float16,
            ``(C, X, Y, Z)`` on the source grid, with the affine) as
            ``<probabilities_dir>/<case id>_probabilities.npz`` (atomically).
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        *,
        reference_key: str = "image",
        slab: int = 16,
        probabilities_dir: str | os.PathLike[str] | None = None,
        softmax: bool = False,
    ) -> None:
        super().__init__(keys)
        self.reference_key, self.slab, self.softmax = reference_key, int(slab), bool(softmax)
        self.probabilities_dir = Path(probabilities_dir) if probabilities_dir else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.reference_key]
        meta = getattr(reference, "meta", {})
        missing = [k for k in ("original_affine", "spatial_shape") if k not in meta]
        if missing or not hasattr(reference, "affine"):
            raise InputError(
                f"{self.reference_key!r}: expected a MetaTensor with the source grid in meta (original_affine, spatial_shape), "
                f"found {'no ' + ', '.join(missing) if missing else 'no affine'}",
                hint="load images with voxpipe.transforms.io.LoadVolumed or MONAI's LoadImaged",
            )
        source_affine = _matrix(meta["original_affine"])
        shape = [int(v) for v in np.asarray(meta["spatial_shape"]).ravel()]
        for key in self.key_iterator(d):
            pred = d[key]
            if bool(getattr(pred, "meta", {}).get(SOURCE_LABELS, False)):  # streamed by the inferer
                if tuple(pred.shape) != (1, *shape):
                    raise InputError(
                        f"{key!r}: expected labels (1, {', '.join(map(str, shape))}) on the source grid from the "
                        f"streaming inferer, found shape {tuple(pred.shape)}"
                    )
                d[key] = MetaTensor(
                    torch.as_tensor(pred).as_subclass(torch.Tensor),
                    affine=torch.as_tensor(source_affine),
                    meta={"filename_or_obj": meta.get("filename_or_obj")},
                )
                continue
            labels, probabilities = resample_argmax(
                torch.as_tensor(pred),
                source_affine=source_affine,
                network_affine=_matrix(reference.affine),
                source_shape=shape,
                slab=self.slab,
                keep_probabilities=self.probabilities_dir is not None,
                softmax=self.softmax,
            )
            if probabilities is not None:
                self._save_probabilities(
                    probabilities,
                    source_affine,
                    str(meta.get("filename_or_obj", "case")),
                    meta.get("case_id"),
                )
            d[key] = MetaTensor(
                labels[None],
                affine=torch.as_tensor(source_affine),
                meta={"filename_or_obj": meta.get("filename_or_obj")},
            )
        return d

    def streamer(self, inputs: Any) -> SourceArgmax | None:
        """A :class:`SourceArgmax` that turns the inferer's rows of logits for ``inputs`` (the batched
        preprocessed image, ``(1, C, X, Y, Z)``) into this transform's labels as they are stitched; None
        when this transform must see the whole prediction (probabilities are saved, the grids are not
        axis-aligned, the source geometry is not in ``inputs``' metadata)."""
        meta = getattr(inputs, "meta", None)
        if (
            self.probabilities_dir is not None
            or meta is None
            or not hasattr(inputs, "affine")
            or any(k not in meta for k in ("original_affine", "spatial_shape"))
            or inputs.ndim != 5
            or inputs.shape[0] != 1
        ):
            return None
        source_affine = _matrix(meta["original_affine"]).reshape(-1, 4, 4)[0]
        network_affine = _matrix(inputs.affine).reshape(-1, 4, 4)[0]
        if not separable(np.linalg.inv(network_affine) @ source_affine):
            return None
        return SourceArgmax(
            classes=None,
            source_affine=source_affine,
            network_affine=network_affine,
            source_shape=[int(v) for v in np.asarray(meta["spatial_shape"]).ravel()[:3]],
            network_shape=inputs.shape[2:],
            softmax=self.softmax,
            slab=self.slab,
        )

    def _save_probabilities(
        self, probabilities: torch.Tensor, affine: np.ndarray, source: str, case: str | None
    ) -> None:
        from voxpipe.transforms.files import atomic_path
        from voxpipe.transforms.io import case_id

        assert self.probabilities_dir is not None
        path = self.probabilities_dir / f"{case or case_id(source)}_probabilities.npz"
        with atomic_path(path) as tmp:  # the temporary name ends in .npz, so numpy adds no suffix
            np.savez_compressed(tmp, probabilities=probabilities.numpy(), affine=affine)
        logger.info("wrote %s", path)
