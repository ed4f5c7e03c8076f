"""Synthetic multi-contrast brain MRI with tumour sub-regions, written as MSD Task01-style 4D NIfTI.

Why our own: a multi-channel dataset is needed to test loading, per-channel normalisation,
training and inference end to end, offline, in seconds. Each case is a head in air (zero outside the
skull, as skull-stripped BraTS data are), white and grey matter, ventricles (CSF), and a glioma-like
lesion: a necrotic / non-enhancing core, an enhancing rim and surrounding oedema, which the contrasts
show differently, as in BraTS:

* FLAIR: oedema bright, CSF dark;
* T1w: tumour slightly dark, CSF dark;
* T1gd: the enhancing rim bright;
* T2w: oedema and CSF bright.

Intensities are arbitrary MR units (per-case gain and a smooth bias field, so z-scoring matters),
with Rician-like noise. Labels follow MSD Task01: 0 background, 1 oedema, 2 non-enhancing tumour,
3 enhancing tumour. The stored array is flipped per case (LPS-like) with the affine adjusted. Case
``i`` of seed ``s`` uses ``numpy.random.default_rng([s, i, 1])``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from voxpipe import __version__
from voxpipe.errors import InputError
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import save_nifti

logger = logging.getLogger(__name__)

BRAIN_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumour", "3": "enhancing tumour"}
CONTRASTS = ("FLAIR", "T1w", "T1gd", "T2w")
# Mean intensity per tissue and contrast: background, white matter, grey matter, CSF, oedema, core, rim.
_TISSUE = {
    "FLAIR": (0, 420, 480, 120, 900, 560, 620),
    "T1w": (0, 620, 480, 180, 430, 300, 420),
    "T1gd": (0, 630, 500, 190, 450, 320, 1050),
    "T2w": (0, 380, 520, 1100, 950, 800, 700),
}
_SIZES = {"default": (96, 112, 80), "tiny": (40, 48, 32)}


@dataclass(frozen=True)
class BrainPhantom:
    """One case: ``image`` (x, y, z, C) float32 in MR units, ``label`` (x, y, z) uint8, RAS ``affine`` (mm)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    contrasts: tuple[str, ...]


def brain_phantom(
    seed: int | tuple[int, ...] = 0, *, size: str = "default", channels: int = 4
) -> BrainPhantom:
    """A brain MRI phantom with ``channels`` contrasts (the first of FLAIR, T1w, T1gd, T2w).

    Raises:
        InputError: unknown size, or channels outside 1..4.
    """
    if size not in _SIZES:
        raise InputError(f"phantom size: expected one of {sorted(_SIZES)}, found {size!r}")
    if not 1 <= channels <= len(CONTRASTS):
        raise InputError(f"brain phantom channels: expected 1..{len(CONTRASTS)}, found {channels}")
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 1])
    shape = _SIZES[size]
    spacing = np.array([1.0, 1.0, 1.0]) * (2.2 if size == "tiny" else 1.6) * rng.uniform(0.95, 1.05, 3)
    grid = np.stack(
        np.meshgrid(
            *[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
        )
    )  # mm from the centre, RAS
    extent = np.array(shape) * spacing / 2
    head = (grid / (extent * rng.uniform(0.78, 0.88, 3))[:, None, None, None]) ** 2
    brain = head.sum(0) < 1.0
    wobble = ndimage.zoom(rng.normal(0, 1, (4, 4, 4)), np.array(shape) / 4, order=3)[
        : shape[0], : shape[1], : shape[2]
    ]
    grey = brain & (head.sum(0) > 0.62 + 0.06 * wobble)
    ventricles = (
        (
            (grid - np.array([0, 0, 4])[:, None, None, None])
            / (extent * np.array([0.12, 0.28, 0.16]))[:, None, None, None]
        )
        ** 2
    ).sum(0) < 1.0
    tissue = np.zeros(shape, np.uint8)
    tissue[brain] = 1
    tissue[grey] = 2
    tissue[ventricles & brain] = 3
    label = np.zeros(shape, np.uint8)
    side = rng.choice([-1.0, 1.0])
    centre = np.array(
        [
            side * extent[0] * rng.uniform(0.25, 0.4),
            extent[1] * rng.uniform(-0.3, 0.3),
            extent[2] * rng.uniform(-0.15, 0.2),
        ]
    )
    radius = extent.min() * rng.uniform(0.26, 0.36)
    distance = np.sqrt(
        (((grid - centre[:, None, None, None]) * rng.uniform(0.85, 1.15, 3)[:, None, None, None]) ** 2).sum(0)
    )
    distance = distance + 0.12 * radius * wobble
    oedema, rim, core = distance < 1.9 * radius, distance < radius, distance < 0.6 * radius
    label[oedema & brain] = 1
    label[rim & brain] = 3
    label[core & brain] = 2
    tissue[label == 1], tissue[label == 3], tissue[label == 2] = 4, 6, 5
    bias = np.exp(
        0.15
        * ndimage.zoom(rng.normal(0, 1, (3, 3, 3)), np.array(shape) / 3, order=3)[
            : shape[0], : shape[1], : shape[2]
        ]
    )
    images = []
    for contrast in CONTRASTS[:channels]:
        means = np.array(_TISSUE[contrast], dtype=np.float32) * rng.uniform(0.8, 1.25)
        signal = ndimage.gaussian_filter(means[tissue], 0.7) * bias
        noisy = np.hypot(signal + rng.normal(0, 18, shape), rng.normal(0, 18, shape))
        images.append(np.where(brain, noisy, 0).astype(np.float32))
    image = np.stack(images, axis=-1)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    flips = rng.random(2) < 0.5  # store some cases flipped along x and y (LPS-like), as scanners do
    for axis, flip in enumerate(flips):
        if flip:
            image, label = np.flip(image, axis), np.flip(label, axis)
            affine[:, 3] = affine @ np.array([*(np.eye(3)[axis] * (shape[axis] - 1)), 1.0])
            affine[:3, axis] *= -1
    return BrainPhantom(
        np.ascontiguousarray(image), np.ascontiguousarray(label), affine, CONTRASTS[:channels]
    )


def write_brain_dataset(
    output_dir: str | os.PathLike[str],
    *,
    n_train: int = 16,
    n_test: int = 4,
    seed: int = 0,
    size: str = "default",
    channels: int = 4,
    progress: bool = False,
) -> Path:
    """Write brain phantoms in the MSD Task01 layout: 4D NIfTI images (x, y, z, contrast), ``modality`` with
    one entry per contrast, labels 0–3; test labels in ``labelsTs/`` (not part of MSD). Returns the dataset.json."""
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise InputError(
            f"phantom counts: expected n_train, n_test >= 0 and not both 0, found {n_train}, {n_test}"
        )
    root = Path(output_dir)
    training, test = [], []
    for index in tqdm(
        range(n_train + n_test), desc="phantoms (brain MRI)", disable=not progress, unit="case"
    ):
        phantom = brain_phantom((seed, index), size=size, channels=channels)
        case = f"brain_{index:03d}.nii.gz"
        part = "Tr" if index < n_train else "Ts"
        save_nifti(phantom.image, phantom.affine, root / f"images{part}" / case)
        save_nifti(phantom.label, phantom.affine, root / f"labels{part}" / case)
        if part == "Tr":
            training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{case}"})
        else:
            test.append(f"./imagesTs/{case}")
    dataset = {
        "name": "BrainTumour (voxpipe synthetic phantoms)",
        "description": f"Synthetic {channels}-contrast brain MRI with tumour sub-regions, voxpipe {__version__}, seed {seed}",
        "reference": "voxpipe.phantoms.mri",
        "licence": "CC0",
        "tensorImageSize": "4D",
        "modality": {str(i): c for i, c in enumerate(CONTRASTS[:channels])},
        "labels": BRAIN_LABELS,
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    path = write_text_atomic(root / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    logger.info("wrote %d training and %d test brain phantoms to %s", len(training), len(test), root)
    return path
