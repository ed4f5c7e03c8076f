"""Candidate lists for the LUNA16 evaluation tests: made by a seeded generator, scored once by the official script.

``write_case(folder, seed)`` writes ``annotations.csv``, ``annotations_excluded.csv``, ``seriesuids.csv``
and ``candidates.csv``, in the LUNA16 format. The lists hold the situations the rules exist for:
several hits on one nodule, hits on excluded findings, missed nodules, scans without nodules or
candidates, negative diameters (10 mm), one candidate inside two overlapping nodules, and a scan with
more than 100 candidates. ``tests/data/luna16_expected.json`` holds what ``noduleCADEvaluationLUNA16.py``
(the LUNA16 evaluation script, computational core, with scikit-learn 1.x) printed for each seed:
CPM (``frvvlu/7``), the seven sensitivities, and its TP/FP/FN counts.

``write_varied_case(folder, seed)`` (seeds :data:`VARIED_SEEDS`) draws the situations where an
implementation can drift from the script: probabilities on a coarse grid (ties between true and
false positives), 8 or 16 scans with false-positive counts that put FP rates exactly on 1/8 ... 8,
scans with no candidate or no nodule, a system with no false positive, more than 100 candidates
with ties at the cut, candidates exactly on a sphere's surface, and zero-diameter nodules.
``tests/oracles/luna16_regenerate.py`` rewrites ``tests/data/luna16_expected.json`` from the script.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2, 3, 4, 5)
VARIED_SEEDS = tuple(range(100, 400))


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
    return _write_lists(folder, scans, annotations, excluded, [candidates[i] for i in order])


def write_varied_case(folder: Path, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_scans = int(rng.choice([1, 3, 8, 16, 25]))
    scans = [f"1.2.840.{seed}.{k}" for k in range(n_scans)]
    coarse = rng.random() < 0.5  # probabilities on a 0.1 grid: many ties

    def probability(high: bool) -> float:
        value = rng.beta(5, 2) if high else rng.beta(2, 4)
        return round(float(value), 1) if coarse else float(value)

    annotations, excluded, candidates = [], [], []
    no_false_positives = rng.random() < 0.05
    detected_any = False
    for index, scan in enumerate(scans):
        centre = rng.uniform(-100, 100, size=3)
        n_nodules = int(rng.choice([0, 0, 1, 1, 2, 3]))
        for _ in range(n_nodules):
            position = centre + rng.uniform(-60, 60, size=3)
            diameter = float(
                rng.choice([0.0, -1.0, 4.0, 6.0, float(rng.uniform(3, 25))], p=[0.05, 0.1, 0.15, 0.2, 0.5])
            )
            annotations.append([scan, *position, diameter])
            radius = (diameter if diameter >= 0 else 10.0) / 2
            for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                if radius > 0 and rng.random() < 0.1:  # exactly on an axis-aligned surface point: not a hit
                    offset = np.array([radius, 0.0, 0.0])
                else:
                    offset = direction * rng.uniform(0, 0.9) * radius
                candidates.append([scan, *(position + offset), probability(True)])
                detected_any = detected_any or radius > 0
        if rng.random() < 0.3:
            position = centre + rng.uniform(-60, 60, size=3)
            excluded.append([scan, *position, float(rng.uniform(3, 12))])
            for _ in range(int(rng.integers(0, 3))):
                candidates.append([scan, *(position + rng.uniform(-1, 1, size=3)), probability(False)])
        if not no_false_positives:
            n_false = int(rng.choice([0, 1, 2, 4, 8, 130])) if index % 7 else int(rng.integers(0, 3))
            for _ in range(n_false):
                candidates.append(
                    [scan, *(centre + rng.uniform(-150, 150, size=3) + 200), probability(False)]
                )
    if not annotations or not detected_any:  # the script divides by the nodules found: keep at least one
        position = rng.uniform(-50, 50, size=3)
        annotations.append([scans[0], *position, 8.0])
        candidates.append([scans[0], *position, probability(True)])
    order = rng.permutation(len(candidates))
    return _write_lists(folder, scans, annotations, excluded, [candidates[i] for i in order])


def _write_lists(folder: Path, scans, annotations, excluded, candidates) -> dict[str, Path]:
    """The four LUNA16 CSVs (coordinates written with repr: read back bit for bit)."""
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
