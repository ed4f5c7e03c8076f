"""Score a folder of predicted label maps against reference label maps, as a challenge would.

Cases are matched by id (file name without the image suffix). Each structure is a named group of
label values (``liver_total = {1, 2}`` in LiTS). Per case and structure: Dice, IoU, sensitivity,
precision, specificity, volume difference (ml and relative), Hausdorff, HD95, ASSD, mean surface
distance and normalised surface Dice at a tolerance (all in mm, the reference's voxel spacing), and
lesion-wise detection on connected components. Empty masks follow a named convention
(:mod:`voxpipe.metrics.conventions`). A missing or unreadable prediction is a failed case with the
worst value of every metric (never dropped); a prediction whose grid differs from its reference is
an error naming both geometries unless ``resample_predictions`` is set.

Outputs: ``per_case.csv`` (one row per case), ``summary.json`` (mean, median, std and a 95%
bootstrap CI per structure and metric, plus MSD- and LiTS-style aggregates and the failed cases),
both written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voxpipe.errors import GeometryError, InputError
from voxpipe.metrics import surface
from voxpipe.metrics.conventions import apply_convention, check_convention, worst_values
from voxpipe.metrics.lesions import detect_lesions
from voxpipe.metrics.overlap import (
    confusion,
    dice_from,
    iou_from,
    precision_from,
    sensitivity_from,
    specificity_from,
    volume_difference,
)
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import Volume, case_id, find_volumes, load_volume

logger = logging.getLogger(__name__)

GEOMETRY_ATOL_MM = 1e-3


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case rows, the summary, and where both were written."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    per_case_csv: Path
    summary_json: Path
    structures: list[str] = field(default_factory=list)


def parse_label_groups(text: str) -> dict[str, tuple[int, ...]]:
    """Parse ``"liver=1,tumour=2,liver_total=1+2"`` into ``{"liver": (1,), ..., "liver_total": (1, 2)}``.

    Raises:
        InputError: an item is not ``name=value[+value...]`` with integer values.
    """
    groups: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, values = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            groups[name.strip()] = tuple(int(v) for v in values.split("+"))
        except ValueError as error:
            raise InputError(
                f"--labels item {item!r}: expected name=value or name=value+value with integer values "
                "(e.g. liver=1,tumour=2,liver_total=1+2)"
            ) from error
    if not groups:
        raise InputError(f"--labels {text!r}: expected at least one name=value item")
    return groups


def label_groups_from_dataset(dataset_json: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Structures from the ``labels`` of a ``dataset.json``, MSD (value → name) or nnU-Net v2 (name →
    value, or a list of values for a region-based label); background left out."""
    from voxpipe.pipelines.data.datalists import dataset_label_groups

    path = Path(dataset_json)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            f"{str(path)!r}: expected a dataset.json with a 'labels' mapping ({error})"
        ) from error
    if not isinstance(info, dict) or "labels" not in info:
        raise InputError(f"{str(path)!r}: expected a dataset.json with a 'labels' mapping, found none")
    return {name: group for name, group in dataset_label_groups(info, source=path).items() if group != (0,)}


def _same_grid(pred: Volume, ref: Volume) -> bool:
    return pred.array.shape[:3] == ref.array.shape[:3] and np.allclose(
        pred.affine, ref.affine, atol=GEOMETRY_ATOL_MM
    )


def _check_same_grid(pred: Volume, ref: Volume) -> None:
    if not _same_grid(pred, ref):
        raise GeometryError(
            f"{str(pred.path)!r}: prediction grid (shape {pred.array.shape[:3]}, spacing "
            f"{tuple(round(s, 4) for s in pred.spacing)}, origin {tuple(np.round(pred.affine[:3, 3], 3))}) does not "
            f"match reference {str(ref.path)!r} (shape {ref.array.shape[:3]}, spacing "
            f"{tuple(round(s, 4) for s in ref.spacing)}, origin {tuple(np.round(ref.affine[:3, 3], 3))})",
            hint="resample the prediction onto the reference grid (voxpipe evaluate --resample-pred)",
        )


def find_references(reference_dir: str | os.PathLike[str]) -> list[Path]:
    """Reference label maps in a folder: image files and DICOM-SEG ``.dcm`` files (case id = file stem)."""
    from voxpipe.transforms.dicom_seg import is_dicom_seg

    folder = Path(reference_dir)
    volumes = find_volumes(folder)
    segs = [p for p in sorted(folder.glob("*.dcm")) if not p.name.startswith(".") and is_dicom_seg(p)]
    return sorted(volumes + segs, key=lambda p: case_id(p))


def load_reference(path: str | os.PathLike[str], *, grid: Volume | None = None) -> Volume:
    """A reference label map; a DICOM-SEG is placed on ``grid`` (the prediction's), else on its own lattice.

    Raises:
        GeometryError: a DICOM-SEG whose frames do not lie on ``grid``.
    """
    from voxpipe.transforms.dicom_seg import is_dicom_seg, read_seg, seg_grid, seg_to_label_map

    path = Path(path)
    if not is_dicom_seg(path):
        return load_volume(path)
    seg = read_seg(path)
    if grid is not None:
        return Volume(
            seg_to_label_map(seg, grid.array.shape[:3], grid.affine),
            np.asarray(grid.affine, dtype=float),
            path,
        )
    shape, affine = seg_grid(seg)
    return Volume(seg_to_label_map(seg, shape, affine), affine, path)


def _integer_labels(volume: Volume) -> np.ndarray:
    array = np.asarray(volume.array)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError(
                f"{str(volume.path)!r}: expected integer label values, found non-integral values"
            )
        array = rounded
    return array.astype(np.int64, copy=False)


METRICS = (
    "dice",
    "iou",
    "sensitivity",
    "precision",
    "specificity",
    "volume_diff_ml",
    "volume_diff_rel",
    "hd",
    "hd95",
    "assd",
    "msd",
    "nsd",
    "lesion_recall",
    "lesion_precision",
    "lesion_f1",
)
COUNTS = ("tp", "fp", "fn", "lesions_ref", "lesions_pred")


@dataclass(frozen=True)
class ScoringOptions:
    """How cases are scored.

    Attributes:
        tolerance: NSD tolerance in mm.
        convention: empty-mask convention (``nnunet``, ``flare``, ``lits``).
        definition: surface definition (``deepmind`` or ``medpy``).
        lesion_threshold: IoU for a lesion match.
        surface: compute surface distances (the slow part) at all.
    """

    tolerance: float = 2.0
    convention: str = "nnunet"
    definition: str = "deepmind"
    lesion_threshold: float = 0.1
    surface: bool = True


def score_structure(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], options: ScoringOptions
) -> dict[str, float]:
    """Every metric of one structure (boolean masks on one grid, spacing in mm), convention applied."""
    c = confusion(prediction, reference)
    diff_ml, diff_rel = volume_difference(prediction, reference, spacing)
    values: dict[str, float] = {
        "dice": dice_from(c),
        "iou": iou_from(c),
        "sensitivity": sensitivity_from(c),
        "precision": precision_from(c),
        "specificity": specificity_from(c),
        "volume_diff_ml": diff_ml,
        "volume_diff_rel": diff_rel,
    }
    if options.surface:
        d = surface.surface_distances(prediction, reference, spacing, definition=options.definition)
        values.update(
            hd=surface.hausdorff(d),
            hd95=surface.hausdorff(d, 95),
            assd=surface.assd(d),
            msd=surface.mean_surface_distance(d),
            nsd=surface.normalised_surface_dice(d, options.tolerance),
        )
    lesions = detect_lesions(prediction, reference, threshold=options.lesion_threshold)
    values.update(lesion_recall=lesions.recall, lesion_precision=lesions.precision, lesion_f1=lesions.f1)
    pred_empty, ref_empty = c.empty
    values = apply_convention(
        values,
        prediction_empty=pred_empty,
        reference_empty=ref_empty,
        convention=options.convention,
        worst_distance=_diagonal(reference.shape, spacing),
    )
    values.update(
        tp=c.tp, fp=c.fp, fn=c.fn, lesions_ref=lesions.n_reference, lesions_pred=lesions.n_predicted
    )
    return values


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(shape[:3]) * np.asarray(spacing[:3], dtype=float)))


def score_case(
    prediction: np.ndarray | None,
    reference: np.ndarray,
    groups: Mapping[str, Sequence[int]],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    options: ScoringOptions | None = None,
) -> dict[str, float]:
    """``<metric>_<structure>`` for every structure; ``prediction=None`` (failed) scores the worst values."""
    options = options or ScoringOptions()
    scores: dict[str, float] = {}
    for name, values in groups.items():
        ref_mask = np.isin(reference, values)
        pred_mask = np.isin(prediction, values) if prediction is not None else np.zeros_like(ref_mask)
        result = score_structure(pred_mask, ref_mask, spacing, options)
        if prediction is None:
            result = worst_values(result, worst_distance=_diagonal(reference.shape, spacing))
        scores.update({f"{metric}_{name}": value for metric, value in result.items()})
    return scores


def bootstrap_ci(values: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of the mean (cases resampled with replacement)."""
    if values.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _summarise(
    rows: list[dict[str, Any]], structures: Sequence[str], options: ScoringOptions
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "cases": len(rows),
        "failed": [r["case"] for r in rows if r["status"] != "ok"],
        "failed_reasons": {r["case"]: r.get("reason", "") for r in rows if r["status"] != "ok"},
    }
    template = _template(rows)
    metrics: dict[str, Any] = {}
    for name in structures:
        metrics[name] = {}
        for metric in METRICS:
            key = f"{metric}_{name}"
            if key not in template:
                continue
            values = np.array([r[key] for r in rows], dtype=float)
            valid = values[np.isfinite(values)]
            ci = bootstrap_ci(valid)
            metrics[name][metric] = {
                "mean": float(valid.mean()) if valid.size else None,
                "median": float(np.median(valid)) if valid.size else None,
                "std": float(valid.std()) if valid.size else None,
                "ci95": list(ci) if ci else None,
                "n": int(valid.size),
                "n_undefined": int(values.size - valid.size),
            }
    summary["metrics"] = metrics
    # Challenge aggregates. MSD ranks on the mean per class over cases; LiTS also pools all voxels.
    summary["aggregates"] = {
        "msd": {
            name: {m: metrics[name][m]["mean"] for m in ("dice", "nsd") if m in metrics[name]}
            for name in structures
        },
        "lits": {
            name: {
                "dice_per_case": metrics[name]["dice"]["mean"],
                "dice_global": _global_dice(rows, name),
            }
            for name in structures
        },
    }
    summary["options"] = {
        "convention": options.convention,
        "surface_definition": options.definition,
        "nsd_tolerance_mm": options.tolerance,
        "lesion_iou_threshold": options.lesion_threshold,
    }
    return summary


def _template(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A scored row (its keys are the metrics computed), else the first row."""
    return next((r for r in rows if r["status"] != "reference_failed"), rows[0])


def _global_dice(rows: list[dict[str, Any]], name: str) -> float | None:
    tp = sum(r[f"tp_{name}"] for r in rows)
    denominator = sum(2 * r[f"tp_{name}"] + r[f"fp_{name}"] + r[f"fn_{name}"] for r in rows)
    return 2 * tp / denominator if denominator else None


def resample_nearest(prediction: Volume, reference: Volume) -> np.ndarray:
    """The prediction's labels on the reference grid (nearest neighbour in physical space; 0 outside)."""
    from scipy import ndimage

    mapping = np.linalg.inv(prediction.affine) @ reference.affine  # reference voxel → prediction voxel
    return ndimage.affine_transform(
        np.asarray(prediction.array)[..., 0]
        if np.asarray(prediction.array).ndim == 4
        else np.asarray(prediction.array),
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=reference.array.shape[:3],
        order=0,
        mode="constant",
        cval=0,
    )


def _score_one(
    job: tuple[str, Path, Path | None, dict[str, tuple[int, ...]], ScoringOptions, bool],
) -> dict[str, Any]:
    """One case's row. A bad case never stops the others: it is scored and marked instead.

    Prediction problems (missing, unreadable, another grid, non-integral values) score the worst
    value of every metric, as a missing prediction does; a reference that cannot be read cannot be
    scored at all (its metrics are left empty and out of the means). Either way the row's
    ``status`` says what happened and ``reason`` why.
    """
    cid, ref_path, pred_path, groups, options, resample = job
    status, predicted, reason = "ok", None, ""
    if pred_path is None:
        status, reason = "missing", "no prediction with this case id"
    else:
        try:
            predicted = load_volume(pred_path)
        except InputError as error:
            status, reason = "unreadable", _one_line(error)
            logger.warning("%s: unreadable prediction (%s); scored with the worst values", cid, reason)
    try:
        try:
            reference = load_reference(ref_path, grid=predicted)
        except GeometryError as error:
            if predicted is None:
                raise
            reference = load_reference(
                ref_path
            )  # a SEG on its own lattice; the prediction is resampled onto it
            if not resample:
                status, reason, predicted = "wrong_grid", _one_line(error), None
                logger.warning("%s: %s; scored with the worst values", cid, reason)
        ref_labels = _integer_labels(reference)
    except InputError as error:
        reason = _one_line(error)
        logger.warning("%s: reference could not be used (%s); the case is not scored", cid, reason)
        empty = {f"{m}_{s}": float("nan") for s in groups for m in (*METRICS, *COUNTS)}
        return {"case": cid, "status": "reference_failed", "reason": reason, **empty}
    spacing = tuple(float(s) for s in reference.spacing[:3])
    prediction = None
    if predicted is not None:
        try:
            if resample and not _same_grid(predicted, reference):
                predicted = Volume(
                    path=predicted.path, array=resample_nearest(predicted, reference), affine=reference.affine
                )
            _check_same_grid(predicted, reference)
            prediction = _integer_labels(predicted)
        except InputError as error:
            status, reason = (
                ("wrong_grid" if isinstance(error, GeometryError) else "not_labels"),
                _one_line(error),
            )
            logger.warning("%s: %s; scored with the worst values", cid, reason)
    return {
        "case": cid,
        "status": status,
        "reason": reason,
        **score_case(prediction, ref_labels, groups, spacing, options),
    }


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def evaluate_folders(
    prediction_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str],
    *,
    labels: Mapping[str, Sequence[int]],
    output_dir: str | os.PathLike[str],
    options: ScoringOptions | None = None,
    workers: int = 1,
    resample_predictions: bool = False,
    progress: bool = False,
) -> EvaluationResult:
    """Score every reference case against the prediction with the same case id.

    Args:
        prediction_dir: folder of predicted label maps.
        reference_dir: folder of reference label maps (NIfTI, NRRD, MHA or DICOM-SEG ``.dcm``); defines
            the cases. A DICOM-SEG is placed on its prediction's grid, which must be the grid of the
            image the SEG annotates.
        labels: structure name → label values it covers.
        output_dir: receives ``per_case.csv`` and ``summary.json``.
        options: metrics settings (tolerance, convention, surface definition).
        workers: processes scoring cases in parallel (1 = in this process).
        resample_predictions: put predictions on another grid onto the reference grid (nearest).
        progress: show a progress bar over cases.

    A case whose prediction or reference is bad is listed in ``summary["failed"]`` with its reason
    in ``summary["failed_reasons"]`` (and the row's ``status``/``reason``); every other case is scored.

    Raises:
        InputError: no reference cases.
    """
    options = options or ScoringOptions()
    check_convention(options.convention)
    references = find_references(reference_dir)
    if not references:
        raise InputError(
            f"{str(reference_dir)!r}: expected reference label maps (images or DICOM-SEG), found none"
        )
    predictions = (
        {case_id(p): p for p in find_volumes(prediction_dir)} if Path(prediction_dir).is_dir() else {}
    )
    groups = {k: tuple(v) for k, v in labels.items()}
    jobs = [
        (case_id(r), r, predictions.get(case_id(r)), groups, options, resample_predictions)
        for r in references
    ]
    for cid, _, pred, *_ in jobs:
        if pred is None:
            logger.warning("%s: no prediction found in %s; scored with the worst values", cid, prediction_dir)
    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    rows: list[dict[str, Any]] = []
    if workers > 1 and len(jobs) > 1:
        # Not forked from this process: its threads (PyTorch's, OpenVINO's, a prefetch reader) may
        # hold locks a forked child would wait on forever.
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            for row in pool.map(_score_one, jobs):
                rows.append(row)
                bar.update()
    else:
        for job in jobs:
            rows.append(_score_one(job))
            bar.update()
    bar.close()
    structures = list(labels)
    summary = _summarise(rows, structures, options)
    summary["labels"] = {name: list(values) for name, values in labels.items()}
    out = Path(output_dir)
    buffer = io.StringIO()
    template = _template(rows)
    fields = [
        "case",
        "status",
        "reason",
        *(f"{m}_{s}" for s in structures for m in (*METRICS, *COUNTS) if f"{m}_{s}" in template),
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    per_case = write_text_atomic(out / "per_case.csv", buffer.getvalue())
    summary_json = write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return EvaluationResult(rows, summary, per_case, summary_json, structures)


def batch_image_meta(batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Image metadata of each item of a decollated engine batch.

    For MONAI's ``MetricsSaver(batch_transform=...)`` in bundles, so per-case metric files name the
    source image, without a ``$lambda`` expression in the config.
    """
    return [dict(item["image"].meta) for item in batch]
