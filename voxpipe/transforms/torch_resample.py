"""nnU-Net's resampling (SciPy's ``zoom`` as skimage's ``resize`` calls it) in torch, on any device.

:mod:`voxpipe.transforms.nnunet_resample` reproduces nnU-Net's resampling with SciPy, on the CPU:
third-order splines for the image, first order for the logits, a coarse axis of anisotropic data
resampled on its own. On a 512 × 512 × 600 CT the third-order zoom alone takes tens of seconds on a
CPU core. This module computes the same values with torch, so a case bound for a GPU is resampled
there: SciPy's B-spline prefilter (gain, causal and anticausal passes with SciPy's boundary
initialisation, after SciPy's 12-voxel edge padding for ``mode="nearest"``), its coordinates
(``grid_mode``: voxel areas; clamped to the input as ``mode="nearest"`` does), its spline weights,
and skimage's clip to the input's range. The tensor-product spline is evaluated one axis at a time
(the filter and the interpolation along one axis commute with those along the others), so no
intermediate is larger than the bigger of input and output.

Values equal SciPy's to ~1e-12 relative in float64 (the tests hold them to 1e-6 on generated shapes,
orders and anisotropic plans); on MPS, which has no float64, in float32.

Why our own: neither torch nor MONAI has SciPy's spline prefilter; ``torch.nn.functional.interpolate``
computes other coordinates (and its cubic is Keys', not a B-spline).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from voxpipe.transforms.nnunet_resample import SPLINE_PAD, separate_axis

_POLES = {2: [math.sqrt(8.0) - 3.0], 3: [math.sqrt(3.0) - 2.0]}


def _float(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _prefilter(volume: torch.Tensor, axis: int, order: int) -> torch.Tensor:
    """SciPy's ``spline_filter1d(mode="nearest")`` of the edge-padded ``volume`` along ``axis``
    (``_init_causal_reflect`` / ``_init_anticausal_reflect``, the gain first)."""
    c = volume.movedim(axis, 0).clone()
    n = c.shape[0]
    if n == 1:
        return c.movedim(0, axis)
    poles = _POLES[order]
    gain = 1.0
    for z in poles:
        gain *= (1.0 - z) * (1.0 - 1.0 / z)
    c *= gain
    for z in poles:
        z_n = z**n
        powers = torch.tensor([z**i for i in range(1, n)], dtype=c.dtype, device=c.device)
        powers = powers.view(-1, *([1] * (c.ndim - 1)))
        head = c[0] + z_n * c[n - 1] + (powers * (c[1:] + z_n * c.flip(0)[1:])).sum(dim=0)
        c[0] = head * (z / (1.0 - z_n * z_n)) + c[0]
        for i in range(1, n):
            c[i] += z * c[i - 1]
        c[n - 1] *= z / (z - 1.0)
        for i in range(n - 2, -1, -1):
            c[i] = z * (c[i + 1] - c[i])
    return c.movedim(0, axis)


def _taps(coordinates: torch.Tensor, size: int, order: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap, the input indices (clamped: ``mode="nearest"``) and SciPy's weights for order 0 or 1:
    ``1 - x`` and the rest of 1, as ``get_spline_interpolation_weights`` leaves the last weight."""
    if order == 0:
        start = torch.floor(coordinates + 0.5).long()
        return [(start.clamp(0, size - 1), torch.ones_like(coordinates))]
    start = torch.floor(coordinates)
    first = 1.0 - (coordinates - start)
    start = start.long()
    return [(start.clamp(0, size - 1), first), ((start + 1).clamp(0, size - 1), 1.0 - first)]


def _grid(out_rows: Sequence[int], size: int, out_size: int) -> torch.Tensor:
    """SciPy's ``grid_mode`` coordinates of output indices ``out_rows`` (not clamped: the taps are)."""
    index = torch.as_tensor(out_rows, dtype=torch.float64)
    return (index + 0.5) * (size / out_size) - 0.5


def _spline_taps(x: torch.Tensor, order: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap of a spline of ``order`` (2 or 3, SciPy's ``get_spline_interpolation_weights``), the
    indices (clamped to ``size``) and the weights at coordinates ``x``."""
    start = torch.floor(x) if order & 1 else torch.floor(x + 0.5)
    t = x - start
    if order == 3:
        y = 1.0 - t
        w0 = y * y * y / 6.0
        w3 = t * t * t / 6.0
        w1 = 2.0 / 3.0 + 0.5 * t * t * (t - 2.0)
        weights = [w0, w1, 1.0 - w0 - w1 - w3, w3]
    elif order == 2:
        w1 = 0.75 - t * t
        w0 = 0.5 * (0.5 - t) ** 2
        weights = [w0, w1, 1.0 - w0 - w1]
    else:
        raise ValueError(f"spline order {order}: expected 0 to 3")
    first = start.long() - 1
    return [((first + k).clamp(0, size - 1), w) for k, w in enumerate(weights)]


def _interpolate(volume: torch.Tensor, axis: int, size: int, order: int) -> torch.Tensor:
    """``volume`` resized along ``axis`` to ``size`` as SciPy's zoom does (``mode="nearest"``,
    ``grid_mode=True``), the prefilter included for orders above 1."""
    n = volume.shape[axis]
    x = _grid(list(range(size)), n, size)
    if order <= 1:  # the exact kernels' rule: coordinates as they are, taps clamped to the edge
        taps = _taps(x, n, order)
    else:  # SciPy pads by 12 edge voxels first: coordinates beyond the edge read the padded spline
        pad = SPLINE_PAD
        index = [slice(None)] * volume.ndim
        edges = []
        for part in (slice(0, 1), slice(n - 1, n)):
            index[axis] = part
            edges.append(volume[tuple(index)])
        volume = torch.cat([_repeat(edges[0], axis, pad), volume, _repeat(edges[1], axis, pad)], dim=axis)
        volume = _prefilter(volume, axis, order)
        taps = _spline_taps(x + pad, order, volume.shape[axis])
    view = [1] * volume.ndim
    view[axis] = size
    out: torch.Tensor | None = None
    for index, weight in taps:
        values = volume.index_select(axis, index.to(volume.device))
        term = values * weight.to(device=volume.device, dtype=volume.dtype).view(view) if order else values
        out = term if out is None else out + term
    assert out is not None
    return out


def _repeat(edge: torch.Tensor, axis: int, times: int) -> torch.Tensor:
    repeats = [1] * edge.ndim
    repeats[axis] = times
    return edge.repeat(*repeats)


def zoom(volume: torch.Tensor, shape: Sequence[int], order: int) -> torch.Tensor:
    """``voxpipe.transforms.nnunet_resample.resize`` (skimage's ``resize`` as nnU-Net calls it) in torch:
    ``volume`` resized to ``shape`` with splines of ``order``, edges repeated, clipped to its range
    for orders above 0 (each axis whose size changes, one after the other)."""
    work = volume.to(_float(volume.device))
    low, high = work.min(), work.max()
    for axis in [a for a in range(work.ndim) if work.shape[a] != int(shape[a])]:
        work = _interpolate(work, axis, int(shape[axis]), order)
    if order > 0:
        work = work.clamp(low, high)
    return work


def resample(
    data: torch.Tensor,
    shape: Sequence[int],
    current: Sequence[float],
    new: Sequence[float],
    *,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
) -> torch.Tensor:
    """:func:`voxpipe.transforms.nnunet_resample.resample` (nnU-Net's ``resample_data_or_seg_to_shape``
    for images and probabilities) in torch, on ``data``'s device: ``(C, *spatial)`` to ``shape``,
    float64 (float32 on MPS). The coarse axis of anisotropic data: in-plane with ``order`` (each plane
    clipped to its own range, as nnU-Net resizes plane by plane), then along the axis with ``order_z``."""
    shape = [int(s) for s in shape]
    if list(data.shape[1:]) == shape:
        return data
    axis = separate_axis(current, new, force_separate_z)
    out = []
    for channel in data:
        if axis is None:
            out.append(zoom(channel, shape, order))
            continue
        in_plane = [a for a in range(channel.ndim) if a != axis]
        planes = channel.to(_float(channel.device))
        if any(planes.shape[a] != shape[a] for a in in_plane):
            # skimage clips each plane to its own range: per-plane minima and maxima
            reduce = tuple(in_plane)
            low, high = planes.amin(dim=reduce, keepdim=True), planes.amax(dim=reduce, keepdim=True)
            for a in in_plane:
                if planes.shape[a] != shape[a]:
                    planes = _interpolate(planes, a, shape[a], order)
            if order > 0:
                planes = torch.maximum(torch.minimum(planes, high), low)
        if planes.shape[axis] != shape[axis]:
            planes = _interpolate(planes, axis, shape[axis], order_z)  # map_coordinates, mode nearest
        out.append(planes)
    return torch.stack(out)


def zoom_exact(
    rows: torch.Tensor,
    in_shape: Sequence[int],
    shape: Sequence[int],
    out_rows: tuple[int, int],
    *,
    first: int = 0,
    order: int = 1,
) -> torch.Tensor:
    """Output rows ``[a, b)`` of SciPy's ``zoom(order=0 or 1, mode="nearest", grid_mode=True)`` of an
    array of ``in_shape``, of which ``rows`` holds rows ``[first, first + len)`` (those the output rows
    read), bit for bit: the taps in SciPy's order (C order over the 2^N corners), each the value times
    the axes' weights in axis order, summed from 0 in float64, as ``NI_ZoomShift`` does."""
    a, b = out_rows
    device = rows.device
    values = rows.to(torch.float64)
    per_axis = []
    for axis, (size, out_size) in enumerate(zip(in_shape, shape, strict=True)):
        wanted = range(a, b) if axis == 0 else range(out_size)
        taps = _taps(_grid(list(wanted), int(size), int(out_size)), int(size), order)
        if axis == 0:
            taps = [(index - first, weight) for index, weight in taps]
        per_axis.append([(index.to(device), weight.to(device)) for index, weight in taps])
    ndim = values.ndim
    total = torch.zeros([b - a, *[int(s) for s in shape[1:]]], dtype=torch.float64, device=device)
    for corner in itertools.product(*[range(len(t)) for t in per_axis]):
        term = values
        for axis, tap in enumerate(corner):
            term = term.index_select(axis, per_axis[axis][tap][0])
        for axis, tap in enumerate(corner):
            view = [1] * ndim
            view[axis] = -1
            if order > 0:
                term = term * per_axis[axis][tap][1].view(view)
        total = total + term
    return total


def to_half(values: torch.Tensor) -> torch.Tensor:
    """float64 → float16 rounded once, to nearest even, as NumPy's ``astype(np.float16)`` rounds.

    torch goes through float32 (rounding twice: a value just off a float16 midpoint can land on it
    and then round the other way). Rounding to float32 *to odd* first keeps the information the
    second rounding needs (float32 has 13 more mantissa bits than float16), so the result is NumPy's."""
    wide = values.to(torch.float64)
    narrow = wide.to(torch.float32)
    inexact = narrow.to(torch.float64) != wide
    bits = narrow.view(torch.int32).clone()
    away = inexact & (narrow.to(torch.float64).abs() > wide.abs())  # rounded away from zero: truncate
    bits = torch.where(away, bits - 1, bits)
    bits = torch.where(inexact, bits | 1, bits)  # round to odd
    return bits.view(torch.float32).to(torch.float16)


def separate_rows_exact(
    rows: torch.Tensor,
    in_rows: int,
    shape: Sequence[int],
    out_rows: tuple[int, int],
    *,
    first: int = 0,
    order: int = 1,
    order_z: int = 0,
) -> torch.Tensor:
    """Output rows ``[a, b)`` of nnU-Net's separate-axis resampling along axis 0 (each plane resized
    in-plane with ``order`` and clipped to its range, then ``map_coordinates`` along axis 0 with
    ``order_z``), from input rows ``[first, first + len)`` of ``in_rows``, bit for bit as SciPy
    computes it (order and order_z 0 or 1)."""
    a, b = out_rows
    n = rows.shape[0]
    planes = zoom_exact(rows, [n, *rows.shape[1:]], [n, *shape[1:]], (0, n), order=order)
    if order > 0:
        wide = rows.to(torch.float64)
        low = wide.amin(dim=tuple(range(1, wide.ndim)), keepdim=True)
        high = wide.amax(dim=tuple(range(1, wide.ndim)), keepdim=True)
        planes = torch.maximum(torch.minimum(planes, high), low)
    if in_rows == shape[0]:
        return planes[a - first : b - first]
    view = [-1] + [1] * (planes.ndim - 1)
    total = torch.zeros([b - a, *planes.shape[1:]], dtype=torch.float64, device=rows.device)
    for index, weight in _taps(_grid(list(range(a, b)), in_rows, int(shape[0])), in_rows, order_z):
        term = planes.index_select(0, (index - first).to(rows.device))
        if order_z > 0:
            term = term * weight.to(rows.device).view(view)
        total = total + term
    return total


__all__ = ["SPLINE_PAD", "resample", "separate_rows_exact", "to_half", "zoom", "zoom_exact"]
