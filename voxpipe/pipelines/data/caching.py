"""Cached MONAI datasets whose size is estimated from the headers before the cache is filled.

:func:`cached_dataset` chooses MONAI's ``CacheDataset`` (RAM) or ``PersistentDataset`` (disk) and
refuses with advice when the estimate will not fit (MONAI would fill RAM and then fail or swap).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset

from voxpipe.errors import InputError
from voxpipe.transforms.io import read_geometry

logger = logging.getLogger(__name__)


def _channels_in(path: str | os.PathLike[str]) -> int:
    """Channels stored in one image file: the 4th dimension of a 4D NIfTI (MSD multi-contrast MRI), else 1."""
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        shape = nib.load(str(path)).shape
        return int(shape[3]) if len(shape) == 4 else 1
    return 1


def estimate_cache_bytes(
    entries: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str] = ("image", "label"),
    pixdim: Sequence[float] | None = None,
    bytes_per_voxel: int = 4,
) -> int:
    """Bytes the deterministic preprocessing output of ``entries`` takes (float32 per key).

    From the headers only: voxels per case, scaled by (source spacing / ``pixdim``) when the chain
    resamples (a ``pixdim`` entry <= 0 keeps that axis, as in ``Spacingd``). Cropping makes the real figure smaller, so this is an upper bound.
    """
    total = 0.0
    for entry in entries:
        for key in keys:
            if not entry.get(key):
                continue
            files = (
                entry[key] if isinstance(entry[key], (list, tuple)) else [entry[key]]
            )  # one file per channel
            shape, affine = read_geometry(files[0])
            voxels = float(np.prod(shape)) * len(files) * _channels_in(files[0])
            if pixdim is not None:
                spacing = np.linalg.norm(affine[:3, :3], axis=0)
                target = np.asarray(pixdim, dtype=float)
                target = np.where(target > 0, target, spacing)  # MONAI's Spacingd keeps axes given as <= 0
                voxels *= float(np.prod(spacing / target))
            total += voxels * bytes_per_voxel
    return int(total)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def cached_dataset(
    data: Sequence[dict[str, Any]],
    transform: Callable[..., Any],
    *,
    cache: str = "memory",
    cache_dir: str | os.PathLike[str] | None = None,
    cache_rate: float = 1.0,
    pixdim: Sequence[float] | None = None,
    limit_gb: float | None = None,
    keys: Sequence[str] = ("image", "label"),
    progress: bool = False,
) -> Dataset:
    """A MONAI dataset that caches the deterministic part of ``transform``.

    Args:
        data: datalist.
        transform: the full chain; MONAI caches everything before its first random transform.
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``)
            or ``"none"`` (plain ``Dataset``).
        cache_rate: fraction of cases cached in memory.
        pixdim: target spacing of the chain (mm), for the size estimate.
        limit_gb: refuse when the estimate exceeds this (default: available RAM for memory, free
            disk space in ``cache_dir`` for disk).

    Raises:
        InputError: unknown ``cache`` or the estimate exceeds the limit (with advice).
    """
    if cache not in ("memory", "disk", "none"):
        raise InputError(f"cache: expected 'memory', 'disk' or 'none', found {cache!r}")
    if cache == "none":
        return Dataset(data, transform)
    if cache == "disk" and not cache_dir:
        raise InputError("cache='disk' needs cache_dir, the folder PersistentDataset writes to")
    fraction = cache_rate if cache == "memory" else 1.0
    needed = estimate_cache_bytes(data, keys=keys, pixdim=pixdim) * fraction
    if cache == "memory":
        limit = limit_gb * 1e9 if limit_gb is not None else available_memory_bytes()
        where = "available RAM" if limit_gb is None else f"limit_gb={limit_gb}"
    else:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        limit = limit_gb * 1e9 if limit_gb is not None else shutil.disk_usage(cache_dir).free  # type: ignore[arg-type]
        where = f"free disk in {cache_dir}" if limit_gb is None else f"limit_gb={limit_gb}"
    logger.info(
        "caching %d cases in %s: about %.2f GB needed (%s: %.2f GB)",
        len(data),
        cache,
        needed / 1e9,
        where,
        limit / 1e9,
    )
    if needed > limit:
        advice = (
            "use cache='disk' with a cache_dir, lower cache_rate, or a coarser pixdim"
            if cache == "memory"
            else "free disk space, choose another cache_dir, or a coarser pixdim"
        )
        raise InputError(
            f"cache: the preprocessed dataset needs about {needed / 1e9:.2f} GB but {where} is {limit / 1e9:.2f} GB; {advice}"
        )
    if cache == "disk":
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    return CacheDataset(data, transform, cache_rate=cache_rate, progress=progress)
