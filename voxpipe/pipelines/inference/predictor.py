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
from voxpipe.runtime import cpu_bf16_supported

logger = logging.getLogger(__name__)

EMIT_ROWS = 8  # finished rows divided and handed on at once
ADD_CLASSES = 8  # classes added into a band of another type at once (see _add)
HEAD_CLASSES = 16  # classes a HeadChunks head makes at once

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


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


class HeadChunks:
    """A batch of windows' output not yet made: the network's last 1 × 1 convolution (``head``) over
    its last features, run :data:`HEAD_CLASSES` classes at a time as the windows are added to the
    band, so a window's C × window output (1 GB for 118 classes at 128³ in float32) never exists.

    Args:
        features: ``(N, F, *window)``, what the head takes.
        head: the 1 × 1 convolution (``weight`` ``(C, F, 1, ...)``, ``bias``).
        context: the autocast the network ran under (the head runs under it too).
        finish: applied to each chunk (the type the caller sums in).
    """

    def __init__(
        self,
        features: torch.Tensor,
        head: torch.nn.Module,
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        finish: Callable[[torch.Tensor], torch.Tensor] = lambda values: values,
    ) -> None:
        self.features, self.head, self.context, self.finish = features, head, context, finish
        self.shape = torch.Size([features.shape[0], int(head.weight.shape[0]), *features.shape[2:]])

    def chunks(self, n: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """Window ``n``'s output, ``(classes, values (k, *window))`` pieces in class order."""
        weight, bias = self.head.weight, self.head.bias
        convolution = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d}.get(
            weight.ndim, torch.nn.functional.conv3d
        )
        for first in range(0, self.shape[1], HEAD_CLASSES):
            classes = slice(first, min(first + HEAD_CLASSES, self.shape[1]))
            with self.context():
                values = convolution(
                    self.features[n : n + 1], weight[classes], bias[classes] if bias is not None else None
                )
            yield classes, self.finish(values[0])

    def whole(self) -> torch.Tensor:
        """All windows' output at once (the head's own call)."""
        with self.context():
            return self.finish(self.head(self.features))


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
    predict: Callable[[torch.Tensor, int], torch.Tensor | HeadChunks],
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
        predict: ``(N, C_in, *window)`` windows and a network index (a fold) → ``(N, C, *window)``,
            or a :class:`HeadChunks` that makes it a few classes at a time.
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
        data = torch.stack([cut_window(padded, w, flat) for w in (run or group[:1])])
        for fold in range(networks):
            out = predict(data, fold) if run or not bands else None  # a probe tells the classes
            if out is not None and (
                not isinstance(out, (torch.Tensor, HeadChunks))
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
            outputs = iter(_pieces(out, flat))
            for window, r in zip(group, ran, strict=True):  # in window order: the sums' rounding
                if r:
                    for classes, piece in next(outputs):
                        values = as_weighted(piece)  # float32, or float16 as the network gave it
                        values.mul_(weight.to(values.device))  # in place: no second C x window array
                        _add(bands[fold][classes], window, base, values.to(device))
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


def _pieces(
    out: torch.Tensor | HeadChunks | None, flat: bool
) -> Iterator[Iterator[tuple[slice, torch.Tensor]]]:
    """Per window of ``out``, its output as ``(classes, values)`` pieces (one piece, or a head's chunks)."""
    if out is None:
        return
    for n in range(out.shape[0]):
        if isinstance(out, HeadChunks):
            yield ((classes, values[:, None] if flat else values) for classes, values in out.chunks(n))
        else:
            yield iter([(slice(None), out[n, :, None] if flat else out[n])])


def cut_window(padded: torch.Tensor, region: tuple[slice, ...], flat: bool) -> torch.Tensor:
    """The window ``region`` of ``padded`` as the network takes it (a 2D window without its row axis)."""
    window = padded[(slice(None), *region)]
    return (window[:, 0] if flat else window).contiguous()


def _add(band: torch.Tensor, region: tuple[slice, ...], base: int, values: torch.Tensor) -> None:
    """``band``'s window ``region`` += ``values``, ADD_CLASSES classes at a time: a float16 band plus
    float32 values is computed in float32, and PyTorch makes float32 copies of both operands to do
    it (2 GB for a 118-class 128³ window); per class chunk the copies are that chunk's. Elementwise,
    so the sums are the same."""
    rows = slice(region[0].start - base, region[0].stop - base)
    target = band[(slice(None), rows, *region[1:])]
    if band.dtype == values.dtype or band.shape[0] <= ADD_CLASSES:
        target += values
        return
    for first in range(0, band.shape[0], ADD_CLASSES):
        target[first : first + ADD_CLASSES] += values[first : first + ADD_CLASSES]


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        return None
    return tqdm(total=total, desc="windows", leave=False)


__all__ = [
    "ADD_CLASSES",
    "EMIT_ROWS",
    "HEAD_CLASSES",
    "HeadChunks",
    "PRECISIONS",
    "NotStreamable",
    "WindowCounts",
    "WindowSkipper",
    "autocast",
    "cut_window",
    "cpu_bf16_supported",
    "resolve_precision",
    "shift_rows",
    "stream_windows",
]
