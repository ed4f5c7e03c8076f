"""nnU-Net v2's preprocessing and window rules, as its 2.8 predictor applies them, for running its models.

A model trained by nnU-Net gives its own answers only when the input is prepared as nnU-Net prepared
its training data: per channel the normalisation scheme its plans name (with the plans' intensity
properties for CT), and the sliding window with nnU-Net's window starts and Gaussian weights, which
differ from MONAI's (MONAI spaces windows by ``roi × (1 − overlap)`` from the start and uses
``sigma = 0.125 × roi`` on a different grid; nnU-Net spreads its windows evenly over the image and
builds its Gaussian with ``scipy.ndimage.gaussian_filter``, scaled to a peak of 10 and rounded to
float16). Why our own: neither MONAI nor any dependency voxpipe may install has these rules, and
nnU-Net's own package brings torchvision-dependent code. The test suite checks every function here
against nnunetv2 2.8.1's own (installed without its dependencies, as a test oracle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from voxpipe.errors import InputError

#: The normalisation schemes of nnU-Net's default plans (``normalization_schemes`` in a configuration).
SCHEMES = (
    "CTNormalization",
    "ZScoreNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)


def normalise_channel(
    image: np.ndarray,
    scheme: str,
    *,
    properties: Mapping[str, Any] | None = None,
    nonzero: np.ndarray | None = None,
    use_mask: bool = False,
    source: str = "plans.json",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One channel, as nnU-Net's scheme of that name does it (float32; the input is not changed
    unless it is ``out``).

    Args:
        image: the channel's voxels.
        scheme: one of :data:`SCHEMES`.
        properties: the channel's ``foreground_intensity_properties_per_channel`` entry (CT: ``mean``,
            ``std``, ``percentile_00_5``, ``percentile_99_5``).
        nonzero: the non-zero mask of nnU-Net's crop (``seg >= 0`` there); with ``use_mask``, z-score
            statistics come from it and only its voxels change.
        use_mask: the plans' ``use_mask_for_norm`` for this channel.
        out: a float32 array of the image's shape to write into (the image itself: in place, the
            same values without a second copy of the channel); None: a new array.

    Raises:
        InputError: an unknown scheme, CT properties missing, RGB values outside 0–255 (named).
    """
    if out is None:
        out = np.array(image, dtype=np.float32, copy=True)
    elif out is not image:
        out[...] = image
    eps = 1e-8
    if scheme == "CTNormalization":
        needed = ("mean", "std", "percentile_00_5", "percentile_99_5")
        missing = [k for k in needed if k not in (properties or {})]
        if missing:
            raise InputError(
                f"{source}: CTNormalization needs the channel's intensity properties {list(needed)}, found none of {missing}"
            )
        assert properties is not None
        np.clip(out, properties["percentile_00_5"], properties["percentile_99_5"], out=out)
        out -= properties["mean"]
        out /= max(float(properties["std"]), eps)
        return out
    if scheme == "ZScoreNormalization":
        if use_mask and nonzero is not None:
            inside = out[nonzero]
            mean, std = inside.mean(), inside.std()
            out[nonzero] = (inside - mean) / max(std, eps)
        else:
            mean, std = out.mean(), out.std()
            out -= mean
            out /= max(std, eps)
        return out
    if scheme == "NoNormalization":
        return out
    if scheme == "RescaleTo01Normalization":
        out -= out.min()
        out /= np.clip(out.max(), a_min=eps, a_max=None)
        return out
    if scheme == "RGBTo01Normalization":
        if out.min() < 0 or out.max() > 255:
            raise InputError(
                f"{source}: RGBTo01Normalization expects values 0-255, found {out.min():g} to {out.max():g}"
            )
        out /= 255.0
        return out
    raise InputError(
        f"{source}: normalization_schemes: expected some of {list(SCHEMES)}, found {scheme!r}",
        hint="custom normalisation classes are code; voxpipe runs nnU-Net's default schemes only",
    )


def window_starts(image_size: Sequence[int], tile_size: Sequence[int], step: float) -> list[list[int]]:
    """nnU-Net's window starts per axis: the fewest windows with at most ``step × tile`` between
    starts, spread evenly from 0 to ``image − tile`` (rounded to whole voxels).

    Raises:
        InputError: ``step`` outside (0, 1], or an image smaller than the window (pad it first).
    """
    if not 0 < step <= 1:
        raise InputError(f"step size: expected a value in (0, 1], found {step!r}")
    if any(int(i) < int(t) for i, t in zip(image_size, tile_size, strict=True)):
        raise InputError(
            f"sliding window: image {tuple(image_size)} is smaller than the window {tuple(tile_size)}"
        )
    starts = []
    for size, tile in zip(image_size, tile_size, strict=True):
        count = int(np.ceil((int(size) - int(tile)) / (int(tile) * step))) + 1
        last = int(size) - int(tile)
        spacing = last / (count - 1) if count > 1 else 0.0
        starts.append([int(np.round(spacing * i)) for i in range(count)])
    return starts


def gaussian_weights(
    tile_size: Sequence[int], *, sigma_scale: float = 1.0 / 8, peak: float = 10.0
) -> torch.Tensor:
    """nnU-Net's window weights: a unit impulse at the window's centre (index ``size // 2``) blurred
    by ``scipy.ndimage.gaussian_filter`` (sigma ``size × sigma_scale``, zero outside), scaled to
    ``peak``, rounded to float16 as nnU-Net's predictor keeps it, zeros replaced by the smallest
    non-zero weight. Returned as float32 holding those float16 values."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros([int(t) for t in tile_size])
    impulse[tuple(int(t) // 2 for t in tile_size)] = 1
    blurred = gaussian_filter(impulse, [int(t) * sigma_scale for t in tile_size], 0, mode="constant", cval=0)
    blurred /= np.max(blurred) / peak
    weights = torch.from_numpy(blurred).to(torch.float16)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = torch.min(weights[~zero])
    return weights.float()


__all__ = ["SCHEMES", "gaussian_weights", "normalise_channel", "window_starts"]
