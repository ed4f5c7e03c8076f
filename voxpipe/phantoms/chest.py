"""Chest CT phantoms with annotated lung nodules, in the LUNA16 layout (``voxpipe synth nodules-ct``).

Each scan is :func:`voxpipe.phantoms.ct.lung_phantom` (lungs, branching vessels that look like
nodules in cross-section, airways, ribs, mediastinum). Its tumours become annotated solid nodules,
and 0–6 nodules in all are placed in the lungs, 3–30 mm across:

* kinds: *solid* (0…60 HU), *part-solid* (a solid core in a ground-glass halo, −650…−350 HU) and
  *calcified* (300…800 HU);
* locations: *juxtapleural* (touching the chest wall), *juxtavascular* (touching a vessel) or
  *isolated*.

One scan in five (seeds 4, 9, 14, ...) has none. Findings under 3 mm are written to ``annotations_excluded.csv``,
as LUNA16 excludes them.

Coordinates follow LUNA16: ``coordX, coordY, coordZ`` are the nodule centre in world mm in the
image's LPS physical space (ITK's, as in the ``.mhd`` files), and ``diameter_mm`` is the diameter of
the sphere of the same volume. ``instances/<uid>.nii.gz`` is the instance label map (nodule i → i,
in CSV order) on the image grid, and ``boxes/<uid>.json`` the nodules' boxes in world mm
(``world_lps``, ``cccwhd``; :mod:`voxpipe.transforms.boxes`). Images are ``.mha`` files named by series UID.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from voxpipe.transforms.boxes import (
    boxes_from_instances,
    points_to_world,
    voxel_boxes_to_world,
    write_boxes_json,
)
from voxpipe.transforms.files import atomic_path, write_text_atomic
from voxpipe.transforms.io import save_nifti, write_volume

KINDS = ("solid", "part-solid", "calcified")
LOCATIONS = ("isolated", "juxtapleural", "juxtavascular")


@dataclass
class ChestCase:
    """One scan: ``image`` (HU, x y z), RAS ``affine``, instance map and the nodule and excluded-finding lists."""

    series_uid: str
    image: np.ndarray
    affine: np.ndarray
    instances: np.ndarray
    nodules: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)


def _sphere(
    shape: tuple[int, ...], spacing: np.ndarray, centre: np.ndarray, radius: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, squared distance in mm² from ``centre`` (voxel index) within the box) for a sphere of ``radius`` mm."""
    reach = np.ceil((radius + 2) / spacing).astype(int)
    low = np.maximum(np.floor(centre).astype(int) - reach, 0)
    high = np.minimum(np.ceil(centre).astype(int) + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(low, high, centre, spacing, strict=True)]
    distance = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return box, distance


def chest_case(seed: int, *, size: str = "default", max_nodules: int = 6) -> ChestCase:
    """One chest CT with nodules (module docstring); same seed, same case."""
    from pydicom.uid import generate_uid

    from voxpipe.phantoms.ct import lung_phantom

    rng = np.random.default_rng([seed, 2026])
    phantom = lung_phantom(seed, size=size)
    hu = phantom.image.astype(np.float32)
    spacing = np.linalg.norm(phantom.affine[:3, :3], axis=0)
    lungs = phantom.extra_labels["lungs"] > 0
    inner = ndimage.binary_erosion(lungs, iterations=1)
    vessels = lungs & (hu > -300) & (phantom.label == 0)
    instances = np.zeros(hu.shape, dtype=np.uint8)
    nodules: list[dict[str, Any]] = []

    def add(mask: np.ndarray, kind: str, location: str) -> None:
        nodules.append({"mask": mask, "kind": kind, "location": location})

    wanted = 0 if seed % 5 == 4 else int(rng.integers(1, max_nodules + 1))  # one scan in five has no nodule
    if wanted == 0:  # a scan without nodules: the lung phantom's tumours become lung again
        hu[phantom.label > 0] = float(np.median(hu[lungs & (phantom.label == 0) & ~vessels]))
    else:  # the lung phantom's own tumours are solid nodules
        components, count = ndimage.label(phantom.label > 0)
        for k in range(1, count + 1):
            add(components == k, "solid", "isolated")
    candidates = np.argwhere(inner & ~vessels)
    pleura = np.argwhere(lungs & ~inner)
    vessel_points = np.argwhere(ndimage.binary_dilation(vessels, iterations=1) & inner & ~vessels)
    attempts = 0
    while len(nodules) < wanted and attempts < 50 and len(candidates):
        attempts += 1
        location = LOCATIONS[int(rng.integers(0, 3))]
        pool = {"isolated": candidates, "juxtapleural": pleura, "juxtavascular": vessel_points}[location]
        if not len(pool):
            continue
        centre = pool[int(rng.integers(0, len(pool)))].astype(float) + rng.uniform(-0.3, 0.3, 3)
        diameter = float(np.exp(rng.uniform(np.log(3.2), np.log(30.0))))
        kind = KINDS[int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
        box, distance = _sphere(hu.shape, spacing, centre, diameter / 2)
        ball = distance <= (diameter / 2) ** 2
        mask = np.zeros(hu.shape, dtype=bool)
        mask[box] = (
            ball & lungs[box] if location != "juxtapleural" else ball & (lungs[box] | (hu[box] > -500))
        )
        if mask.sum() < 4 or (instances[mask] > 0).any() or (phantom.label[mask] > 0).any():
            continue
        region = hu[box]
        if kind == "part-solid":
            halo = ball & (distance > (0.45 * diameter / 2) ** 2)
            region[ball] = rng.uniform(20, 60)
            region[halo] = rng.uniform(-650, -350)
        else:
            region[ball & mask[box]] = rng.uniform(300, 800) if kind == "calcified" else rng.uniform(0, 60)
        add(mask, kind, location)
        instances[mask] = len(nodules)
    # Findings under 3 mm, excluded from scoring (as LUNA16's).
    excluded = []
    for _ in range(int(rng.integers(0, 3))):
        if not len(candidates):
            break
        centre = candidates[int(rng.integers(0, len(candidates)))].astype(float)
        diameter = float(rng.uniform(1.5, 2.8))
        box, distance = _sphere(hu.shape, spacing, centre, diameter / 2)
        hu[box][distance <= (diameter / 2) ** 2] = rng.uniform(0, 60)
        excluded.append({"centre": centre, "diameter_mm": diameter})
    # Smooth the inserted densities into their surroundings a little and add the scanner's noise.
    inserted = instances > 0
    blurred = ndimage.gaussian_filter(hu, 0.6)
    hu = (
        np.where(ndimage.binary_dilation(inserted, iterations=1), blurred, hu)
        + rng.normal(0, 12, hu.shape) * inserted
    )
    instances[:] = 0
    voxel_ml = float(np.prod(spacing)) / 1000
    records = []
    for number, nodule in enumerate(nodules, start=1):
        mask = nodule["mask"]
        instances[mask] = number
        centre = np.array(ndimage.center_of_mass(mask))
        diameter = 2 * (3 * mask.sum() * voxel_ml * 1000 / (4 * np.pi)) ** (1 / 3)
        records.append(
            {
                "coord": points_to_world(centre, phantom.affine, space="world_lps")[0],
                "diameter_mm": float(diameter),
                "kind": nodule["kind"],
                "location": nodule["location"],
                "voxels": int(mask.sum()),
            }
        )
    skipped = [
        {
            "coord": points_to_world(e["centre"], phantom.affine, space="world_lps")[0],
            "diameter_mm": e["diameter_mm"],
        }
        for e in excluded
    ]
    uid = generate_uid(
        prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["voxpipe chest phantom", str(seed), size]
    )
    return ChestCase(
        uid, np.clip(np.round(hu), -1024, 3071).astype(np.int16), phantom.affine, instances, records, skipped
    )


def write_nodule_ct_dataset(
    output_dir: str | os.PathLike[str], *, n: int = 10, seed: int = 0, size: str = "default"
) -> Path:
    """Write ``n`` chest CTs with nodules in the LUNA16 layout; the folder.

    Files: ``images/<uid>.mha``, ``instances/<uid>.nii.gz``, ``boxes/<uid>.json``, ``annotations.csv``,
    ``annotations_excluded.csv``, ``seriesuids.csv``, ``nodules.json`` (kind, location and voxel
    count of every nodule; the coordinate convention).
    """
    root = Path(output_dir)
    rows, excluded_rows, uids, details = [], [], [], []
    for index in range(n):
        case = chest_case(seed * 1000 + index, size=size)
        write_volume(case.image, case.affine, root / "images" / f"{case.series_uid}.mha")
        save_nifti(case.instances, case.affine, root / "instances" / f"{case.series_uid}.nii.gz")
        voxel_boxes, values = boxes_from_instances(case.instances)
        write_boxes_json(
            root / "boxes" / f"{case.series_uid}.json",
            voxel_boxes_to_world(voxel_boxes, case.affine),
            space="world_lps",
            mode="cccwhd",
            labels=[1] * len(values),
            image=f"images/{case.series_uid}.mha",
            extra=[{"instance": int(v)} for v in values],
        )
        uids.append(case.series_uid)
        for number, nodule in enumerate(case.nodules, start=1):
            rows.append(
                [case.series_uid, *(f"{v:.6f}" for v in nodule["coord"]), f"{nodule['diameter_mm']:.6f}"]
            )
            details.append(
                {
                    "seriesuid": case.series_uid,
                    "instance": number,
                    **{k: v for k, v in nodule.items() if k != "coord"},
                    "coord_lps_mm": [round(float(v), 6) for v in nodule["coord"]],
                }
            )
        for finding in case.excluded:
            excluded_rows.append(
                [case.series_uid, *(f"{v:.6f}" for v in finding["coord"]), f"{finding['diameter_mm']:.6f}"]
            )
    header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    for name, table in (("annotations.csv", rows), ("annotations_excluded.csv", excluded_rows)):
        with atomic_path(root / name) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(table)
    write_text_atomic(root / "seriesuids.csv", "".join(f"{uid}\n" for uid in uids))
    write_text_atomic(
        root / "nodules.json",
        json.dumps(
            {
                "coordinates": "world mm, LPS (ITK physical space of images/*.mha), nodule centre of mass",
                "diameter": "diameter of the sphere of the nodule's volume (mm)",
                "nodules": details,
            },
            indent=2,
        )
        + "\n",
    )
    return root
