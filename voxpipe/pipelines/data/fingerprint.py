"""Dataset fingerprint: the statistics nnU-Net derives its preprocessing from, as JSON.

Per dataset: the distribution of voxel spacings and image sizes, the foreground (label > 0)
intensity distribution (mean, std, 0.5 / 50 / 99.5th percentiles; per channel for multi-channel
images) and per-label volumes in mL. ``voxpipe plan`` uses its own, nnU-Net-exact view
(:mod:`voxpipe.pipelines.planning.fingerprint`).
:func:`voxpipe.transforms.presets.preprocessing` can take a fingerprint and choose the CT window
(foreground 0.5–99.5th percentiles) and target spacing (median spacing; on strongly anisotropic
data the coarse axis takes the 10th percentile, nnU-Net's rule) from it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voxpipe.errors import InputError
from voxpipe.pipelines.data.datalists import dataset_modality, load_datalist
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import load_channels, load_volume

logger = logging.getLogger(__name__)

ANISOTROPY = 3.0  # nnU-Net: coarse/fine spacing ratio above which the coarse axis is treated apart
SAMPLES_PER_CASE = 10_000


def compute_fingerprint(
    source: str | os.PathLike[str], *, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Fingerprint of the labelled cases of a dataset (any layout :func:`load_datalist` reads).

    Foreground intensities are a seeded sample of up to 10,000 voxels per case (as nnU-Net), so
    the figures are reproducible and the memory bounded.

    Raises:
        InputError: no labelled case, or an unreadable file (named).
    """
    entries = [e for e in load_datalist(source) if e.get("label") and e.get("image")]
    if not entries:
        raise InputError(f"{str(source)!r}: expected labelled cases for a fingerprint, found none")
    declared = _declared_channels(source)
    expected_channels = len(declared) if declared else None
    rng = np.random.default_rng(seed)
    spacings, shapes = [], []
    samples: dict[int, list[np.ndarray]] = {}
    volumes: dict[str, list[float]] = {}
    for entry in tqdm(entries, desc="fingerprint", unit="case", disable=not progress):
        paths = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image = load_channels(
            paths
        )  # (C, X, Y, Z) for several channels (4D NIfTI or one file each), else (X, Y, Z)
        channels = np.asarray(image.array) if image.array.ndim == 4 else np.asarray(image.array)[None]
        if expected_channels is None:
            expected_channels = len(channels)  # no dataset.json: the first case sets the count
        if len(channels) != expected_channels:
            source_of = "dataset.json" if declared else f"the first case {entries[0].get('case', '')!r}"
            raise InputError(
                f"{paths[0]!r}: {len(channels)} channel(s); expected {expected_channels} as in {source_of}"
                + (f" ({', '.join(declared)})" if declared else "")
            )
        label = load_volume(entry["label"], label=True)
        spacings.append(image.spacing)
        shapes.append(channels.shape[1:])
        for index, channel in enumerate(channels):
            foreground = channel[label.array > 0]
            if foreground.size:
                samples.setdefault(index, []).append(
                    rng.choice(foreground, size=min(SAMPLES_PER_CASE, foreground.size), replace=False)
                )
        voxel_ml = float(np.prod(image.spacing)) / 1000.0
        values, counts = np.unique(label.array, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            if value:
                volumes.setdefault(str(value), []).append(count * voxel_ml)
    spacing = np.asarray(spacings)
    per_channel = [_intensity(np.concatenate(samples[c]).astype(np.float64)) for c in sorted(samples)] or [
        _intensity(np.zeros(1))
    ]
    result = {
        "n_cases": len(entries),
        "spacing": {
            "median": np.median(spacing, axis=0).tolist(),
            "p10": np.percentile(spacing, 10, axis=0).tolist(),
            "min": spacing.min(axis=0).tolist(),
            "max": spacing.max(axis=0).tolist(),
        },
        "shape": {
            "median": np.median(np.asarray(shapes), axis=0).tolist(),
            "min": np.min(shapes, axis=0).tolist(),
            "max": np.max(shapes, axis=0).tolist(),
        },
        "foreground_intensity": per_channel[0],
        "label_volume_ml": {
            k: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)), "n_cases": len(v)}
            for k, v in sorted(volumes.items())
        },
        "suggested": {"spacing": target_spacing(spacing)},
    }
    if len(per_channel) > 1:
        result["foreground_intensity_per_channel"] = per_channel
    return result


def _declared_channels(source: str | os.PathLike[str]) -> list[str]:
    """The channels a dataset.json declares (MSD ``modality``, nnU-Net ``channel_names``); [] without one."""
    manifest = Path(source) / "dataset.json" if Path(source).is_dir() else Path(source)
    if manifest.name != "dataset.json" or not manifest.is_file():
        return []
    try:
        return dataset_modality(json.loads(manifest.read_text()))
    except (OSError, ValueError):
        return []  # load_datalist reports an unreadable dataset.json


def _intensity(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "median": float(np.median(values)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
    }


def target_spacing(spacings: np.ndarray) -> list[float]:
    """Median spacing; for anisotropic data (coarse > 3 × fine) the coarse axis takes the 10th percentile."""
    median = np.median(spacings, axis=0)
    result = median.copy()
    coarse = int(np.argmax(median))
    if median[coarse] > ANISOTROPY * median.min():
        result[coarse] = np.percentile(spacings[:, coarse], 10)
    return [round(float(v), 4) for v in result]


def save_fingerprint(fingerprint: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    return write_text_atomic(path, json.dumps(fingerprint, indent=2) + "\n")


def read_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{str(path)!r}: could not read the fingerprint JSON ({error})") from error
