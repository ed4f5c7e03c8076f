"""Synthetic lung-nodule patches in HU for classification tests and demos (``voxpipe synth nodules``).

Two classes a CNN can learn, with the cues radiologists use and nuisance variation that makes
shortcuts fail:

- **benign (0)**: a smooth, round or slightly oval nodule with a sharp margin; some are calcified
  (dense, +200…+600 HU), as benign granulomas often are.
- **malignant (1)**: a lobulated nodule (radius modulated over the surface) with spicules (thin
  strands radiating into the lung), slightly heterogeneous.

Shared nuisances: nodule size (3–14 mm radius, overlapping between classes), lung texture, vessels
crossing the patch, a chest wall on one side in some patches, the position of the centre (±3 mm),
noise level (σ 10–45 HU) and a little blur. Patches are cubes at 1 mm spacing, written as NIfTI with a
nodule mask, and listed in ``dataset.json`` (``training``/``test``) and ``labels.csv``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from voxpipe import __version__
from voxpipe.errors import InputError
from voxpipe.transforms.files import atomic_path, write_text_atomic
from voxpipe.transforms.io import save_nifti

CLASSES = ("benign", "malignant")


@dataclass
class NodulePatch:
    """One patch: ``image`` (X, Y, Z) float32 HU at 1 mm, ``mask`` (X, Y, Z) uint8 nodule, class ``label``."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    radius_mm: float


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _segment_distance(
    points: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of (..., 3) points to the segment start→end, and the position t ∈ [0, 1] along it."""
    axis = end - start
    t = np.clip(((points - start) @ axis) / float(axis @ axis), 0.0, 1.0)
    nearest = start + t[..., None] * axis
    return np.linalg.norm(points - nearest, axis=-1), t


def _lung_background(rng: np.random.Generator, coords: np.ndarray, size: int) -> np.ndarray:
    texture = gaussian_filter(rng.normal(size=(size,) * 3), 2.0)
    image = -860.0 + 25.0 * texture / (texture.std() + 1e-6)
    for _ in range(rng.integers(1, 5)):  # vessels: straight tubes crossing the patch, away from the centre
        direction = _unit_vectors(rng, 1)[0]
        offset = _unit_vectors(rng, 1)[0] * rng.uniform(8, size / 2)
        half = direction * size
        distance, _ = _segment_distance(coords, offset - half, offset + half)
        radius = rng.uniform(0.8, 2.2)
        image = np.maximum(image, -860.0 + 900.0 / (1.0 + np.exp((distance - radius) / 0.4)))
    if rng.random() < 0.3:  # chest wall on one side
        normal = _unit_vectors(rng, 1)[0]
        depth = coords @ normal - rng.uniform(14, size / 2 - 2)
        image = np.maximum(image, -860.0 + 900.0 / (1.0 + np.exp(-depth / 0.7)))
    return image


def nodule_patch(rng: np.random.Generator, *, malignant: bool, size: int = 48) -> NodulePatch:
    """One synthetic nodule patch of ``size``³ voxels at 1 mm (see the module docstring)."""
    centre = (size - 1) / 2 + rng.uniform(-3, 3, size=3)
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij"), axis=-1)
    coords = grid - (size - 1) / 2
    points = grid - centre
    distance = np.linalg.norm(points, axis=-1) + 1e-6
    direction = points / distance[..., None]
    image = _lung_background(rng, coords, size)

    if malignant:
        radius = rng.uniform(4.0, 14.0)
        lobes = np.zeros_like(distance)
        for axis in _unit_vectors(rng, rng.integers(3, 7)):
            lobes += np.cos(np.pi * rng.uniform(2, 4) * (direction @ axis) + rng.uniform(0, 2 * np.pi))
        surface = radius * (1.0 + rng.uniform(0.15, 0.3) * lobes / np.abs(lobes).max())
        body = 1.0 / (1.0 + np.exp((distance - surface) / 0.5))
        density = rng.uniform(-20, 60) + 40.0 * gaussian_filter(rng.normal(size=distance.shape), 1.5)
        spicules = np.zeros_like(distance)
        for axis in _unit_vectors(rng, rng.integers(6, 17)):
            start = centre + axis * radius * 0.8
            end = centre + axis * radius * rng.uniform(1.5, 2.5)
            d, t = _segment_distance(grid, start, end)
            width = rng.uniform(0.7, 1.2) * (1.0 - 0.6 * t)  # tapering strands
            spicules = np.maximum(spicules, 1.0 / (1.0 + np.exp((d - width) / 0.3)))
        presence = np.maximum(body, 0.8 * spicules)
    else:
        radius = rng.uniform(3.0, 12.0)
        stretch = rng.uniform(0.8, 1.0, size=3)
        distance_oval = np.linalg.norm(points / stretch, axis=-1)
        presence = body = 1.0 / (1.0 + np.exp((distance_oval - radius) / 0.35))
        density = rng.uniform(200, 600) if rng.random() < 0.25 else rng.uniform(-30, 70)
    image = image * (1 - presence) + density * presence
    image = gaussian_filter(image, rng.uniform(0.3, 0.8)) + rng.normal(
        0, rng.uniform(10, 45), size=image.shape
    )
    return NodulePatch(image.astype(np.float32), (body > 0.5).astype(np.uint8), int(malignant), float(radius))


def write_nodule_dataset(
    output: str | os.PathLike[str],
    *,
    n_train: int = 200,
    n_test: int = 100,
    seed: int = 0,
    size: int = 48,
    progress: bool = False,
) -> Path:
    """Write balanced benign/malignant patches: ``imagesTr/``, ``masksTr/``, ``imagesTs/``, ``masksTs/``,
    ``dataset.json`` (``training``/``test`` lists of ``{image, mask, label, case}``) and ``labels.csv``.

    Patch ``i`` is drawn from ``(seed, i)`` alone, so the same seed always gives the same files.
    Returns the path of ``dataset.json``.
    """
    if n_train < 2 or n_test < 0 or size < 24:
        raise InputError(
            f"nodules: expected n_train ≥ 2, n_test ≥ 0 and size ≥ 24, found {n_train}, {n_test}, {size}"
        )
    root = Path(output)
    sections: dict[str, list[dict[str, object]]] = {"training": [], "test": []}
    cases = [(i, i < n_train) for i in range(n_train + n_test)]
    for index, is_train in tqdm(cases, desc="nodule patches", disable=not progress, unit="patch"):
        rng = np.random.default_rng((seed, index))
        patch = nodule_patch(rng, malignant=bool(index % 2), size=size)
        part = "Tr" if is_train else "Ts"
        name = f"nodule_{index:04d}.nii.gz"
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        affine[:3, 3] = rng.uniform(-150, 150, size=3)
        save_nifti(np.round(patch.image).astype(np.int16), affine, root / f"images{part}" / name)
        save_nifti(patch.mask, affine, root / f"masks{part}" / name)
        sections["training" if is_train else "test"].append(
            {
                "image": f"./images{part}/{name}",
                "mask": f"./masks{part}/{name}",
                "label": patch.label,
                "case": name.removesuffix(".nii.gz"),
            }
        )
    manifest = {
        "name": "voxpipe synthetic lung nodules",
        "description": f"Synthetic benign/malignant nodule patches made by voxpipe {__version__}, seed {seed}",
        "classes": {str(i): c for i, c in enumerate(CLASSES)},
        "patch_size": [size] * 3,
        "spacing_mm": [1.0, 1.0, 1.0],
        "numTraining": n_train,
        "numTest": n_test,
        **sections,
    }
    path = write_text_atomic(root / "dataset.json", json.dumps(manifest, indent=2))
    with atomic_path(root / "labels.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "case", "split"])
        for section, split in (("training", "train"), ("test", "test")):
            for item in sections[section]:
                writer.writerow([item["image"], item["mask"], item["label"], item["case"], split])
    return path
