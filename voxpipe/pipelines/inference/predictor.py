"""The one streamed sliding window of voxpipe's inference, for MONAI bundles and nnU-Net folders alike.

Both kinds of model are run the same way: windows visited in order of their first-axis start, each
window's output weighted and added into a band of rows one window deep, and, once no later window
reaches a row, that row divided by its summed weights and handed on (to the row-streamed export,
:class:`voxpipe.transforms.rows.RowStream`), so the C × grid of logits never exists. Windows that
hold no body voxel are not run (:class:`WindowSkipper`, one rule for both).

What each kind brings is its arithmetic, not a copy of this loop:

* MONAI (:func:`voxpipe.pipelines.inference.sliding_window.stream_sliding_window`): MONAI's window
  grid, padding, importance map and division, every window's output in float32; a skipped window
  counts as certain background.
* nnU-Net (:class:`voxpipe.pipelines.inference.nnunet.model.NnUNetModel`): nnU-Net's window starts,
  its float16 Gaussian, one float16 band per fold summed and divided as its predictor does, the
  window's output kept in float16 where the network gives float16 (CUDA autocast, as nnU-Net on a
  GPU); a skipped window adds nothing and rows no window reached are background.

Why our own: MONAI's ``sliding_window_inference`` and nnU-Net's predictor both return the whole
blended C × grid output (with 117 classes on a 512 × 512 × 600 CT, tens of GB); neither hands on
finished rows. Any device: the windows run where the network is, the band is held on ``device``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)

EMIT_ROWS = 8  # finished rows divided and handed on at once

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(device: torch.device, precision: str) -> str:
    """``"auto"`` → fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; other values unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and cpu_bf16_supported() else "fp32"


def autocast(
    device: torch.device, precision: str, *, cpu_fp16: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` on ``device`` (none for fp32).

    Raises:
        InputError: fp16 asked for on the CPU (slow there, and no user's choice), unless ``cpu_fp16``:
            the tests run the CUDA arithmetic so.
    """
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16 and not cpu_fp16:
        raise InputError("precision 'fp16' needs CUDA; on the CPU use 'bf16' or 'fp32'")
    return torch.autocast(device.type, dtype=dtype)


class NotStreamable(Exception):
    """The network's output does not allow a streamed stitch (another size than its window, or a tuple)."""


def shift_rows(band: torch.Tensor, n: int) -> None:
    """Move rows ``[n, depth)`` of a (C, depth, ...) band to the front and zero the rest, in place:
    copied front to back in pieces no longer than ``n``, so no piece overlaps its source and no
    band-sized copy is made (a band of 118 classes is ~2 GB)."""
    depth = band.shape[1]
    for start in range(0, depth - n, n):
        size = min(n, depth - n - start)
        band[:, start : start + size].copy_(band[:, start + n : start + n + size])
    band[:, max(depth - n, 0) :] = 0


class WindowSkipper:
    """Which windows hold no body voxel: a summed-area table of a body mask, one O(1) test a window.

    Args:
        mask: a bool mask on the padded grid the windows are laid on (any number of axes).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        table = mask.to(torch.int32).cpu()
        table = torch.nn.functional.pad(table, [1, 0] * table.ndim)
        for axis in range(table.ndim):
            table = table.cumsum(axis, dtype=torch.int32)
        self.table = table
        self.skipped = 0

    def empty(self, region: Sequence[slice]) -> bool:
        """Whether the window ``region`` (slices of the padded grid) holds no body voxel; counted."""
        total = 0
        ndim = self.table.ndim
        for corner in range(1 << ndim):  # inclusion-exclusion over the box's corners
            index, sign = [], 1
            for axis in range(ndim):
                if corner >> axis & 1:
                    index.append(region[axis].start)
                    sign = -sign
                else:
                    index.append(region[axis].stop)
            total += sign * int(self.table[tuple(index)])
        self.skipped += int(total == 0)
        return total == 0


@dataclass
class WindowCounts:
    """Windows run and skipped by one call of :func:`stream_windows`."""

    run: int = 0
    skipped: int = 0


def stream_windows(
    padded: torch.Tensor,
    windows: Sequence[tuple[slice, ...]],
    predict: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    weight: torch.Tensor,
    inner: Sequence[slice],
    band_dtype: torch.dtype,
    device: torch.device | str | None = None,
    networks: int = 1,
    batch: int = 1,
    as_weighted: Callable[[torch.Tensor], torch.Tensor] = lambda values: values.float(),
    skip: WindowSkipper | None = None,
    skipped_logits: Callable[[int], torch.Tensor] | None = None,
    unreached: Callable[[int], torch.Tensor] | None = None,
    flat: bool = False,
    counts: WindowCounts | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Blend ``windows`` over ``padded`` and yield finished rows: ``(first_row, values)`` blocks of
    the image inside the padding (``inner``), values ``(C, n, *rest)`` in ``band_dtype``, in order,
    each row once.

    Args:
        padded: ``(C_in, *spatial)``, the image with the padding the windows assume.
        windows: the windows' regions on ``padded``, visited in this order; their first-axis starts
            never decrease (MONAI's and nnU-Net's grids both are so).
        predict: ``(N, C_in, *window)`` windows and a network index (a fold) → ``(N, C, *window)``.
        weight: the window's importance, ``window``-shaped; its type is the weights' type.
        inner: the image's region within ``padded``: only its rows and columns are handed on.
        band_dtype: the type the weighted outputs are summed in.
        device: where the bands are held (default ``padded``'s device).
        networks: how many networks (folds) run on every window; each has its own band, and a
            row's values are the mean of the folds' divided rows.
        batch: windows run together.
        as_weighted: a window's output in the type it is weighted in (MONAI: float32).
        skip: windows without body are not run.
        skipped_logits: ``classes`` → ``(C,)`` values a skipped window stands for (weighted and
            counted like a run window); None: a skipped window adds nothing.
        unreached: ``classes`` → ``(C,)`` values of voxels that no window reached (with
            ``skipped_logits`` None).
        flat: windows are one row deep and the networks take them without that axis (2D).
        counts: filled with the windows run and skipped.
        progress: a progress bar over the windows.

    Raises:
        NotStreamable: ``predict`` returned something else than one tensor of the windows' size.
    """
    device = torch.device(device) if device is not None else padded.device
    counts = counts if counts is not None else WindowCounts()
    batches = [list(windows[i : i + batch]) for i in range(0, len(windows), batch)]
    if not batches:
        return
    depth = max(max(w[0].stop for w in b) - b[0][0].start for b in batches)
    plane = list(padded.shape[2:])
    weight = weight[None] if flat else weight
    stitched_weight = weight.to(device)
    bands: list[torch.Tensor] = []
    count = torch.zeros([depth, *plane], dtype=band_dtype, device=device)
    skipped_values: torch.Tensor | None = None
    base = 0  # the bands' first row, on the padded grid
    rest = tuple(inner[1:])
    bar = _progress(len(windows)) if progress else None

    def finish(upto: int) -> Iterator[tuple[int, torch.Tensor]]:
        nonlocal base
        n = upto - base
        if n <= 0:
            return
        first, last = max(base, inner[0].start), min(upto, inner[0].stop)
        for start in range(first, last, EMIT_ROWS):
            rows = slice(start - base, min(start + EMIT_ROWS, last) - base)
            weights = count[(rows, *rest)]
            total: torch.Tensor | None = None
            for band in bands:
                part = torch.div(band[(slice(None), rows, *rest)], weights)
                total = part if total is None else total.add_(part)
            assert total is not None
            if len(bands) > 1:
                total /= len(bands)
            if unreached is not None:
                empty = weights == 0
                if bool(empty.any()):
                    total[:, empty] = unreached(total.shape[0]).to(total)[:, None]
            yield start - inner[0].start, total
        for band in [*bands, count[None]]:
            shift_rows(band, n)
        base = upto

    for group in batches:
        yield from finish(group[0][0].start)
        ran = [skip is None or not skip.empty(w) for w in group]
        run = [w for w, r in zip(group, ran, strict=True) if r]
        counts.skipped += len(group) - len(run)
        data = torch.stack([_window(padded, w, flat) for w in (run or group[:1])])
        for fold in range(networks):
            out = predict(data, fold) if run or not bands else None  # a probe tells the classes
            if out is not None and (
                not isinstance(out, torch.Tensor)
                or out.shape[0] != len(data)
                or tuple(out.shape[2:]) != tuple(data.shape[2:])
            ):
                raise NotStreamable(
                    f"the network's output is {type(out).__name__} {tuple(getattr(out, 'shape', ()))}, "
                    f"not one tensor of the window's size {tuple(data.shape[2:])}"
                )
            if not bands:
                assert out is not None
                bands = [
                    torch.zeros([out.shape[1], depth, *plane], dtype=band_dtype, device=device)
                    for _ in range(networks)
                ]
            if out is not None and not run:  # the probe: its window stays skipped
                out = None
            if skipped_logits is not None and skipped_values is None and len(run) < len(group):
                fill = skipped_logits(bands[0].shape[0]).float()
                skipped_values = (fill.view(-1, *([1] * weight.ndim)) * weight.to(fill.device)).to(device)
            outputs = iter(out[:, :, None] if flat and out is not None else (out if out is not None else []))
            for window, r in zip(group, ran, strict=True):  # in window order: the sums' rounding
                if r:
                    values = as_weighted(next(outputs))  # float32, or float16 as the network gave it
                    values.mul_(weight.to(values.device))  # in place: no second C x window array
                    _add(bands[fold], window, base, values.to(device))
                elif skipped_values is not None:
                    _add(bands[fold], window, base, skipped_values)
            del out, outputs
        counts.run += len(run)
        for window, r in zip(group, ran, strict=True):
            if r or skipped_logits is not None:
                _add(count[None], window, base, stitched_weight)
        if bar is not None:
            bar.update(len(group))
    yield from finish(int(padded.shape[1]))
    if bar is not None:
        bar.close()


def _window(padded: torch.Tensor, region: tuple[slice, ...], flat: bool) -> torch.Tensor:
    window = padded[(slice(None), *region)]
    return (window[:, 0] if flat else window).contiguous()


def _add(band: torch.Tensor, region: tuple[slice, ...], base: int, values: torch.Tensor) -> None:
    rows = slice(region[0].start - base, region[0].stop - base)
    band[(slice(None), rows, *region[1:])] += values


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        return None
    return tqdm(total=total, desc="windows", leave=False)


__all__ = [
    "EMIT_ROWS",
    "PRECISIONS",
    "NotStreamable",
    "WindowCounts",
    "WindowSkipper",
    "autocast",
    "cpu_bf16_supported",
    "resolve_precision",
    "shift_rows",
    "stream_windows",
]
