"""One self-contained HTML report of an evaluation: plots, a sortable table and overlays.

Everything is embedded (PNG as base64, a few lines of inline JavaScript for sorting), so the file
opens in a browser from disk with no server and no network. PNGs are also written beside it.
Made with matplotlib (Agg); no MONAI/Ignite equivalent exists for a static evaluation report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from voxpipe.errors import InputError  # noqa: E402
from voxpipe.pipelines.evaluation.evaluate import EvaluationResult, find_references, load_reference  # noqa: E402
from voxpipe.pipelines.training.curves import plot_curves  # noqa: E402
from voxpipe.transforms.files import write_text_atomic  # noqa: E402
from voxpipe.transforms.io import case_id, find_volumes, load_volume  # noqa: E402

PLOTTED = ("dice", "nsd", "hd95", "assd")


def _png(figure: plt.Figure, path: Path) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    path.write_bytes(buffer.getvalue())
    return base64.b64encode(buffer.getvalue()).decode()


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _metric_plots(result: EvaluationResult, folder: Path) -> str:
    metrics = [m for m in PLOTTED if f"{m}_{result.structures[0]}" in result.rows[0]]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = [_finite([r[f"{metric}_{s}"] for r in result.rows]) for s in result.structures]
        ax.boxplot([d or [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(result.structures) + 1), result.structures)
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.7, color="tab:blue")
        ax.set_title(metric.upper() + (" (mm)" if metric in ("hd95", "assd") else ""))
        ax.grid(alpha=0.3)
    return _png(figure, folder / "metrics.png")


def _background(case: str, images: dict[str, Path], shape: tuple[int, ...]) -> np.ndarray:
    """The case's image (grey, 1st–99th percentile window) when it is on the label grid, else black."""
    if case in images:
        try:
            array = np.asarray(load_volume(images[case]).array, dtype=np.float32)
        except InputError:
            array = None
        if array is not None and array.shape[:3] == shape[:3]:
            low, high = np.percentile(array[::4, ::4, ::2], [1, 99])
            return np.clip((array - low) / max(high - low, 1e-6), 0, 1)
    return np.zeros(shape[:3], dtype=np.float32)


def _overlay(
    case: str,
    preds: dict[str, Path],
    refs: dict[str, Path],
    images: dict[str, Path],
    folder: Path,
    title: str,
) -> str | None:
    """Axial, coronal and sagittal slices through the reference's centre, reference green, prediction red,
    over the image when one is given; radiological display (anterior up, patient's right on the left)."""
    if case not in refs:
        return None
    predicted = load_volume(preds[case]) if case in preds else None
    loaded = load_reference(refs[case], grid=predicted)
    reference, spacing = np.asarray(loaded.array), loaded.spacing
    prediction = np.asarray(predicted.array) if predicted is not None else np.zeros_like(reference)
    if prediction.shape != reference.shape:
        return None
    image = _background(case, images, reference.shape)
    # Displayed in radiological convention: arrays turned to RAS, patient's right on the image's left.
    orientation = nib.orientations.io_orientation(loaded.affine)
    reference, prediction, image = (
        nib.orientations.apply_orientation(a, orientation) for a in (reference, prediction, image)
    )
    spacing = [float(spacing[int(np.flatnonzero(orientation[:, 0] == axis)[0])]) for axis in range(3)]
    mask = reference > 0 if (reference > 0).any() else prediction > 0
    centre = (
        [int(round(c.mean())) for c in np.nonzero(mask)]
        if mask.any()
        else [s // 2 for s in reference.shape[:3]]
    )
    figure, axes = plt.subplots(1, 3, figsize=(12, 4))
    views = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    for ax, (name, axis) in zip(axes, views, strict=True):
        ref_slice = np.take(reference, centre[axis], axis=axis)
        pred_slice = np.take(prediction, centre[axis], axis=axis)
        others = [s for i, s in enumerate(spacing[:3]) if i != axis]
        aspect = others[1] / others[0]
        ax.imshow(
            np.take(image, centre[axis], axis=axis).T,
            cmap="gray",
            origin="lower",
            aspect=aspect,
            vmin=0,
            vmax=1,
        )
        for values, colour in ((ref_slice, "lime"), (pred_slice, "red")):
            for label in np.unique(values[values > 0]):
                ax.contour(
                    (values == label).T.astype(float),
                    levels=[0.5],
                    colors=colour,
                    linewidths=1.2,
                    linestyles="solid" if label == 1 else "dashed",
                )
        if axis != 0:
            ax.invert_xaxis()
        ax.set_title(f"{name} {centre[axis]}")
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(f"{title}: {case} (reference green, prediction red; dashed = label ≥ 2)")
    return _png(figure, folder / f"overlay_{case}.png")


def _curves(run_dir: Path, folder: Path) -> str | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    rows = list(csv.DictReader(open(path)))
    if not rows:
        return None
    return base64.b64encode(plot_curves(rows, folder / "curves.png").read_bytes()).decode()


def _table(result: EvaluationResult) -> str:
    columns = [
        "case",
        "status",
        *(f"{m}_{s}" for s in result.structures for m in PLOTTED if f"{m}_{s}" in result.rows[0]),
    ]
    head = "".join(f"<th onclick='sortTable({i})'>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = []
    for row in result.rows:
        cells = []
        for c in columns:
            value = row[c]
            text = (
                f"{value:.4f}"
                if isinstance(value, float) and math.isfinite(value)
                else ("" if isinstance(value, float) else str(value))
            )
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table id='cases'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_SCRIPT = """
function sortTable(n) {
  const table = document.getElementById('cases'), body = table.tBodies[0];
  const rows = Array.from(body.rows), asc = table.dataset.col == n && table.dataset.dir != 'asc';
  rows.sort((a, b) => {
    const x = a.cells[n].textContent, y = b.cells[n].textContent, fx = parseFloat(x), fy = parseFloat(y);
    const c = (isNaN(fx) || isNaN(fy)) ? x.localeCompare(y) : fx - fy;
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.col = n; table.dataset.dir = asc ? 'asc' : 'desc';
}
"""


def write_report(
    result: EvaluationResult,
    prediction_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``report.html`` (+ PNGs) for an evaluation; returns the HTML path.

    Overlays show the best, median and worst case by Dice of the first structure, over the case's
    image from ``images_dir`` (same case id, same grid) when given.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    first = result.structures[0]
    ranked = sorted(
        (
            r
            for r in result.rows
            if isinstance(r[f"dice_{first}"], float) and math.isfinite(r[f"dice_{first}"])
        ),
        key=lambda r: r[f"dice_{first}"],
    )
    picks = []
    if ranked:
        picks = [
            ("best", ranked[-1]["case"]),
            ("median", ranked[len(ranked) // 2]["case"]),
            ("worst", ranked[0]["case"]),
        ]
    sections = [
        f"<h2>Metrics per structure</h2><img src='data:image/png;base64,{_metric_plots(result, folder)}'>"
    ]
    summary_rows = "".join(
        f"<tr><td>{html.escape(s)}</td>"
        + "".join(
            "<td>{}</td>".format(
                "" if (m := result.summary["metrics"][s].get(metric, {}).get("mean")) is None else f"{m:.4f}"
            )
            for metric in PLOTTED
        )
        + "</tr>"
        for s in result.structures
    )
    sections.append(
        "<h2>Means</h2><table><tr><th>structure</th>"
        + "".join(f"<th>{m}</th>" for m in PLOTTED)
        + f"</tr>{summary_rows}</table>"
    )
    overlays = []
    seen = set()
    refs = {case_id(p): p for p in find_references(reference_dir)}
    preds = {case_id(p): p for p in find_volumes(prediction_dir)} if Path(prediction_dir).is_dir() else {}
    images = {case_id(p): p for p in find_volumes(images_dir)} if images_dir else {}
    for title, case in picks:
        if case in seen:
            continue
        seen.add(case)
        image = _overlay(case, preds, refs, images, folder, title)
        if image:
            overlays.append(f"<img src='data:image/png;base64,{image}'>")
    if overlays:
        sections.append(
            f"<h2>Best, median and worst case ({html.escape(first)} Dice)</h2>" + "".join(overlays)
        )
    if run_dir is not None:
        curves = _curves(Path(run_dir), folder)
        if curves:
            sections.append(f"<h2>Training curves</h2><img src='data:image/png;base64,{curves}'>")
    sections.append("<h2>Per case (click a column to sort)</h2>" + _table(result))
    options = html.escape(", ".join(f"{k}={v}" for k, v in result.summary.get("options", {}).items()))
    failed = ", ".join(result.summary["failed"]) or "none"
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>voxpipe evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}img{{max-width:100%;display:block;margin:1em 0}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#eee;cursor:pointer}}</style><script>{_SCRIPT}</script></head><body>
<h1>voxpipe evaluation</h1><p>{len(result.rows)} cases; failed: {html.escape(failed)}; {options}</p>
{"".join(sections)}</body></html>"""
    return write_text_atomic(folder / "report.html", page)
