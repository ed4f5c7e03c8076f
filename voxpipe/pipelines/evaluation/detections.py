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
import os
from pathlib import Path

import numpy as np

from voxpipe.metrics.detection import FP_RATES, FrocResult, luna16_froc, read_findings, read_seriesuids
from voxpipe.transforms.io import atomic_path, write_text_atomic


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
) -> FrocResult:
    """Score ``candidates`` (LUNA16 ``seriesuid,coordX,coordY,coordZ,probability``) against ``annotations``.

    Raises:
        InputError: a file is missing or malformed (named, with the line).
    """
    result = luna16_froc(
        read_findings(candidates, value="probability"), read_findings(annotations, value="diameter_mm"),
        excluded=read_findings(excluded, value="diameter_mm") if excluded else (),
        seriesuids=read_seriesuids(seriesuids) if seriesuids else None, n_bootstrap=n_bootstrap, seed=seed,
        max_marks=max_marks,
    )  # fmt: skip
    out = Path(output_dir)
    curve = "fps_per_scan,sensitivity,threshold\n" + "".join(
        f"{f:.9f},{s:.9f},{t:.9f}\n" for f, s, t in zip(result.fps, result.sensitivity, result.thresholds, strict=True))
    write_text_atomic(out / "froc.csv", curve)
    summary = {"candidates_file": str(candidates), "annotations_file": str(annotations), "excluded_file": str(excluded or ""),
               "seriesuids_file": str(seriesuids or ""), "rules": "LUNA16 (noduleCADEvaluationLUNA16.py)",
               "max_marks_per_scan": max_marks, "bootstrap_seed": seed, **result.summary()}
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
        for rate, value in result.sensitivity_at.items())
    image = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>voxpipe FROC</title><style>body{{font-family:sans-serif;
margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}th{{background:#f3f3f3}}</style></head>
<body><h1>Nodule detection: FROC by the LUNA16 rules</h1>
<p>CPM <b>{result.cpm:.3f}</b> {html.escape(_interval(result.ci.get('cpm_ci95')))} over {result.n_scans} scans and
{result.n_nodules} nodules: {result.true_positives} detected, {result.false_negatives} missed, {result.false_positives} false
positives; {result.ignored_on_excluded} candidates on excluded findings and {result.ignored_double_hits} double hits ignored.
CIs: 2.5–97.5 percentiles of {result.ci.get('bootstrap_samples', 0)} bootstrap resamples of the scans.</p>
<table><tr><th>FPs per scan</th><th>sensitivity</th><th>95% CI</th></tr>{rows}</table>
<p><img src="data:image/png;base64,{image}" alt="FROC curve"></p></body></html>
"""
    write_text_atomic(path, page)


def _interval(values: list[float] | None) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]" if values else ""
