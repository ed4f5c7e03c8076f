"""Intensity normalisation: named CT windows and MRI z-scoring, as MONAI transforms.

MONAI has the operations (``ScaleIntensityRanged`` with clipping, ``NormalizeIntensityd``); what it
lacks is the domain table: which HU window suits which task, and the nnU-Net rule of taking the
window from the foreground intensity percentiles of a dataset fingerprint. Clipping happens before
scaling, so scanner padding (−3024, −2048 HU) cannot stretch the range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.transforms import MapTransform, NormalizeIntensityd, ScaleIntensityRanged

from voxpipe.errors import InputError

# HU windows [low, high] mapped to [0, 1] and clipped. Chosen to keep the structures of each task:
# liver (~60 HU) and hypodense tumour (~20–50 HU) well inside; lung parenchyma (−900..−500), nodules
# and vessels (soft tissue); the abdominal soft-tissue window of MONAI's BTCV/Task09 tutorials.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "ct_liver": (-100.0, 200.0),
    "ct_lung": (-1000.0, 400.0),
    "ct_abdomen": (-175.0, 250.0),
}


def ct_window(keys: str | Sequence[str], window: Sequence[float]) -> MapTransform:
    """Clip ``keys`` to ``window`` = (low, high) HU and scale to [0, 1]."""
    low, high = (float(v) for v in window)
    if not high > low:
        raise InputError(f"HU window: expected low < high, found {list(window)}")
    return ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


def mri_zscore(keys: str | Sequence[str]) -> MapTransform:
    """Z-score over non-zero voxels per channel (MRI has no absolute scale; zero is background)."""
    return NormalizeIntensityd(keys, nonzero=True, channel_wise=True)


def window_from_fingerprint(fingerprint: Mapping[str, Any]) -> tuple[float, float]:
    """The (0.5, 99.5) foreground intensity percentiles of a dataset fingerprint (nnU-Net's CT rule)."""
    try:
        low, high = (
            fingerprint["foreground_intensity"]["percentile_00_5"],
            fingerprint["foreground_intensity"]["percentile_99_5"],
        )
    except (KeyError, TypeError) as error:
        raise InputError(
            f"fingerprint: expected foreground_intensity percentiles, found keys {sorted(fingerprint)}"
        ) from error
    return float(low), float(high)
