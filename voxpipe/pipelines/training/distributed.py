"""Multi-process training with ``torchrun``: process group, seeding and data loaders.

The same bundle runs alone or under ``torchrun --nproc_per_node=N`` (one process per GPU, or N CPU
processes with the gloo backend). ``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`initialize` joins the process group from them, and everything else asks Ignite's ``idist``
for the rank and world size. Training shards the data with MONAI's ``DistributedSampler``;
validation shards it without padding (``even_divisible=False``) so that the metrics, all-gathered by
MONAI's metric handlers, are computed on each case exactly once and equal a single-process run's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from monai.data import DataLoader, DistributedSampler
from monai.utils import set_determinism
from torch.utils.data import WeightedRandomSampler

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)


def launched_distributed() -> bool:
    """True when this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialize(*, seed: int | None = 0, backend: str | None = None) -> None:
    """Join the process group if launched by ``torchrun``, then seed every generator.

    Args:
        seed: seeds torch, numpy and Python via MONAI's ``set_determinism`` (``None``: no seeding).
            Each rank uses ``seed + rank`` so ranks draw different augmentations; the network starts
            from rank 0's weights anyway (DDP broadcasts them).
        backend: ``"gloo"`` or ``"nccl"``; default nccl with CUDA, gloo otherwise.
    """
    if launched_distributed() and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info(
            "rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend
        )
    if seed is not None:
        set_determinism(seed=int(seed) + idist.get_rank())


def data_loader(
    dataset: Any,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    part: str = "train",
    sample_weights: Sequence[float] | None = None,
    **kwargs: Any,
) -> DataLoader:
    """MONAI's ``DataLoader``, with a ``DistributedSampler`` when running under ``torchrun``.

    ``part="train"`` pads the shards to equal length (every rank runs the same number of steps, as
    DDP needs); ``part="val"`` does not, so no case is counted twice in the metrics. MONAI's
    ``DataLoader`` seeds the random transforms of each worker from torch's generator, so a seeded
    run is reproducible with any ``num_workers``. ``sample_weights`` (one per item) draw items with
    replacement in proportion to them (torch's ``WeightedRandomSampler``: class-balanced sampling),
    one process only.
    """
    if part not in ("train", "val"):
        raise InputError(f"data_loader part: expected 'train' or 'val', found {part!r}")
    if sample_weights is not None:
        if idist.get_world_size() > 1:
            raise InputError(
                "balanced sampling: expected a single process, found a torchrun launch",
                hint="use class weights in the loss instead (balance: class_weights)",
            )
        sampler = WeightedRandomSampler(list(sample_weights), num_samples=len(dataset), replacement=True)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)
    if idist.get_world_size() > 1:
        sampler = DistributedSampler(dataset, shuffle=shuffle, even_divisible=part == "train")
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **kwargs)
