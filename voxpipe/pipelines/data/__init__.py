"""Datasets before training: datalists (MSD, LiTS, folders, CSV), splits, integrity check, fingerprint, download, caching.
May import voxpipe.transforms, voxpipe.errors and MONAI's data module; no other pipelines subpackage.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``voxpipe.pipelines.data.msd_datalist`` and the module's other old names, with a deprecation warning."""
    from voxpipe._moved import forward

    return forward(__name__, name)
