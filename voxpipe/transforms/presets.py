"""Named preprocessing chains (``ct_liver``, ``ct_lung``, ``ct_abdomen``, ``mri``) and the helper
bundles use to join transform lists.

Every preset is a list of MONAI transforms: load (:class:`~voxpipe.transforms.io.LoadVolumed`:
NIfTI/NRRD/MHA/DICOM, integer labels), channel first, RAS orientation, optional resampling to a
target spacing (bilinear image, nearest label), optional foreground crop (the body: > −500 HU for
CT, > 0 for MRI), then intensity normalisation (:mod:`voxpipe.transforms.intensity`). The chain is
deterministic, so ``CacheDataset`` can cache all of it; training adds :func:`patch_sampling` and
:func:`voxpipe.transforms.augment.augmentation` after it.

=============  =================================================================
preset         intensity
=============  =================================================================
``ct_liver``   HU window [−100, 200] → [0, 1] (liver and hypodense tumour)
``ct_lung``    HU window [−1000, 400] → [0, 1] (parenchyma, nodules, vessels)
``ct_abdomen`` HU window [−175, 250] → [0, 1] (abdominal soft tissue)
``mri``        z-score over non-zero voxels
=============  =================================================================

With ``fingerprint=`` (see :mod:`voxpipe.pipelines.data.fingerprint`), ``spacing="auto"`` takes the
fingerprint's suggested spacing and CT presets take the window from its foreground 0.5–99.5th
intensity percentiles instead of the table.

:func:`compose` joins lists into one flat ``Compose``. It must be flat: ``CacheDataset`` caches
everything before the first random transform, and a nested ``Compose`` counts as random, so
nesting would silently disable caching.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    Orientationd,
    RandCropByPosNegLabeld,
    Spacingd,
    SpatialPadd,
)

from voxpipe.errors import InputError
from voxpipe.transforms.intensity import CT_WINDOWS, ct_window, mri_zscore, window_from_fingerprint
from voxpipe.transforms.io import LoadVolumed

PRESETS: dict[str, str] = {
    "ct_liver": "CT, HU window [-100, 200]: liver and liver tumour",
    "ct_lung": "CT, HU window [-1000, 400]: lung, lung tumour and nodules",
    "ct_abdomen": "CT, HU window [-175, 250]: abdominal organs",
    "mri": "MRI, z-score over non-zero voxels",
}
_BODY_THRESHOLD = {"ct": -500.0, "mri": 0.0}


def _above(threshold: float) -> Callable[[Any], Any]:
    def select(image: Any) -> Any:
        return image > threshold

    return select


def preprocessing(
    name: str,
    *,
    image_key: str = "image",
    label_keys: Sequence[str] = ("label",),
    spacing: Sequence[float] | str | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    crop_foreground: bool = False,
    load: bool = True,
) -> list[Any]:
    """The deterministic transform list of preset ``name``.

    Args:
        name: one of :data:`PRESETS`.
        image_key: the intensity image key.
        label_keys: label keys (nearest resampling, integer cast on load); absent keys are skipped,
            so the same chain serves inference.
        spacing: target spacing (mm, x y z), ``"auto"`` (from ``fingerprint``) or None (keep).
        fingerprint: dataset fingerprint dict; CT presets then take their window from it.
        crop_foreground: crop image and labels to the body's bounding box.
        load: start with :class:`LoadVolumed` (False when the data are already tensors).

    Raises:
        InputError: unknown preset, ``"auto"`` without a fingerprint.
    """
    if name not in PRESETS:
        raise InputError(f"preset: expected one of {sorted(PRESETS)}, found {name!r}")
    labels = list(label_keys)
    keys = [image_key, *labels]
    chain: list[Any] = []
    if load:
        chain.append(LoadVolumed(keys, label_keys=labels, allow_missing_keys=True))
    chain += [
        EnsureChannelFirstd(keys, allow_missing_keys=True),
        Orientationd(keys, axcodes="RAS", allow_missing_keys=True),
    ]
    if isinstance(spacing, str):
        if spacing != "auto" or fingerprint is None:
            raise InputError(
                f"spacing: expected mm values, None, or 'auto' with a fingerprint, found {spacing!r}"
            )
        spacing = fingerprint["suggested"]["spacing"]
    if spacing is not None:
        chain.append(
            Spacingd(
                keys,
                pixdim=[float(v) for v in spacing],
                mode=["bilinear"] + ["nearest"] * len(labels),
                allow_missing_keys=True,
            )
        )
    modality = "mri" if name == "mri" else "ct"
    if crop_foreground:
        chain.append(
            CropForegroundd(
                keys,
                source_key=image_key,
                select_fn=_above(_BODY_THRESHOLD[modality]),
                margin=2,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
                allow_missing_keys=True,
            )
        )
    if modality == "mri":
        chain.append(mri_zscore(image_key))
    else:
        window = window_from_fingerprint(fingerprint) if fingerprint is not None else CT_WINDOWS[name]
        chain.append(ct_window(image_key, window))
    return chain


def patch_sampling(
    patch_size: Sequence[int],
    *,
    image_key: str = "image",
    label_key: str = "label",
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 2,
) -> list[Any]:
    """Pad to ``patch_size`` and sample ``num_samples`` patches, centred on foreground with odds pos : neg."""
    keys = [image_key, label_key]
    return [
        SpatialPadd(keys, spatial_size=list(patch_size)),
        RandCropByPosNegLabeld(
            keys,
            label_key=label_key,
            spatial_size=list(patch_size),
            pos=pos,
            neg=neg,
            num_samples=num_samples,
            image_key=image_key,
            image_threshold=0,
        ),
    ]


def window_of(chain: Sequence[Any]) -> tuple[float, float] | None:
    """The HU window of a preset chain (None for MRI), for reports and manifests."""
    for transform in chain:
        scaler = getattr(transform, "scaler", None)
        if scaler is not None and hasattr(scaler, "a_min"):
            return float(scaler.a_min), float(scaler.a_max)
    return None


def compose(parts: Sequence[Sequence[Callable[..., Any]] | Callable[..., Any]], **kwargs: Any) -> Compose:
    """One flat ``Compose`` from lists of transforms (or single transforms, or ``Compose``s), in order."""
    flat: list[Callable[..., Any]] = []
    for part in parts:
        if isinstance(part, Compose):
            flat.extend(part.flatten().transforms)
        elif isinstance(part, Sequence):
            flat.extend(part)
        else:
            flat.append(part)
    return Compose(flat, **kwargs)
