"""Classification of 3D patches (e.g. lung nodules): datalists with class labels, class balance,
ROI crops and the validation metrics.

Training itself is the same assembly as segmentation (:func:`voxpipe.pipelines.training.trainer.build_trainer`
with a MONAI ``SupervisedEvaluator``); the ``lung_nodule_ct_densenet`` bundle wires it. What MONAI
lacks and this module adds: a datalist reader for integer class labels with optional masks (MONAI's
``load_decathlon_datalist`` resolves every value as a path), a seeded grouped split, inverse-frequency
class weights and per-sample weights for balanced sampling, a ROI crop that passes through items
without a mask (``CropForegroundd`` fails on them), and the metric set (MONAI's ``ROCAUC`` and
``ConfusionMatrix`` handlers) with the discrete predictions they need.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import ROCAUC, ConfusionMatrix, from_engine
from monai.transforms import MapTransform

from voxpipe.errors import InputError
from voxpipe.pipelines.data.splits import split_part
from voxpipe.transforms.io import case_id

CONFUSION_METRICS = {
    "accuracy": "accuracy",
    "f1": "f1 score",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}


def load_classification_datalist(
    source: str | os.PathLike[str], *, section: str = "training", require_label: bool = True
) -> list[dict[str, Any]]:
    """Cases with an integer class: dicts with ``image``, ``label`` (int), optional ``mask``, ``case``, ``patient``.

    Args:
        source: a folder with ``dataset.json``, a JSON file (``{section: [...]}`` or a bare list of
            ``{"image", "label"[, "mask", "case", "patient"]}``) or a CSV with columns ``image,label``
            (optional ``mask``, ``case``, ``patient``, ``split``; with a ``split`` column, section
            ``training`` takes rows ``train``/``val`` and ``test`` takes ``test``). Relative paths are
            taken from the file's folder.
        section: ``"training"`` or ``"test"``.
        require_label: ``False`` for inference: entries without a label are kept (no ``label`` key).

    Raises:
        InputError: a missing file, a label that is not a non-negative integer, a missing column.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise InputError(
            f"{str(path)!r}: expected a classification dataset (dataset.json, JSON or CSV), found no file"
        )
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        missing = {"image", "label"} - set(rows[0] if rows else {}) - (set() if require_label else {"label"})
        if missing:
            raise InputError(f"{str(path)!r}: expected columns image and label, missing {sorted(missing)}")
        if "split" in rows[0]:
            wanted = ("test",) if section == "test" else ("train", "val", "")
            rows = [row for row in rows if row["split"].strip().lower() in wanted]
        where = [f"line {n}" for n in range(2, len(rows) + 2)]
    else:
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{str(path)!r}: not valid JSON ({error})") from error
        if isinstance(manifest, dict):
            if section not in manifest:
                raise InputError(f"{str(path)!r}: expected a {section!r} list, found keys {sorted(manifest)}")
            manifest = manifest[section]
        rows = list(manifest)
        where = [f"{section}[{n}]" for n in range(len(rows))]
    return [_entry(row, path, place, require_label) for row, place in zip(rows, where, strict=True)]


def _entry(row: Mapping[str, Any], path: Path, place: str, require_label: bool = True) -> dict[str, Any]:
    if "image" not in row or not str(row["image"]).strip():
        raise InputError(f"{str(path)!r}: {place}: expected an image path, found none")
    if not require_label and str(row.get("label", "")).strip() == "":
        entry = _entry({**row, "label": 0}, path, place)
        del entry["label"]
        return entry
    try:
        label = int(str(row["label"]).strip())
    except (KeyError, ValueError):
        label = -1
    if label < 0 or str(row.get("label", "")).strip() not in (str(label), f"{label}.0"):
        raise InputError(
            f"{str(path)!r}: {place}: expected an integer class label ≥ 0, found {row.get('label')!r}"
        )
    entry: dict[str, Any] = {"image": str((path.parent / str(row["image"])).resolve()), "label": label}
    if row.get("mask"):
        entry["mask"] = str((path.parent / str(row["mask"])).resolve())
    for key in ("image", "mask"):
        if key in entry and not Path(entry[key]).exists():
            raise InputError(f"{str(path)!r}: {place}: {key} {entry[key]!r} does not exist")
    entry["case"] = str(row.get("case") or case_id(entry["image"]))
    entry["patient"] = str(row.get("patient") or entry["case"])
    return entry


def classification_datalist(
    dataset: str | os.PathLike[str],
    *,
    part: str = "train",
    val_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    fold: int | None = None,
    require_label: bool = True,
) -> list[dict[str, Any]]:
    """One part (``train``, ``val``, ``test`` or ``all``) of a classification dataset, for bundles.

    ``train``/``val`` come from the ``training`` section: a seeded split grouped by ``patient`` (no
    patient's nodules on both sides), or ``split_file`` (``voxpipe data split``) and ``fold``.
    ``test`` is the ``test`` section (or the split file's test part); ``require_label=False`` lets
    it list unlabelled patches (inference).
    """
    if part not in ("train", "val", "test", "all"):
        raise InputError(f"datalist part: expected train, val, test or all, found {part!r}")
    if part == "test" and not split_file:
        return load_classification_datalist(dataset, section="test", require_label=require_label)
    entries = load_classification_datalist(dataset, section="training")
    if part == "all":
        return entries
    return split_part(
        entries, part, val_fraction=val_fraction, seed=seed, split_file=split_file, fold=fold, source=dataset
    )


def class_weights(datalist: Sequence[Mapping[str, Any]], *, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights with mean 1, for ``CrossEntropyLoss(weight=...)``.

    Raises:
        InputError: a class of ``0..num_classes-1`` has no example, or a label is out of range.
    """
    counts = Counter(int(item["label"]) for item in datalist)
    outside = sorted(c for c in counts if not 0 <= c < num_classes)
    empty = [c for c in range(num_classes) if counts[c] == 0]
    if outside or empty:
        raise InputError(
            f"class labels: expected every class 0..{num_classes - 1} among {len(datalist)} training cases, "
            f"found counts {dict(sorted(counts.items()))}"
        )
    inverse = np.array([1.0 / counts[c] for c in range(num_classes)])
    return torch.tensor(inverse / inverse.mean(), dtype=torch.float32)


def sample_weights(datalist: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per-item weights 1 / (count of its class): a ``WeightedRandomSampler`` then draws classes equally often."""
    counts = Counter(int(item["label"]) for item in datalist)
    return [1.0 / counts[int(item["label"])] for item in datalist]


class RoiCropd(MapTransform):
    """Crop ``keys`` to the bounding box of ``roi_key``'s non-zero voxels plus ``margin`` voxels.

    Items without ``roi_key`` (or with an empty mask), and every item when ``roi_key`` is ``None``,
    pass through unchanged, so one datalist may
    mix patches with and without nodule masks. Expects channel-first arrays (C, X, Y, Z); the mask
    itself is cropped too when listed in ``keys``. MetaTensor affines are shifted with the crop.
    """

    def __init__(
        self, keys: Sequence[Hashable] | Hashable, *, roi_key: str | None = "mask", margin: int = 4
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.roi_key = roi_key
        self.margin = int(margin)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.transforms import SpatialCrop

        d = dict(data)
        mask = d.get(self.roi_key) if self.roi_key else None
        if mask is None:
            return d
        nonzero = np.argwhere(np.asarray(mask[0]) > 0)
        if not len(nonzero):
            return d
        start = np.maximum(nonzero.min(axis=0) - self.margin, 0)
        end = np.minimum(nonzero.max(axis=0) + 1 + self.margin, np.asarray(mask.shape[1:]))
        cropper = SpatialCrop(roi_start=start.tolist(), roi_end=end.tolist())
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        return d


def classification_metrics(
    *, num_classes: int, which: str = "key", pred_key: str = "pred", discrete_key: str = "pred_class"
) -> dict[str, Any]:
    """MONAI metric handlers for a classification evaluator.

    ``which="key"`` gives ``{"val_auc": ROCAUC}`` (macro one-vs-rest; for two classes the plain AUC),
    the metric that selects the best model; ``which="additional"`` gives ``val_accuracy``,
    ``val_f1``, ``val_sensitivity`` and ``val_specificity`` (``ConfusionMatrix`` on the one-hot
    argmax): for two classes those of class 1 (the positive, e.g. malignant), for more the mean over
    classes. The evaluator's postprocessing must give ``pred_key`` (softmax probabilities), a one-hot
    ``label`` and ``discrete_key`` (one-hot argmax). MONAI all-gathers them under DDP.
    """
    if which == "key":
        return {"val_auc": ROCAUC(average="macro", output_transform=from_engine([pred_key, "label"]))}
    if which != "additional":
        raise InputError(f"classification_metrics which: expected 'key' or 'additional', found {which!r}")
    return {
        f"val_{name}": ConfusionMatrix(
            include_background=num_classes > 2,
            metric_name=monai_name,
            output_transform=from_engine([discrete_key, "label"]),
        )
        for name, monai_name in CONFUSION_METRICS.items()
    }


BALANCE = ("none", "class_weights", "sampling")


def classification_loss(
    *, datalist: Sequence[Mapping[str, Any]], num_classes: int, balance: str = "class_weights"
) -> torch.nn.Module:
    """Cross-entropy, weighted by inverse class frequency when ``balance="class_weights"``.

    ``balance``: ``none``, ``class_weights`` or ``sampling`` (plain loss; the data loader draws
    classes equally often, see :func:`balanced_sample_weights`).
    """
    if balance not in BALANCE:
        raise InputError(f"balance: expected one of {BALANCE}, found {balance!r}")
    weight = class_weights(datalist, num_classes=num_classes) if balance == "class_weights" else None
    return torch.nn.CrossEntropyLoss(weight=weight)


def balanced_sample_weights(
    *, datalist: Sequence[Mapping[str, Any]], balance: str = "class_weights"
) -> list[float] | None:
    """Per-item sampling weights when ``balance="sampling"``, else ``None`` (plain shuffling)."""
    return sample_weights(datalist) if balance == "sampling" else None
