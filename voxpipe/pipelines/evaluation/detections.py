"""``voxpipe evaluate-detections``: a LUNA16 candidate list scored by the LUNA16 rules, with files and a report.

The scoring is :func:`voxpipe.metrics.detection.luna16_froc`, which gives the same figures as
``noduleCADEvaluationLUNA16.py``. This module reads the CSVs and writes
``froc.csv`` (the curve: FPs per scan, sensitivity, threshold), ``summary.json``, ``froc.png``
and ``froc.html`` (the table with bootstrap CIs and the plot).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import InputError
from voxpipe.metrics.detection import (
    FP_RATES,
    Finding,
    FrocResult,
    finding_cubes,
    luna16_froc,
    read_findings,
    read_seriesuids,
)
from voxpipe.transforms.files import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)


def evaluate_detections(
    candidates: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    excluded: str | os.PathLike[str] | None = None,
    seriesuids: str | os.PathLike[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_marks: int = 100,
    boxes_dir: str | os.PathLike[str] | None = None,
) -> FrocResult:
    """Score ``candidates`` (LUNA16 ``seriesuid,coordX,coordY,coordZ,probability``) against ``annotations``.

    With ``boxes_dir`` (a ``voxpipe detect`` output folder: ``<seriesuid>.json`` box files), also
    COCO-style AP at IoU 0.1 and mean recall (:func:`coco_metrics`), in ``summary.json`` under ``coco``.

    Raises:
        InputError: a file is missing or malformed (named, with the line).
    """
    marks, nodules = (
        read_findings(candidates, value="probability"),
        read_findings(annotations, value="diameter_mm"),
    )
    skipped = read_findings(excluded, value="diameter_mm") if excluded else []
    if seriesuids is None and (Path(annotations).parent / "seriesuids.csv").is_file():
        seriesuids = (
            Path(annotations).parent / "seriesuids.csv"
        )  # the LUNA16 layout keeps it beside annotations.csv
        logger.info("scans evaluated: %s (beside the annotations)", seriesuids)
    if seriesuids:
        scans = read_seriesuids(seriesuids)
    else:
        scans = list(dict.fromkeys([f.series for f in nodules + marks]))
        logger.warning(
            "no seriesuids.csv: FPs per scan are divided by the %d scan(s) named in %s and %s; a scan with "
            "neither a nodule nor a candidate is not counted, unlike the LUNA16 script (pass --seriesuids)",
            len(scans),
            candidates,
            annotations,
        )
    result = luna16_froc(
        marks,
        nodules,
        excluded=skipped,
        seriesuids=scans,
        n_bootstrap=n_bootstrap,
        seed=seed,
        max_marks=max_marks,
    )
    if result.unlisted_candidates or result.unlisted_nodules:
        shown = ", ".join(result.unlisted_scans[:3]) + (", ..." if len(result.unlisted_scans) > 3 else "")
        logger.warning(
            "%s: %d candidate(s) and %d nodule(s) are under %d series UID(s) not listed in %s (%s); "
            "they are not scored, as the LUNA16 script does not score them",
            candidates,
            result.unlisted_candidates,
            result.unlisted_nodules,
            len(result.unlisted_scans),
            seriesuids or "the scans evaluated",
            shown,
        )
    if result.n_nodules and result.true_positives == 0 and result.n_candidates == 0:
        logger.warning(
            "%s: no candidate lies in any listed scan; check that its series UIDs are those of %s",
            candidates,
            seriesuids or annotations,
        )
    out = Path(output_dir)
    curve = "fps_per_scan,sensitivity,threshold\n" + "".join(
        f"{f:.9f},{s:.9f},{t:.9f}\n"
        for f, s, t in zip(result.fps, result.sensitivity, result.thresholds, strict=True)
    )
    write_text_atomic(out / "froc.csv", curve)
    summary = {
        "candidates_file": str(candidates),
        "annotations_file": str(annotations),
        "excluded_file": str(excluded or ""),
        "seriesuids_file": str(seriesuids or ""),
        "scans_from": "seriesuids file"
        if seriesuids
        else "the scans named in the candidates and annotations",
        "rules": "LUNA16 (noduleCADEvaluationLUNA16.py)",
        "max_marks_per_scan": max_marks,
        "bootstrap_seed": seed,
        **result.summary(),
    }
    if boxes_dir is not None:
        summary["coco"] = result.coco = coco_metrics(
            boxes_dir, nodules, scans=scans, excluded=skipped, max_marks=max_marks
        )
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    png = _plot(result, out / "froc.png")
    _report(result, out / "froc.html", png)
    return result


def _plot(result: FrocResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(FP_RATES[0], FP_RATES[-1], 10001)
    figure, axis = plt.subplots(figsize=(5.5, 4), dpi=100)
    axis.plot(grid, np.interp(grid, result.fps, result.sensitivity), lw=2, label=f"CPM {result.cpm:.3f}")
    axis.scatter(list(result.sensitivity_at), list(result.sensitivity_at.values()), zorder=3, s=18)
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(FP_RATES), ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    axis.set_ylim(0, 1)
    axis.set_xlabel("average false positives per scan")
    axis.set_ylabel("sensitivity")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title(f"FROC ({result.n_nodules} nodules, {result.n_scans} scans)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def _report(result: FrocResult, path: Path, png: Path) -> None:
    ci = result.ci.get("sensitivity_ci95", {})
    rows = "".join(
        f"<tr><td>{rate:g}</td><td>{value:.3f}</td><td>{_interval(ci.get(str(rate)))}</td></tr>"
        for rate, value in result.sensitivity_at.items()
    )
    image = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>voxpipe FROC</title><style>body{{font-family:sans-serif;
margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}th{{background:#f3f3f3}}</style></head>
<body><h1>Nodule detection: FROC by the LUNA16 rules</h1>
<p>CPM <b>{result.cpm:.3f}</b> {html.escape(_interval(result.ci.get("cpm_ci95")))} over {result.n_scans} scans and
{result.n_nodules} nodules: {result.true_positives} detected, {result.false_negatives} missed, {result.false_positives} false
positives; {result.ignored_on_excluded} candidates on excluded findings and {result.ignored_double_hits} double hits ignored.
CIs: 2.5–97.5 percentiles of {result.ci.get("bootstrap_samples", 0)} bootstrap resamples of the scans.</p>
<table><tr><th>FPs per scan</th><th>sensitivity</th><th>95% CI</th></tr>{rows}</table>
<p><img src="data:image/png;base64,{image}" alt="FROC curve"></p></body></html>
"""
    write_text_atomic(path, page)


def _interval(values: list[float] | None) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]" if values else ""


def evaluate_run(
    *,
    detections: dict[str, Any],
    dataset_dir: str | os.PathLike[str],
    datalist: list[dict[str, Any]],
    output_dir: str | os.PathLike[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a detection run (:func:`voxpipe.pipelines.inference.detect.run_detection`'s summary) on its scans.

    The evaluate config's ``run``: every scan of ``datalist`` counts (also those without candidates
    or nodules), against ``dataset_dir/annotations.csv`` and, when present, ``annotations_excluded.csv``.
    Returns the summary written to ``summary.json``.
    """
    root, out = Path(dataset_dir), Path(output_dir)
    scans = write_text_atomic(
        out / "seriesuids_evaluated.csv", "".join(f"{e['seriesuid']}\n" for e in datalist)
    )
    excluded = root / "annotations_excluded.csv"
    result = evaluate_detections(
        detections["candidates"],
        root / "annotations.csv",
        output_dir=out,
        excluded=excluded if excluded.is_file() else None,
        seriesuids=scans,
        n_bootstrap=n_bootstrap,
        seed=seed,
        boxes_dir=Path(detections["candidates"]).parent,
    )
    summary = {**result.summary(), "coco": result.coco}
    logger.info("CPM %.4f over %d scans (%d nodules)", result.cpm, result.n_scans, result.n_nodules)
    return summary


def coco_metrics(
    boxes_dir: str | os.PathLike[str],
    annotations: Sequence[Finding],
    *,
    scans: Sequence[str],
    excluded: Sequence[Finding] = (),
    max_marks: int = 100,
) -> dict[str, float]:
    """COCO-style detection metrics of box files against the annotations' cubes, by MONAI's ``COCOMetric``.

    Predictions: ``boxes_dir/<seriesuid>.json`` (world_lps; a scan without a file has no boxes).
    Truth: each annotation's cube (centre ± diameter / 2, world LPS mm:
    :func:`~voxpipe.metrics.detection.finding_cubes`; boxes and truth are in the same frame, so IoU
    needs no voxel grid); excluded findings are ignored truth (their matches are neither
    hits nor false positives). Returns AP at IoU 0.1, mAP over IoU 0.1–0.5 and mean recall, at ``max_marks``.

    Raises:
        InputError: a box file is malformed or not in world_lps.
    """
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    from voxpipe.transforms.boxes import read_boxes_json

    truth, ignored = finding_cubes(annotations), finding_cubes(excluded)
    pred_boxes, pred_scores, gt_boxes, gt_ignore = [], [], [], []
    for scan in scans:
        path = Path(boxes_dir) / f"{scan}.json"
        boxes, items = np.zeros((0, 6)), []
        if path.is_file():
            boxes, space, items = read_boxes_json(path)
            if space != "world_lps":
                raise InputError(
                    f"{str(path)!r}: expected boxes in world_lps (as the annotations), found {space}"
                )
        pred_boxes.append(boxes)
        pred_scores.append(np.asarray([float(i.get("score", 0.0)) for i in items], dtype=float))
        real, skip = truth.get(scan, np.zeros((0, 6))), ignored.get(scan, np.zeros((0, 6)))
        gt_boxes.append(np.concatenate([real, skip]))
        gt_ignore.append(np.r_[np.zeros(len(real), dtype=bool), np.ones(len(skip), dtype=bool)])
    metric = COCOMetric(
        classes=["nodule"], iou_list=[0.1], iou_range=(0.1, 0.5, 0.05), max_detection=[max_marks]
    )
    matched = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=pred_boxes,
        pred_classes=[np.zeros(len(b), dtype=int) for b in pred_boxes],
        pred_scores=pred_scores,
        gt_boxes=gt_boxes,
        gt_classes=[np.zeros(len(b), dtype=int) for b in gt_boxes],
        gt_ignore=gt_ignore,
        max_detections=max_marks,
    )
    values = metric(matched)[0]
    return {key: float(value) for key, value in values.items()}
