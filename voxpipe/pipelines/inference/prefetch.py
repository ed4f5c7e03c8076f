"""A data loader that prepares the next case while the network works on the current one.

Loading and resampling a clinical CT (decompressing a 512 × 512 × 400 NIfTI, reorienting, resampling
to the bundle's grid) takes seconds; with ``num_workers=0`` MONAI's engines wait for it between
cases, and worker processes would copy every volume between processes and double the memory.
:class:`PrefetchDataLoader` is MONAI's ``DataLoader`` whose batches are made in one background thread,
``prefetch`` batches ahead. The heavy parts (zlib, numpy, torch resampling) release the GIL, so the
loading overlaps the forward passes.

Why our own: MONAI's ``ThreadDataLoader``/``ThreadBuffer`` does the same, but when a transform raises
in its thread, the thread ends and the iteration stops quietly; the engine then finishes "successfully"
without the remaining cases. Here the exception is raised in the engine's thread at that batch, so
:func:`voxpipe.pipelines.inference.infer.infer_with_bundle` names the failed case and goes on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from monai.data import DataLoader

_DONE = object()


class PrefetchDataLoader(DataLoader):
    """MONAI's ``DataLoader`` with batches prepared ``prefetch`` ahead in a background thread (0: none).

    Other arguments are MONAI's ``DataLoader`` arguments. Exceptions raised while preparing a batch
    are raised by the iteration when that batch is due.
    """

    def __init__(self, dataset: Any, *, prefetch: int = 1, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.prefetch = int(prefetch)

    def _batches(self) -> Iterator[Any]:
        return super().__iter__()

    def __iter__(self) -> Iterator[Any]:
        if self.prefetch < 1:
            yield from self._batches()
            return
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def fill() -> None:
            try:
                for batch in self._batches():
                    if not put(("batch", batch)):
                        return
                put(("done", _DONE))
            except BaseException as error:  # handed to the consuming thread, raised there
                put(("error", error))

        thread = threading.Thread(target=fill, name="voxpipe-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = ready.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            thread.join(timeout=60)
