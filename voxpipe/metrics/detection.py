"""Nodule detection scored by the LUNA16 rules: FROC and CPM, with a bootstrap over scans.

Why our own: MONAI's ``compute_froc_score`` takes FP rates and sensitivities that have already been
computed, and its ``compute_fp_tp_probs`` uses CAMELYON's region rule. Neither does what the LUNA16
evaluation script (``noduleCADEvaluationLUNA16.py``) does, and published CPMs come from that script.
This module follows it rule for rule, so the figures are the same on the same inputs:

* at most ``max_marks`` (100) candidates per scan. With more, only those above the 101st highest
  probability are kept, in file order, up to 100;
* a candidate *hits* a nodule when its centre lies strictly inside the nodule's sphere (squared
  distance < radius²; a negative diameter counts as 10 mm);
* for each nodule in the reference list, its hits leave the false-positive pool, and the nodule
  scores the highest probability among them. Several hits on one nodule count once, and the others are
  ignored. A missed nodule counts in the sensitivity's denominator only;
* candidates that hit an excluded finding (``annotations_excluded.csv``) and no nodule are ignored;
* every other candidate of a listed scan is a false positive. FPs per scan are divided by the
  number of listed scans, including scans with no candidate and scans with no nodule;
* the FROC curve is the ROC curve of the kept entries (scikit-learn's ``roc_curve`` algorithm,
  intermediate collinear points dropped) rescaled to FPs per scan and overall sensitivity. The CPM is
  the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan, read off the curve linearly
  interpolated on the script's grid (10001 points from 1/8 to 8, the grid point within 3e-4 of each rate).

The confidence interval resamples scans with replacement (``n_bootstrap``, seeded) and takes the
2.5th and 97.5th percentiles of the resampled CPMs and sensitivities.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import InputError

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_MARKS = 100
MISSED = -1000000000.0  # the script's probability for a missed nodule (excluded from the ROC)


@dataclass(frozen=True)
class Finding:
    """A point in world mm (LUNA16: x, y, z as in the CSV) with a diameter (annotations) or a probability (candidates)."""

    series: str
    x: float
    y: float
    z: float
    value: float  # diameter_mm for annotations, probability for candidates


@dataclass
class FrocResult:
    """The FROC of a candidate list: entries, curve, sensitivities at :data:`FP_RATES`, CPM and bootstrap CIs."""

    n_scans: int
    n_nodules: int
    n_candidates: int
    true_positives: int
    false_positives: int
    false_negatives: int
    ignored_on_excluded: int
    ignored_double_hits: int
    fps: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    sensitivity_at: dict[float, float]
    cpm: float
    ci: dict[str, Any] = field(default_factory=dict)
    coco: dict[str, float] | None = None  # COCO-style AP/recall, when the candidates came with boxes
    # Rows under a series UID that is not among the scans evaluated: not scored (as the script), but counted.
    unlisted_candidates: int = 0
    unlisted_nodules: int = 0
    unlisted_scans: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "scans": self.n_scans,
            "nodules": self.n_nodules,
            "candidates": self.n_candidates,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "ignored_on_excluded": self.ignored_on_excluded,
            "ignored_double_hits": self.ignored_double_hits,
            "unlisted_candidates": self.unlisted_candidates,
            "unlisted_nodules": self.unlisted_nodules,
            "unlisted_scans": self.unlisted_scans,
            "sensitivity_at": {str(k): v for k, v in self.sensitivity_at.items()},
            "cpm": self.cpm,
            **self.ci,
        }


def read_findings(path: str | os.PathLike[str], *, value: str) -> list[Finding]:
    """Rows of a LUNA16 CSV (``seriesuid, coordX, coordY, coordZ`` and ``value``: ``diameter_mm`` or ``probability``).

    Cells are stripped of surrounding spaces (a ``", "`` separator would otherwise put a space in
    front of every series UID, which then matches no scan: the official script scores such a file
    as nothing found). A row with more or fewer cells than the header is refused: decimal commas in
    unquoted cells (``12,5``) shift every column after them.

    Raises:
        InputError: no such file, a missing column, a row of the wrong width, or a cell that is not a
            finite number (with its line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: expected a LUNA16 CSV file, found nothing at that path")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise InputError(
            f"{str(path)!r}: expected a header (seriesuid,coordX,coordY,coordZ,{value}), found an empty file"
        )
    header = [h.strip() for h in rows[0]]
    wanted = ["seriesuid", "coordX", "coordY", "coordZ", value]
    missing = [c for c in wanted if c not in header]
    if missing:
        semicolons = len(header) == 1 and ";" in header[0]
        raise InputError(
            f"{str(path)!r}: expected the columns {wanted}, found {header} (missing {missing})",
            hint="separate cells with commas (this file uses semicolons)" if semicolons else None,
        )
    index = [header.index(c) for c in wanted]
    findings = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(
                f"{str(path)!r}: line {number}: expected {len(header)} cells as in the header, found {len(row)}: {row}",
                hint="decimal commas (12,5) split a number in two: write 12.5, or quote the cell",
            )
        try:
            series = row[index[0]].strip()
            numbers = [float(row[i]) for i in index[1:]]
        except ValueError:
            raise InputError(
                f"{str(path)!r}: line {number}: expected numbers in {wanted[1:]}, found {row}"
            ) from None
        if not series:
            raise InputError(f"{str(path)!r}: line {number}: expected a seriesuid, found an empty cell")
        if not all(math.isfinite(v) for v in numbers):
            raise InputError(f"{str(path)!r}: line {number}: expected finite numbers, found {row}")
        findings.append(Finding(series, *numbers))
    return findings


def finding_cubes(findings: Sequence[Finding]) -> dict[str, np.ndarray]:
    """Per scan, the ``xyzxyz`` box of each finding in its own world mm: the cube of its diameter around
    its centre (how LUNA16 rows become boxes); a negative diameter counts as 10 mm, as the script's rule."""
    cubes: dict[str, list[list[float]]] = {}
    for f in findings:
        half = f.value / 2 if f.value > 0 else 5.0
        cubes.setdefault(f.series, []).append(
            [f.x - half, f.y - half, f.z - half, f.x + half, f.y + half, f.z + half]
        )
    return {series: np.asarray(boxes, dtype=float) for series, boxes in cubes.items()}


def read_seriesuids(path: str | os.PathLike[str]) -> list[str]:
    """The first cell of each row, stripped (the LUNA16 ``seriesuids.csv`` has no header; a
    ``seriesuid`` header row is skipped). Repeated UIDs count once.

    Raises:
        InputError: no such file, or no UID in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: expected a CSV of series UIDs, found nothing at that path")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        uids = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    uids = list(dict.fromkeys(u for u in uids if u != "seriesuid"))
    if not uids:
        raise InputError(f"{str(path)!r}: expected one series UID per line, found none")
    return uids


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as scikit-learn's ``roc_curve`` computes them (``drop_intermediate=True``).

    Own code so that scikit-learn is not a runtime dependency; the tests check it against scikit-learn.
    """
    truth, scores = np.asarray(truth, dtype=float), np.asarray(scores, dtype=float)
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, truth = scores[order], truth[order]
    distinct = np.where(np.diff(scores))[0]
    ends = np.r_[distinct, truth.size - 1]
    tps = np.cumsum(truth)[ends]
    fps = 1 + ends - tps
    thresholds = scores[ends]
    if len(fps) > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps, thresholds = np.r_[0, tps], np.r_[0, fps], np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def _cap(candidates: list[Finding], max_marks: int) -> list[Finding]:
    """The script's per-scan limit: above the (max_marks+1)-th highest probability, in file order, at most max_marks."""
    if max_marks <= 0 or len(candidates) <= max_marks:
        return candidates
    threshold = sorted((c.value for c in candidates), reverse=True)[max_marks]
    return [c for c in candidates if c.value > threshold][:max_marks]


def _entries(
    scans: Sequence[str],
    nodules: Mapping[str, list[tuple[Finding, bool]]],
    candidates: Mapping[str, list[Finding]],
) -> tuple[list[tuple[float, float, bool, str]], dict[str, int]]:
    """The script's FROC entries (truth, probability, excluded from the ROC, scan) and its counts."""
    entries: list[tuple[float, float, bool, str]] = []
    counts = {
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "nodules": 0,
        "ignored_excluded": 0,
        "ignored_double": 0,
        "candidates": 0,
    }
    for scan in scans:
        marks = candidates.get(scan, [])
        counts["candidates"] += len(marks)
        remaining = dict.fromkeys(range(len(marks)))
        points = np.array([[c.x, c.y, c.z] for c in marks], dtype=float).reshape(-1, 3)
        for nodule, included in nodules.get(scan, []):
            if included:
                counts["nodules"] += 1
            diameter = nodule.value if nodule.value >= 0.0 else 10.0
            distance = ((points - np.array([nodule.x, nodule.y, nodule.z])) ** 2).sum(axis=1)
            hits = [int(i) for i in np.flatnonzero(distance < (diameter / 2.0) ** 2)]
            if included:
                for i in hits:
                    remaining.pop(i, None)
                if len(hits) > 1:
                    counts["ignored_double"] += len(hits) - 1
                if hits:
                    entries.append((1.0, max(marks[i].value for i in hits), False, scan))
                    counts["tp"] += 1
                else:
                    entries.append((1.0, MISSED, True, scan))
                    counts["fn"] += 1
            else:
                for i in hits:
                    if i in remaining:
                        counts["ignored_excluded"] += 1
                        del remaining[i]
        for i in remaining:
            entries.append((0.0, marks[i].value, False, scan))
            counts["fp"] += 1
    return entries, counts


def _froc(
    entries: Sequence[tuple[float, float, bool, str]], n_scans: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.array([e[0] for e in entries], dtype=float)
    probability = np.array([e[1] for e in entries], dtype=float)
    excluded = np.array([e[2] for e in entries], dtype=bool)
    kept_truth, kept_probability = truth[~excluded], probability[~excluded]
    detected, total = kept_truth.sum(), truth.sum()
    if kept_truth.size == 0 or total == 0:
        return np.zeros(1), np.zeros(1), np.array([np.inf])
    fpr, tpr, thresholds = roc_curve(kept_truth, kept_probability)
    if truth.sum() == len(truth):  # no false positive at all
        fps = np.zeros(len(fpr))
    else:
        fps = fpr * (kept_truth.size - detected) / n_scans
    if detected == 0:  # every nodule missed: the ROC has no positive; sensitivity is 0 throughout
        tpr = np.zeros(len(fpr))
    sensitivity = tpr * detected / total
    return fps, sensitivity, thresholds


_GRID = np.linspace(FP_RATES[0], FP_RATES[-1], num=10001)  # the script's interpolation grid
# The grid point within 3e-4 of each rate (the only one: the grid step is 7.9e-4), where the script reads the curve.
_READ_AT = np.array([_GRID[int(np.argmin(np.abs(_GRID - rate)))] for rate in FP_RATES])


def _at_rates(fps: np.ndarray, sensitivity: np.ndarray) -> dict[float, float]:
    """Sensitivity at :data:`FP_RATES`, read as the script does (its grid of 10001 points, the point within 3e-4)."""
    return {
        rate: float(value)
        for rate, value in zip(FP_RATES, np.interp(_READ_AT, fps, sensitivity), strict=True)
    }


def luna16_froc(
    candidates: Sequence[Finding],
    annotations: Sequence[Finding],
    *,
    excluded: Sequence[Finding] = (),
    seriesuids: Sequence[str] | None = None,
    max_marks: int = MAX_MARKS,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> FrocResult:
    """FROC, sensitivities at 1/8–8 FPs per scan and CPM by the LUNA16 rules (module docstring).

    Args:
        candidates: detections (``value`` = probability), world mm.
        annotations: reference nodules (``value`` = diameter in mm).
        excluded: findings whose hits are ignored (``annotations_excluded.csv``).
        seriesuids: the scans evaluated (FPs per scan divide by their number). Default: every scan
            that has an annotation or a candidate.
        n_bootstrap: resamples of the scans for the CIs (0: none).
    """
    if seriesuids is None:
        seriesuids = list(dict.fromkeys([f.series for f in annotations] + [f.series for f in candidates]))
    scans = list(dict.fromkeys(seriesuids))
    if not scans:
        raise InputError(
            "evaluate-detections: expected at least one scan (annotations, candidates or --seriesuids), found none"
        )
    by_scan: dict[str, list[Finding]] = {}
    for candidate in candidates:
        by_scan.setdefault(candidate.series, []).append(candidate)
    by_scan = {scan: _cap(marks, max_marks) for scan, marks in by_scan.items()}
    nodules: dict[str, list[tuple[Finding, bool]]] = {}
    for finding, included in [(a, True) for a in annotations] + [(e, False) for e in excluded]:
        nodules.setdefault(finding.series, []).append((finding, included))
    entries, counts = _entries(scans, nodules, by_scan)
    fps, sensitivity, thresholds = _froc(entries, len(scans))
    at = _at_rates(fps, sensitivity) if counts["nodules"] else {rate: float("nan") for rate in FP_RATES}
    cpm = float(np.mean(list(at.values())))
    result = FrocResult(
        len(scans),
        counts["nodules"],
        counts["candidates"],
        counts["tp"],
        counts["fp"],
        counts["fn"],
        counts["ignored_excluded"],
        counts["ignored_double"],
        fps,
        sensitivity,
        thresholds,
        at,
        cpm,
    )
    listed = set(scans)
    result.unlisted_candidates = sum(c.series not in listed for c in candidates)
    result.unlisted_nodules = sum(a.series not in listed for a in annotations)
    result.unlisted_scans = sorted({f.series for f in (*candidates, *annotations)} - listed)
    if n_bootstrap and counts["nodules"]:
        result.ci = _bootstrap(entries, scans, n_bootstrap, seed)
    return result


def _bootstrap(
    entries: Sequence[tuple[float, float, bool, str]], scans: Sequence[str], n: int, seed: int
) -> dict[str, Any]:
    """Percentile CIs of the CPM and of each sensitivity, resampling scans with replacement."""
    per_scan: dict[str, list[tuple[float, float, bool, str]]] = {}
    for entry in entries:
        per_scan.setdefault(entry[3], []).append(entry)
    rng = np.random.default_rng(seed)
    cpms, rows = [], []
    for _ in range(n):
        sample = rng.integers(0, len(scans), size=len(scans))
        resampled = [e for i in sample for e in per_scan.get(scans[i], [])]
        if not any(e[0] for e in resampled):
            continue  # no nodule drawn: sensitivity undefined for this resample
        fps, sensitivity, _ = _froc(resampled, len(scans))
        at = _at_rates(fps, sensitivity)
        rows.append([at[r] for r in FP_RATES])
        cpms.append(float(np.mean(list(at.values()))))
    if not cpms:
        return {}
    table = np.array(rows)
    return {
        "bootstrap_samples": len(cpms),
        "cpm_ci95": [float(np.percentile(cpms, 2.5)), float(np.percentile(cpms, 97.5))],
        "sensitivity_ci95": {
            str(rate): [float(np.percentile(table[:, k], 2.5)), float(np.percentile(table[:, k], 97.5))]
            for k, rate in enumerate(FP_RATES)
        },
    }
