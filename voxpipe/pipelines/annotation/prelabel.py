"""``voxpipe annotate prelabel``: predict every case, score the model's uncertainty, write a ranked worklist.

The bundle's own inference runs (:func:`voxpipe.pipelines.inference.infer.infer_with_bundle`, flip
TTA on by default, probabilities saved). Per case the work folder then gets a 3D Slicer
``.seg.nrrd`` (:mod:`voxpipe.transforms.slicer_seg`), a DICOM-SEG for DICOM inputs, and a
thumbnail of its most uncertain slice. ``worklist.csv`` and ``worklist.html`` list the cases in
review order; ``annotation.json`` records what was run. MONAI Label offers the same three
strategies (``first``, ``random``, epistemic ``uncertainty``) behind a server; here they are files.

Layout of ``WORKDIR``::

    annotation.json              bundle, weights, label names, strategy, round, cases (image → files)
    prelabel/<case>.nii.gz       the model's label map on the image grid (+ statistics.csv/.json)
    prelabel/<case>.seg.nrrd     the same as a Slicer segmentation (named, coloured segments)
    prelabel/<case>.dcm          DICOM-SEG, for DICOM series inputs
    thumbnails/<case>.png        the most uncertain slice: image + pre-label contour, entropy map
    worklist.csv, worklist.html  cases in review order: out-of-distribution scans first (with why), then by uncertainty
    labels/original, labels/final   filled by ``voxpipe annotate ingest``
"""

from __future__ import annotations

import html
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import InputError
from voxpipe.pipelines.annotation.outliers import flag_outliers, intensity_signature, load_fingerprint
from voxpipe.pipelines.annotation.uncertainty import case_uncertainty
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import case_id, load_volume

logger = logging.getLogger(__name__)

STRATEGIES = ("uncertainty", "random", "first")
MANIFEST = "annotation.json"


def read_manifest(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """``annotation.json`` of a work folder.

    Raises:
        InputError: the folder has none (``prelabel`` was not run there) or it is not JSON.
    """
    path = Path(workdir) / MANIFEST
    if not path.is_file():
        raise InputError(
            f"{str(path)!r}: expected the work folder of `voxpipe annotate prelabel`, found no {MANIFEST}"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise InputError(
            f"{str(path)!r}: expected JSON, found a file that does not parse ({error})"
        ) from error


def prelabel(
    bundle: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    workdir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    strategy: str = "uncertainty",
    seed: int = 0,
    tta: bool = True,
    keep_probabilities: bool = False,
    safe: bool = False,
    precision: str | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Pre-label ``inputs`` into ``workdir`` and rank them; the worklist rows, review order first.

    Cases already corrected in this work folder (``labels/final``) are not predicted again and stay
    out of the worklist: after ``finetune``, running ``prelabel`` with the new weights re-ranks the
    cases that remain.

    Raises:
        InputError: bad inputs or strategy (before anything runs).
        InferenceFailed: some cases failed; the others are in the worklist.
    """
    from voxpipe.pipelines.inference.cases import InferenceFailed, collect_inputs
    from voxpipe.pipelines.inference.infer import infer_with_bundle, label_names
    from voxpipe.transforms.slicer_seg import write_slicer_seg

    if strategy not in STRATEGIES:
        raise InputError(f"--strategy: expected one of {', '.join(STRATEGIES)}, found {strategy!r}")
    root = Path(workdir)
    images = collect_inputs(inputs)
    done = (
        {case_id(p) for p in (root / "labels" / "final").glob("*.nii.gz")}
        if (root / "labels" / "final").is_dir()
        else set()
    )
    todo = [p for p in images if case_id(p) not in done]
    out = root / "prelabel"
    failures: dict[str, str] = {}
    if todo:
        try:
            infer_with_bundle(
                bundle,
                todo,
                output_dir=out,
                weights=weights,
                overrides=overrides,
                tta=tta,
                save_probabilities=True,
                dicom_seg=any(p.is_dir() for p in todo),
                progress=False,
                safe=safe,
                precision=precision,
                device=device,
            )
        except InferenceFailed as error:
            failures = dict(error.failures)
    names = label_names(bundle)
    statistics = (
        json.loads((out / "statistics.json").read_text()) if (out / "statistics.json").is_file() else {}
    )
    rows = []
    signatures: dict[str, dict[str, Any]] = {}
    for image in (p for p in todo if str(p) not in failures):
        case = case_id(image)
        label_file = out / f"{case}.nii.gz"
        label = load_volume(label_file, label=True)
        seg_file = write_slicer_seg(label.array, label.affine, out / f"{case}.seg.nrrd", names=names)
        probabilities_file = out / f"{case}_probabilities.npz"
        with np.load(probabilities_file) as stored:
            figures = case_uncertainty(stored["probabilities"])
        if not keep_probabilities:
            probabilities_file.unlink()
        try:
            volume = load_volume(image).array
        except InputError:
            volume = None
        if volume is not None and volume.ndim == 3:
            signatures[case] = intensity_signature(volume, label.array > 0)
        thumbnail = _thumbnail(
            image, label.array, label.affine, figures, root / "thumbnails" / f"{case}.png", volume=volume
        )
        row = {
            "case": case,
            "image": str(image.resolve()),
            "prelabel": str(seg_file.relative_to(root)),
            "mean_entropy": round(figures["mean_entropy"], 6),
            "uncertain_fraction": round(figures["uncertain_fraction"], 6),
            "worst_slice": figures["worst_slice"],
            "thumbnail": str(thumbnail.relative_to(root)),
        }
        for name, fields in statistics.get(case, {}).items():
            row[f"{name}_ml"] = round(float(fields.get("volume_ml", 0.0)), 3)
        rows.append(row)
    volumes = {
        case: {name: float(fields.get("volume_ml", 0.0)) for name, fields in per_case.items()}
        for case, per_case in statistics.items()
    }
    checked = [r for r in rows if r["case"] in signatures]
    reference = flag_outliers(checked, signatures, volumes, names=names, fingerprint=load_fingerprint(bundle))
    for row in rows:
        row.setdefault("ood", False)
        row.setdefault("ood_score", 0.0)
        row.setdefault("ood_reason", "" if row["case"] in signatures else "image not readable for the check")
    rows = _ranked(rows, strategy, seed)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"round": 0, "cases": {}}
    manifest.update(
        {
            "bundle": str(Path(bundle).resolve()),
            "weights": str(Path(weights).resolve()) if weights else None,
            "overrides": dict(overrides or {}),
            "names": {str(k): v for k, v in names.items()},
            "strategy": strategy,
            "seed": seed,
            "tta": tta,
            "round": int(manifest.get("round", 0)) + 1,
        }
    )
    for row in rows:
        manifest["cases"][row["case"]] = {
            "image": row["image"],
            "label": f"prelabel/{row['case']}.nii.gz",
            "seg_nrrd": row["prelabel"],
        }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    _write_worklist(
        root,
        rows,
        strategy=strategy,
        done=sorted(done),
        failures=failures,
        round_=manifest["round"],
        tta=tta,
        reference=reference,
    )
    if failures:
        raise InferenceFailed.of(
            failures,
            total=len(todo),
            outputs=[],
            where=f"are in {str(root / 'worklist.csv')!r}",
        )
    return rows


def _ranked(rows: list[dict[str, Any]], strategy: str, seed: int) -> list[dict[str, Any]]:
    """Review order: out-of-distribution scans first (highest score first), then most uncertain (ties by
    case id); or a seeded shuffle, or input order."""
    if strategy == "uncertainty":  # scans the model probably cannot read first (outliers), then the unsure
        rows = sorted(
            rows,
            key=lambda r: (
                not r["ood"],
                -r["ood_score"],
                -r["mean_entropy"],
                -r["uncertain_fraction"],
                r["case"],
            ),
        )
    elif strategy == "random":
        rows = list(rows)
        random.Random(seed).shuffle(rows)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return [{"rank": r.pop("rank"), **r} for r in rows]


def _thumbnail(
    image: Path,
    label: np.ndarray,
    affine: np.ndarray,
    figures: dict[str, Any],
    path: Path,
    *,
    volume: np.ndarray | None = None,
) -> Path:
    """Two panels of the most uncertain axial slice, in radiological convention (patient's right on the left,
    anterior up): the image (CT window) with the pre-label's contours, and the entropy. Sets
    ``figures["worst_slice"]`` to that slice's index along the inferior → superior axis."""
    import matplotlib
    import nibabel as nib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxpipe.transforms.files import atomic_path

    orientation = nib.io_orientation(np.asarray(affine))  # storage axes → RAS
    to_ras = lambda a: nib.apply_orientation(np.asarray(a), orientation)  # noqa: E731
    label_ras, entropy_ras = to_ras(label), to_ras(figures["entropy"])
    region = label_ras > 0
    per_slice = (entropy_ras * (region | (entropy_ras > 0.1))).sum(axis=(0, 1))
    z = int(per_slice.argmax())
    figures["worst_slice"] = z
    if volume is None:
        try:
            volume = load_volume(image).array
        except InputError:
            volume = None
    plane = (
        np.asarray(to_ras(volume)[:, :, z], dtype=np.float32)
        if volume is not None and volume.shape == label.shape
        else None
    )

    def view(a):  # rows: anterior at the top; columns: patient's right on the left
        return np.flipud(np.asarray(a).T)[:, ::-1]

    figure, axes = plt.subplots(1, 2, figsize=(4.8, 2.4), dpi=80)
    if plane is not None:
        axes[0].imshow(view(np.clip(plane, -160, 240)), cmap="gray")
    for value, colour in zip(
        sorted(int(v) for v in np.unique(label_ras[:, :, z]) if v),
        ("#f5a623", "#d0021b", "#4a90e2", "#7ed321"),
        strict=False,
    ):
        axes[0].contour(view(label_ras[:, :, z] == value), levels=[0.5], colors=colour, linewidths=1.0)
    axes[1].imshow(view(entropy_ras[:, :, z]), cmap="magma", vmin=0, vmax=1)
    axes[0].set_title(f"axial slice {z}", fontsize=8)
    axes[1].set_title("entropy", fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def _write_worklist(
    root: Path,
    rows: list[dict[str, Any]],
    *,
    strategy: str,
    done: list[str],
    failures: Mapping[str, str],
    round_: int,
    tta: bool = True,
    reference: str = "",
) -> None:
    from voxpipe.pipelines.training.handlers import rows_to_csv

    write_text_atomic(root / "worklist.csv", rows_to_csv(rows) if rows else "rank,case\n")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    volume_columns = [c for c in columns if c.endswith("_ml")]
    body = []
    for row in rows:
        volumes = "".join(f"<td>{row.get(c, '')}</td>" for c in volume_columns)
        body.append(
            f"<tr><td>{row['rank']}</td><td><b>{html.escape(row['case'])}</b><br><small>{html.escape(row['image'])}</small></td>"
            f"<td>{row['mean_entropy']:.3f}</td><td>{100 * row['uncertain_fraction']:.1f}%</td>{volumes}"
            f"<td>{'<b>yes</b>: ' + html.escape(row['ood_reason']) if row.get('ood') else 'no'}</td>"
            f'<td><a href="{html.escape(row["prelabel"])}">{html.escape(Path(row["prelabel"]).name)}</a></td>'
            f'<td><img src="{html.escape(row["thumbnail"])}" alt="slice {row["worst_slice"]}"></td></tr>'
        )
    extra = ""
    if done:
        extra += f"<p>Already corrected (not listed): {html.escape(', '.join(done))}</p>"
    if failures:
        extra += (
            "<p>Failed:</p><ul>"
            + "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in failures.items())
            + "</ul>"
        )
    source = "flip-TTA probabilities" if tta else "probabilities (no TTA)"
    order = {
        "uncertainty": "scans the model probably cannot read first (out of distribution against "
        f"{reference or 'no reference'}: intensities, predicted volumes), then most uncertain (mean normalised "
        f"entropy of the {source} inside the possible foreground)",
        "random": "seeded random order",
        "first": "input order",
    }[strategy]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>voxpipe worklist</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:middle;font-size:14px}}th{{background:#f3f3f3}}small{{color:#777}}</style></head><body>
<h1>Worklist, round {round_}</h1>
<p>{len(rows)} case(s) to review, {html.escape(order)}. Open the image and its <code>.seg.nrrd</code> in 3D Slicer,
correct the segments in Segment Editor, save as <code>&lt;case&gt;.seg.nrrd</code> (or NIfTI / DICOM-SEG) into one folder, then
run <code>voxpipe annotate ingest</code>.</p>{extra}
<table><tr><th>rank</th><th>case</th><th>mean entropy</th><th>uncertain</th>{"".join(f"<th>{html.escape(c[:-3])} (mL)</th>" for c in volume_columns)}
<th>out of distribution</th><th>pre-label</th><th>most uncertain slice</th></tr>
{chr(10).join(body)}
</table></body></html>
"""
    write_text_atomic(root / "worklist.html", page)
