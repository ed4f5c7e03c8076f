"""Lesion-wise detection: connected components of prediction and reference matched by overlap.

Neither MONAI nor scipy offers this; LiTS-style tumour evaluation needs it. A reference lesion is
detected (TP) when some predicted component overlaps it with IoU ≥ ``threshold``; a predicted
component that reaches that IoU with no reference lesion is a false positive. Components are
26-connected (face, edge and corner neighbours), the usual choice for CT lesions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_STRUCTURE = np.ones((3, 3, 3), dtype=bool)
# Structure names that denote lesions (counted one by one), not organs: tumour, metastasis, nodule, ...
LESION_NAME = re.compile(
    r"tumou?r|lesion|nodule|metasta|cancer|mass|cyst|edema|oedema|enhancing|necro", re.IGNORECASE
)


def is_lesion_name(name: str) -> bool:
    """Whether a structure's name denotes lesions (scored lesion by lesion) rather than an organ."""
    return bool(LESION_NAME.search(name))


@dataclass(frozen=True)
class LesionDetection:
    """Lesion counts and rates; rates are ``nan`` when their denominator is 0."""

    n_reference: int
    n_predicted: int
    tp: int
    fp: int
    fn: int

    @property
    def recall(self) -> float:
        return self.tp / self.n_reference if self.n_reference else float("nan")

    @property
    def precision(self) -> float:
        matched_predictions = self.n_predicted - self.fp
        return matched_predictions / self.n_predicted if self.n_predicted else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if np.isnan(p) or np.isnan(r):
            return float("nan")
        return 2 * p * r / (p + r) if p + r else 0.0


def detect_lesions(
    prediction: np.ndarray, reference: np.ndarray, *, threshold: float = 0.1
) -> LesionDetection:
    """Match 26-connected components of two masks by IoU ≥ ``threshold``.

    Args:
        prediction, reference: masks of one shape.
        threshold: smallest IoU that counts as a match (0 < threshold ≤ 1; default 0.1).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"lesion threshold: expected 0 < IoU ≤ 1, found {threshold}")
    p = np.asarray(prediction, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"masks must have the same shape, found {p.shape} and {r.shape}")
    ref_labels, n_ref = ndimage.label(r, structure=_STRUCTURE)
    pred_labels, n_pred = ndimage.label(p, structure=_STRUCTURE)
    if n_ref == 0 or n_pred == 0:
        return LesionDetection(n_ref, n_pred, 0, n_pred, n_ref)
    both = (ref_labels > 0) & (pred_labels > 0)
    pairs = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    keys, overlap = np.unique(pairs, return_counts=True)
    ref_ids, pred_ids = keys // (n_pred + 1), keys % (n_pred + 1)
    ref_size = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_size = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    iou = overlap / (ref_size[ref_ids] + pred_size[pred_ids] - overlap)
    matched = iou >= threshold
    tp = len(np.unique(ref_ids[matched]))
    matched_pred = len(np.unique(pred_ids[matched]))
    return LesionDetection(n_ref, n_pred, tp, n_pred - matched_pred, n_ref - tp)
