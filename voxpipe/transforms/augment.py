"""Training augmentation presets: spatial, intensity and resolution augmentations practitioners use.

All transforms are MONAI's; this module fixes which ones, with which ranges, per level, and applies
them the same way to image and label: spatial transforms share one random draw per sample across
keys, labels use nearest-neighbour interpolation, and intensity transforms touch the image only.
Determinism: :func:`augmentation` returns a ``Compose`` whose random state is set from ``seed``, so
the same seed gives the same samples. Inference chains never include these.

Levels: ``none``; ``light`` (small affine, intensity shift/scale, noise); ``default`` (nnU-Net-like:
rotation, scaling, translation, mirroring, gamma, noise, blur, low resolution); ``strong`` (adds
shear and coarse dropout, wider ranges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandCoarseDropoutd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from voxpipe.errors import InputError

LEVELS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {
        "p_affine": 0.2,
        "rotate_deg": 5,
        "scale": 0.05,
        "translate_vox": 4,
        "shear": 0.0,
        "flip_axes": (),
        "p_intensity": 0.3,
        "noise_std": 0.01,
    },
    "default": {
        "p_affine": 0.3,
        "rotate_deg": 15,
        "scale": 0.15,
        "translate_vox": 8,
        "shear": 0.0,
        "flip_axes": (0, 1, 2),
        "p_intensity": 0.3,
        "noise_std": 0.02,
        "gamma": (0.7, 1.5),
        "blur_sigma": (0.5, 1.0),
        "low_res": (0.5, 1.0),
    },
    "strong": {
        "p_affine": 0.5,
        "rotate_deg": 30,
        "scale": 0.25,
        "translate_vox": 12,
        "shear": 0.1,
        "flip_axes": (0, 1, 2),
        "p_intensity": 0.5,
        "noise_std": 0.04,
        "gamma": (0.5, 2.0),
        "blur_sigma": (0.5, 1.5),
        "low_res": (0.4, 1.0),
        "dropout_holes": 4,
        "dropout_size": 8,
    },
}


def augmentation(
    level: str = "default",
    *,
    image_keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = ("label",),
    flip_axes: Sequence[int] | None = None,
    seed: int | None = 0,
) -> Compose:
    """The augmentation chain for ``level`` (see module doc).

    Args:
        level: ``none``, ``light``, ``default`` or ``strong``.
        image_keys: intensity images (bilinear resampling, intensity transforms).
        label_keys: label maps (nearest resampling, never intensity-transformed).
        flip_axes: mirrored axes, overriding the level's (e.g. ``(1, 2)`` to keep left/right,
            which matters for the liver's side).
        seed: seed of the chain's random state (``None``: unseeded).

    Raises:
        InputError: unknown level.
    """
    if level not in LEVELS:
        raise InputError(f"augmentation level: expected one of {sorted(LEVELS)}, found {level!r}")
    p = LEVELS[level]
    images, labels = list(image_keys), list(label_keys)
    keys = images + labels
    transforms: list[Any] = []
    if p:
        angle = math.radians(p["rotate_deg"])
        transforms.append(
            RandAffined(
                keys,
                prob=p["p_affine"],
                rotate_range=(angle,) * 3,
                scale_range=(p["scale"],) * 3,
                translate_range=(p["translate_vox"],) * 3,
                shear_range=(p["shear"],) * 6 if p["shear"] else None,
                mode=["bilinear"] * len(images) + ["nearest"] * len(labels),
                padding_mode="border",
            )
        )
        for axis in p["flip_axes"] if flip_axes is None else flip_axes:
            transforms.append(RandFlipd(keys, prob=0.5, spatial_axis=axis))
        if p.get("dropout_holes"):
            transforms.append(
                RandCoarseDropoutd(
                    images,
                    holes=1,
                    max_holes=p["dropout_holes"],
                    spatial_size=p["dropout_size"],
                    fill_value=0.0,
                    prob=p["p_intensity"],
                )
            )
        transforms += [
            RandScaleIntensityd(images, factors=0.1, prob=p["p_intensity"]),
            RandShiftIntensityd(images, offsets=0.05, prob=p["p_intensity"]),
            RandGaussianNoised(images, std=p["noise_std"], prob=p["p_intensity"] / 2),
        ]
        if "gamma" in p:
            transforms.append(RandAdjustContrastd(images, gamma=p["gamma"], prob=p["p_intensity"]))
        if "blur_sigma" in p:
            sigma = p["blur_sigma"]
            transforms.append(
                RandGaussianSmoothd(
                    images, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=p["p_intensity"] / 2
                )
            )
        if "low_res" in p:
            transforms.append(
                RandSimulateLowResolutiond(images, zoom_range=p["low_res"], prob=p["p_intensity"] / 2)
            )
    chain = Compose(transforms)
    if seed is not None:
        chain.set_random_state(seed=seed)
    return chain
