"""Score a folder of predicted label maps against reference label maps.

Cases are matched by id (file name without the image suffix). Each structure is a named group of
label values (``liver_total = {1, 2}`` in LiTS). Per case and structure: Dice (NaN when both are
empty). A missing prediction is a failed case scored as an empty prediction (never dropped); a
prediction whose grid differs from its reference is an error naming both geometries.

Outputs: ``per_case.csv`` (one row per case) and ``summary.json`` (mean, median, std, count per
structure, plus the failed cases), both written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voxpipe.errors import GeometryError, InputError
from voxpipe.metrics.overlap import dice
from voxpipe.transforms.io import Volume, case_id, find_volumes, load_volume, write_text_atomic

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
    """Structures from the ``labels`` of an MSD ``dataset.json`` (background left out)."""
    path = Path(dataset_json)
    try:
        labels = json.loads(path.read_text())["labels"]
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{str(path)!r}: expected a dataset.json with a 'labels' mapping ({error})") from error
    return {str(name): (int(value),) for value, name in labels.items() if int(value) != 0}


def _check_same_grid(pred: Volume, ref: Volume) -> None:
    same_shape = pred.array.shape[:3] == ref.array.shape[:3]
    if not same_shape or not np.allclose(pred.affine, ref.affine, atol=GEOMETRY_ATOL_MM):
        raise GeometryError(
            f"{str(pred.path)!r}: prediction grid (shape {pred.array.shape[:3]}, spacing "
            f"{tuple(round(s, 4) for s in pred.spacing)}, origin {tuple(np.round(pred.affine[:3, 3], 3))}) does not "
            f"match reference {str(ref.path)!r} (shape {ref.array.shape[:3]}, spacing "
            f"{tuple(round(s, 4) for s in ref.spacing)}, origin {tuple(np.round(ref.affine[:3, 3], 3))})"
        )


def _integer_labels(volume: Volume) -> np.ndarray:
    array = np.asarray(volume.array)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise InputError(f"{str(volume.path)!r}: expected integer label values, found non-integral values")
        array = rounded
    return array.astype(np.int64, copy=False)


def score_case(
    prediction: np.ndarray | None, reference: np.ndarray, groups: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """Dice per structure; ``prediction=None`` (missing) is scored as an empty prediction."""
    scores = {}
    for name, values in groups.items():
        ref_mask = np.isin(reference, values)
        pred_mask = np.isin(prediction, values) if prediction is not None else np.zeros_like(ref_mask)
        scores[f"dice_{name}"] = dice(pred_mask, ref_mask)
    return scores


def _summarise(rows: list[dict[str, Any]], structures: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"cases": len(rows), "failed": [r["case"] for r in rows if r["status"] != "ok"]}
    metrics: dict[str, Any] = {}
    for name in structures:
        values = np.array([r[f"dice_{name}"] for r in rows], dtype=float)
        valid = values[~np.isnan(values)]
        metrics[name] = {
            "dice": {
                "mean": float(valid.mean()) if valid.size else None,
                "median": float(np.median(valid)) if valid.size else None,
                "std": float(valid.std()) if valid.size else None,
                "n": int(valid.size),
                "n_undefined": int(values.size - valid.size),
            }
        }
    summary["metrics"] = metrics
    summary["convention"] = "nnunet: Dice is undefined (NaN, left out of means) when prediction and reference are both empty"
    return summary


def evaluate_folders(
    prediction_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str],
    *,
    labels: Mapping[str, Sequence[int]],
    output_dir: str | os.PathLike[str],
    progress: bool = False,
) -> EvaluationResult:
    """Score every reference case against the prediction with the same case id.

    Args:
        prediction_dir: folder of predicted label maps.
        reference_dir: folder of reference label maps; defines the cases.
        labels: structure name → label values it covers.
        output_dir: receives ``per_case.csv`` and ``summary.json``.
        progress: show a progress bar over cases.

    Raises:
        InputError: no reference cases, or unreadable/non-integral files.
        GeometryError: a prediction is not on its reference's grid.
    """
    references = find_volumes(reference_dir)
    if not references:
        raise InputError(f"{str(reference_dir)!r}: expected reference label maps, found no image files")
    predictions = {case_id(p): p for p in find_volumes(prediction_dir)}
    rows: list[dict[str, Any]] = []
    for ref_path in tqdm(references, desc="evaluate", unit="case", disable=not progress):
        cid = case_id(ref_path)
        reference = load_volume(ref_path)
        ref_labels = _integer_labels(reference)
        pred_path = predictions.get(cid)
        if pred_path is None:
            logger.warning("%s: no prediction found in %s; scored as an empty prediction", cid, prediction_dir)
            rows.append({"case": cid, "status": "missing", **score_case(None, ref_labels, labels)})
            continue
        prediction = load_volume(pred_path)
        _check_same_grid(prediction, reference)
        rows.append({"case": cid, "status": "ok", **score_case(_integer_labels(prediction), ref_labels, labels)})
    structures = list(labels)
    summary = _summarise(rows, structures)
    summary["labels"] = {name: list(values) for name, values in labels.items()}
    out = Path(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", "status", *(f"dice_{s}" for s in structures)])
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
