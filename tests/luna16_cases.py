"""Candidate lists for the LUNA16 evaluation tests: made by a seeded generator, scored once by the official script.

``write_case(folder, seed)`` writes ``annotations.csv``, ``annotations_excluded.csv``, ``seriesuids.csv``
and ``candidates.csv``, in the LUNA16 format. The lists hold the situations the rules exist for:
several hits on one nodule, hits on excluded findings, missed nodules, scans without nodules or
candidates, negative diameters (10 mm), one candidate inside two overlapping nodules, and a scan with
more than 100 candidates. ``tests/data/luna16_expected.json`` holds what ``noduleCADEvaluationLUNA16.py``
(the LUNA16 evaluation script, computational core, with scikit-learn 1.x) printed for each seed:
CPM (``frvvlu/7``), the seven sensitivities, and its TP/FP/FN counts.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2, 3, 4, 5)


def write_case(folder: Path, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scans = [f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100000 + 37 * k + seed}" for k in range(10 + seed % 3)]
    annotations, excluded, candidates = [], [], []
    for index, scan in enumerate(scans):
        centre = rng.uniform(-150, 150, size=3)
        n_nodules = 0 if index % 4 == 3 else int(rng.integers(1, 5))
        nodules = []
        for _ in range(n_nodules):
            position = centre + rng.uniform(-80, 80, size=3)
            diameter = float(rng.uniform(3, 30)) if rng.random() > 0.1 else -1.0
            nodules.append((position, diameter))
            annotations.append([scan, *position, diameter])
        if nodules and index % 5 == 0:  # an overlapping twin: a candidate near both centres hits both
            position, diameter = nodules[0]
            twin = position + np.array([1.0, 0.5, 0.0])
            annotations.append([scan, *twin, abs(diameter) + 4])
            candidates.append([scan, *(position + twin) / 2, float(rng.uniform(0.2, 1.0))])
        for _ in range(int(rng.integers(0, 3))):  # excluded findings, some with hits
            position = centre + rng.uniform(-80, 80, size=3)
            diameter = float(rng.uniform(3, 15))
            excluded.append([scan, *position, diameter])
            if rng.random() < 0.6:
                candidates.append(
                    [scan, *(position + rng.uniform(-1, 1, size=3) * diameter / 5), float(rng.uniform(0, 1))]
                )
        for position, diameter in nodules:  # hits: none, one or several per nodule
            radius = (diameter if diameter > 0 else 10.0) / 2
            for _ in range(int(rng.choice([0, 1, 1, 1, 2, 3]))):
                offset = rng.normal(size=3)
                offset *= rng.uniform(0, 0.95) * radius / np.linalg.norm(offset)
                candidates.append([scan, *(position + offset), float(rng.beta(5, 2))])
            if rng.random() < 0.2:  # just outside the sphere: a false positive
                offset = rng.normal(size=3)
                offset *= 1.05 * radius / np.linalg.norm(offset)
                candidates.append([scan, *(position + offset), float(rng.beta(3, 3))])
        n_false = 150 if index == 1 else int(rng.integers(0, 25))  # scan 1 exceeds the 100-mark cap
        for _ in range(n_false):
            candidates.append([scan, *(centre + rng.uniform(-120, 120, size=3)), float(rng.beta(2, 5))])
    candidates.append([scans[2] + "9", 0.0, 0.0, 0.0, 0.99])  # a scan that is not listed: ignored
    order = rng.permutation(len(candidates))
    candidates = [candidates[i] for i in order]
    paths = {
        name: folder / f"{name}.csv"
        for name in ("annotations", "annotations_excluded", "candidates", "seriesuids")
    }
    for name, rows, value in (
        ("annotations", annotations, "diameter_mm"),
        ("annotations_excluded", excluded, "diameter_mm"),
        ("candidates", candidates, "probability"),
    ):
        with paths[name].open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", value])
            writer.writerows([[row[0], *(repr(float(v)) for v in row[1:])] for row in rows])
    with paths["seriesuids"].open("w", newline="") as handle:
        csv.writer(handle).writerows([[scan] for scan in scans])
    return paths
