"""PrefetchDataLoader: MONAI's batches in order, prepared ahead; a failing case raises at its batch."""

from __future__ import annotations

import threading

import pytest
from monai.data import Dataset

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.prefetch import PrefetchDataLoader


def _load(item):
    if item["x"] == 3:
        raise InputError(f"case {item['x']}: expected a readable image, found a truncated file")
    return {"x": item["x"], "thread": threading.current_thread().name}


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_batches_come_in_order_and_are_made_in_the_background(prefetch):
    loader = PrefetchDataLoader(
        Dataset([{"x": i} for i in range(5) if i != 3], transform=_load), prefetch=prefetch, batch_size=1
    )
    batches = list(loader)
    assert [int(b["x"][0]) for b in batches] == [0, 1, 2, 4] and len(loader) == 4
    threads = {b["thread"][0] for b in batches}
    assert threads == ({"voxpipe-prefetch"} if prefetch else {threading.current_thread().name})


def test_a_failing_case_raises_its_own_error_at_its_batch_and_the_thread_ends():
    loader = PrefetchDataLoader(
        Dataset([{"x": i} for i in range(6)], transform=_load), prefetch=1, batch_size=1
    )
    seen = []
    with pytest.raises(
        RuntimeError, match="applying transform"
    ) as raised:  # MONAI's Dataset wraps transform errors
        for batch in loader:
            seen.append(int(batch["x"][0]))
    assert seen == [0, 1, 2]
    assert isinstance(raised.value.__cause__, InputError) and "case 3: expected a readable image" in str(
        raised.value.__cause__
    )
    assert not any(t.name == "voxpipe-prefetch" for t in threading.enumerate())


def test_leaving_the_loop_early_stops_the_thread():
    loader = PrefetchDataLoader(
        Dataset([{"x": i} for i in range(3)], transform=_load), prefetch=1, batch_size=1
    )
    for _ in loader:
        break
    assert not any(t.name == "voxpipe-prefetch" for t in threading.enumerate())
