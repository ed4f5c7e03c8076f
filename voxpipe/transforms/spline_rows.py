"""SciPy's spline zoom of a 3D image computed a slab of rows at a time: SciPy's values bit for bit,
holding a few rows of its float64 spline coefficients instead of all of them.

``ndimage.zoom(order=2|3, mode="nearest", grid_mode=True)`` (what skimage's ``resize`` runs for
nnU-Net) pads the image by 12 edge voxels, filters a float64 copy along every axis with a recursive
filter (each value depends on its whole line) and interpolates. For a 512 × 512 × 600 CT those
coefficients are 1.4 GB: the peak of nnU-Net's preprocessing, beside the float32 image it filters.

Here the filter along the first axis runs plane by plane (the recursion over rows, vectorised over
the plane, with SciPy's boundary rule and order of operations), keeping every ``rows``-th plane of
its forward pass, then backwards a slab at a time from those planes; a slab's other two axes are
SciPy's own filter (their lines lie in the slab); SciPy's zoom kernel then interpolates the output
rows that the slabs held so far cover, reading a full-height grid of which only those rows are
resident (the rows no output needs any more are handed back with ``madvise``). The image's rows are
read, and ``transform`` applied to them, as they are needed, so an elementwise normalisation never
holds a float32 copy of the image either.

Orders 4 and 5 filter with two poles (the second along whole lines of the first's output): not here.

Why our own: SciPy filters whole arrays only. :func:`available` checks once per process that this
reproduces SciPy's zoom bit for bit on a probe (a platform whose SciPy contracts multiply-adds, or a
SciPy without its zoom kernel, falls back to the whole array); the tests check generated cases.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

PAD = 12  # edge voxels SciPy's zoom pads before its spline filter (mode="nearest")
NEAREST = 0  # scipy.ndimage's code for mode="nearest"
#: the filter's pole per order, the decimal literals of SciPy's ni_splines.c (so the same doubles)
POLES = {2: -0.171572875253809902396622551580603843, 3: -0.267949192431122706472553658494127633}

_AVAILABLE: dict[int, bool] = {}


def zoom(
    image: np.ndarray,
    shape: Sequence[int],
    order: int,
    *,
    dtype: Any = np.float64,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    rows: int = 32,
    held: list[int] | None = None,
) -> np.ndarray:
    """``resize(transform(image), shape, order)`` as :func:`voxpipe.transforms.nnunet_resample.resize`
    computes it (SciPy's zoom, clipped to the image's range), in ``dtype``.

    Args:
        image: (Z, Y, X), any real dtype (read as double, as SciPy reads it).
        shape: the output's (Z', Y', X').
        order: 2 or 3 (:data:`POLES`).
        transform: applied to slabs of rows of ``image``; it must be elementwise (its value at a voxel
            depends on that voxel only), e.g. nnU-Net's CT normalisation.
        rows: the slab height (planes of the forward pass kept: one per ``rows``).
        held: if given, the most coefficient rows resident at once is appended to it.
    """
    if order not in POLES or image.ndim != 3:
        raise ValueError(
            f"spline rows: orders {sorted(POLES)} of 3D images, found order {order}, {image.ndim}D"
        )
    from voxpipe.transforms.nnunet_resample import _zoom_shift

    kernel = _zoom_shift()
    if kernel is None:
        raise RuntimeError("SciPy's zoom kernel (scipy.ndimage._nd_image.zoom_shift) is missing")
    if [int(s) for s in shape] == list(image.shape):  # SciPy's zoom returns the image itself
        return np.asarray(transform(image) if transform is not None else image).astype(dtype)
    source = _Rows(image, transform)
    n = image.shape[0] + 2 * PAD
    plane = tuple(s + 2 * PAD for s in image.shape[1:])
    shape = [int(s) for s in shape]
    factors = np.ascontiguousarray([i / o if o else 1.0 for i, o in zip(image.shape, shape, strict=True)])
    out = np.empty(shape, dtype=dtype)
    needed = _needed_rows(shape[0], float(factors[0]), order, n)

    z = POLES[order]
    causal, last = _forward(source, n, z, order, max(1, int(rows)))
    grid = _Grid(n, plane)
    try:
        top, most = shape[0], 0  # output rows [top, Z') are written
        after = last  # the anticausal value of the row above the slab (the last slab: c[n - 1])
        for start in range(((n - 1) // rows) * rows, -1, -rows):
            end = min(start + rows, n)
            slab = grid.array[start:end]  # filtered in place, in the grid
            slab[0] = causal.pop(start)
            block = source.scaled(start + 1, end, order)
            for k in range(1, end - start):  # the forward pass again from its kept plane
                np.multiply(slab[k - 1], z, out=slab[k])
                slab[k] += block[k - 1]
            del block
            if end == n:  # SciPy's anticausal start (reflect, as mode "nearest" filters)
                slab[-1] = after * (z / (z - 1))
            else:
                slab[-1] = z * (after - slab[-1])
            for k in range(end - start - 2, -1, -1):
                slab[k] = z * (slab[k + 1] - slab[k])
            after = slab[0].copy()
            for axis in (1, 2):  # these lines lie within the slab: SciPy's own filter
                ndimage.spline_filter1d(slab, order, axis=axis, output=slab, mode="nearest")
            del slab
            low = top
            while low > 0 and needed[low - 1][0] >= start:
                low -= 1
            if low < top:
                shift = np.array([float(low), 0.0, 0.0])
                kernel(grid.array, factors, shift, out[low:top], order, NEAREST, 0.0, PAD, True)
                top = low
            most = max(most, max(grid.released, end) - start)
            grid.release(needed[top - 1][1] + 1 if top else 0)  # no output row left reads above
        assert top == 0, "every output row is interpolated"
        if held is not None:
            held.append(most)
    finally:
        grid.close()
    if source.low is not None:  # skimage clips to the input's range (splines overshoot)
        np.clip(out, source.low, source.high, out=out)
    return out


def available(order: int) -> bool:
    """Whether :func:`zoom` gives ``ndimage.zoom``'s values bit for bit here (probed once per order)."""
    if order not in POLES:
        return False
    if order not in _AVAILABLE:
        from voxpipe.transforms.nnunet_resample import _zoom_shift

        ok = _zoom_shift() is not None and hasattr(mmap, "MADV_DONTNEED")
        if ok:
            probe = np.random.default_rng(order).normal(size=(9, 7, 8)) * 100
            for shape in ((13, 5, 8), (4, 11, 3)):
                want = ndimage.zoom(
                    probe,
                    [o / i for o, i in zip(shape, probe.shape, strict=True)],
                    order=order,
                    mode="nearest",
                    grid_mode=True,
                )
                np.clip(want, probe.min(), probe.max(), out=want)
                got = zoom(probe, shape, order, rows=3)
                ok = ok and want.shape == got.shape and bool(np.array_equal(want, got))
        _AVAILABLE[order] = ok
    return _AVAILABLE[order]


class _Rows:
    """Rows of the padded image as SciPy filters it: ``image`` transformed, edges repeated
    (``np.pad(mode="edge")``, :data:`PAD` each side), float64; the range of the transformed image."""

    def __init__(self, image: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.image, self.transform = image, transform
        self.low: Any = None
        self.high: Any = None

    def __call__(self, a: int, b: int) -> np.ndarray:
        """Padded rows ``[a, b)``, (b − a, Y + 24, X + 24) float64."""
        size = self.image.shape[0]
        index = np.clip(np.arange(a, b) - PAD, 0, size - 1)
        if not len(index):
            return np.empty((0, *(s + 2 * PAD for s in self.image.shape[1:])))
        lo, hi = int(index.min()), int(index.max()) + 1
        values = self.image[lo:hi]
        if self.transform is not None:
            values = self.transform(values)
        values = np.asarray(values)
        low, high = values.min(), values.max()
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        return np.pad(values.astype(np.float64)[index - lo], ((0, 0), (PAD, PAD), (PAD, PAD)), mode="edge")

    def scaled(self, a: int, b: int, order: int) -> np.ndarray:
        """Rows ``[a, b)`` times the filter's gain (SciPy's first step)."""
        block = self(a, b)
        block *= _gain(POLES[order])
        return block


def _gain(z: float) -> float:
    return 1.0 * ((1.0 - z) * (1.0 - 1.0 / z))


def _forward(
    source: _Rows, n: int, z: float, order: int, rows: int
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The causal pass along the first axis: SciPy's start value (mode "nearest" filters with the
    reflect rule: a sum over the whole line from both ends), then ``c[i] += z * c[i - 1]``.
    Returns the planes ``c[k · rows]`` and ``c[n − 1]``."""
    z_n = z**n  # C's pow, as SciPy's
    first = source.scaled(0, 1, order)[0]
    total = first + z_n * source.scaled(n - 1, n, order)[0]
    z_i = z
    step = 16
    for a in range(1, n, step):
        b = min(a + step, n)
        ahead = source.scaled(a, b, order)
        behind = source.scaled(n - b, n - a, order)[::-1]  # rows n − 1 − i for i in [a, b)
        for k in range(b - a):
            total += z_i * (ahead[k] + z_n * behind[k])
            z_i *= z
    causal = {0: first + total * z / (1 - z_n * z_n)}
    previous = causal[0]
    for a in range(1, n, rows):
        block = source.scaled(a, min(a + rows, n), order)
        for k in range(len(block)):
            block[k] += z * previous
            previous = block[k]
            if (a + k) % rows == 0:
                causal[a + k] = previous.copy()
        previous = previous.copy()
        del block
    return causal, previous


def _needed_rows(size: int, factor: float, order: int, n: int) -> list[tuple[int, int]]:
    """Per output row, the first and last padded input row SciPy's zoom kernel reads (its own
    coordinate arithmetic: ``(row + 0.5) · factor − 0.5 + pad``, ``order + 1`` rows from its start)."""
    needed = []
    for row in range(size):
        cc = ((float(row) + 0.5) * factor - 0.5) + float(PAD)
        start = math.floor(cc) - order // 2 if order & 1 else math.floor(cc + 0.5) - order // 2
        needed.append((max(0, min(n - 1, start)), max(0, min(n - 1, start + order))))
    return needed


class _Grid:
    """The full-height coefficient grid (padded shape, float64) in an anonymous mapping: rows not
    written are never resident, rows handed back (:meth:`release`) stop being resident."""

    def __init__(self, n: int, plane: Sequence[int]) -> None:
        self.row_bytes = int(np.prod(plane)) * 8
        self.memory = mmap.mmap(-1, max(1, n * self.row_bytes))
        self.array = np.frombuffer(self.memory, dtype=np.float64, count=n * int(np.prod(plane))).reshape(
            n, *plane
        )
        self.released = n  # rows [released, n) are handed back (written again only by a slab above it)

    def release(self, row: int) -> None:
        """Hand back the rows from ``row`` up (whole pages only; rows of a slab written above an
        earlier release included)."""
        page = mmap.PAGESIZE
        first = -(-row * self.row_bytes // page) * page
        last = len(self.memory) // page * page
        if last > first:
            self.memory.madvise(mmap.MADV_DONTNEED, first, last - first)
        self.released = min(self.released, row)

    def close(self) -> None:
        del self.array
        try:
            self.memory.close()
        except BufferError:  # a view still alive (an error mid-slab): unmapped with the last view
            pass


__all__ = ["POLES", "available", "zoom"]
