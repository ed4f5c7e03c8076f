"""The one row-streamed export: rows of class scores in, output slabs out as soon as the rows they read are there.

A sliding window that hands on its finished rows (:mod:`voxpipe.pipelines.inference.predictor`)
never needs the C × grid of logits, provided what comes after it works row by row too. Both exports
voxpipe has do: the MONAI path's interpolation to the source grid and argmax
(:class:`voxpipe.transforms.invert.SourceArgmax`) and nnU-Net's resampling and argmax or regions
(:func:`voxpipe.transforms.nnunet_resample.labels_by_rows`). Each cuts its output into slabs of rows,
each slab reading a known range of input rows; :class:`RowStream` is what they share: it holds the
arriving blocks of rows (not joined), computes every slab whose input rows have all arrived, and drops
the blocks no waiting slab reads. The arithmetic of a slab is the caller's.

Why our own: MONAI's and nnU-Net's exports take the whole prediction at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class RowStream:
    """Input rows ``(C, n, ...)`` arriving in order along axis 1; output slabs computed when ready.

    Args:
        in_rows: how many input rows will arrive.
        slabs: ``(a, b, lo, hi)`` per output slab: output rows ``[a, b)`` read input rows ``[lo, hi)``.
        compute: called once per slab as ``compute(rows, lo, a, b)`` with ``rows`` the input rows
            ``[lo, hi)`` (a view or a join of the blocks that hold them, on ``device``).
        prepare: applied to each block as it arrives (e.g. a softmax), before it is held.
        device: where the blocks are held and handed to ``compute`` (default the CPU).
    """

    def __init__(
        self,
        *,
        in_rows: int,
        slabs: Sequence[tuple[int, int, int, int]],
        compute: Callable[[torch.Tensor, int, int, int], None],
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.in_rows = int(in_rows)
        self.pending = [tuple(int(v) for v in slab) for slab in slabs]
        self.compute, self.prepare = compute, prepare
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.held: list[tuple[int, torch.Tensor]] = []  # consecutive blocks of input rows
        self.next_row = 0
        self.done_rows = 0  # output rows computed

    def add(self, start: int, rows: torch.Tensor) -> None:
        """Input rows ``start`` to ``start + n``; kept (not copied) while a slab still needs them, so
        the caller must not write into ``rows`` afterwards.

        Raises:
            ValueError: the rows do not start where the previous ones ended.
        """
        if start != self.next_row:
            raise ValueError(f"row blocks must be consecutive: rows from {start}, expected {self.next_row}")
        rows = rows.detach().to(self.device)
        if self.prepare is not None:
            rows = self.prepare(rows)
        self.held.append((start, rows))
        self.next_row += rows.shape[1]
        waiting = []
        for slab in self.pending:
            a, b, lo, hi = slab
            if hi <= self.next_row or self.next_row >= self.in_rows:
                self.compute(self.rows(lo, hi), lo, a, b)
                self.done_rows += b - a
            else:
                waiting.append(slab)
        self.pending = waiting
        keep = min((slab[2] for slab in waiting), default=self.next_row)
        held = []
        for s, block in self.held:
            if s + block.shape[1] <= keep:
                continue
            if s < keep:  # a copy of the rows still read, so that the block they came in can be freed
                block, s = block[:, keep - s :].clone(), keep
            held.append((s, block))
        self.held = held

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Input rows ``[lo, hi)``, joined from the held blocks that hold them."""
        parts = [
            block[:, max(lo - start, 0) : min(hi - start, block.shape[1])]
            for start, block in self.held
            if start < hi and start + block.shape[1] > lo
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @property
    def held_rows(self) -> int:
        """How many input rows are held now."""
        return sum(block.shape[1] for _, block in self.held)

    @property
    def complete(self) -> bool:
        """Every input row has arrived and every slab is computed."""
        return not self.pending and self.next_row == self.in_rows


__all__ = ["RowStream"]
