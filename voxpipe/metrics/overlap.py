"""Overlap and volume metrics as pure functions on boolean masks.

Written here rather than taken from MONAI's ``compute_dice``/``compute_confusion_matrix_metric``
because evaluation works on whole volumes on the source grid (numpy, any dtype, no one-hot tensors)
and needs explicit empty-mask behaviour: every ratio whose denominator is 0 is ``nan`` here, and
:mod:`voxpipe.metrics.conventions` decides what a challenge makes of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of one binary comparison."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def empty(self) -> tuple[bool, bool]:
        """(prediction empty, reference empty)."""
        return (self.tp + self.fp == 0, self.tp + self.fn == 0)


def confusion(prediction: np.ndarray, reference: np.ndarray) -> Confusion:
    """TP/FP/FN/TN voxel counts of two masks of the same shape.

    Raises:
        ValueError: the shapes differ.
    """
    p = np.asarray(prediction, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"masks must have the same shape, found {p.shape} and {r.shape}")
    tp = int(np.count_nonzero(p & r))
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    return Confusion(tp=tp, fp=n_p - tp, fn=n_r - tp, tn=p.size - n_p - n_r + tp)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def dice_from(c: Confusion) -> float:
    """2TP / (2TP + FP + FN); ``nan`` when both masks are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def iou_from(c: Confusion) -> float:
    """TP / (TP + FP + FN) (Jaccard); ``nan`` when both masks are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn)


def sensitivity_from(c: Confusion) -> float:
    """Recall TP / (TP + FN); ``nan`` when the reference is empty."""
    return _ratio(c.tp, c.tp + c.fn)


def precision_from(c: Confusion) -> float:
    """TP / (TP + FP); ``nan`` when the prediction is empty."""
    return _ratio(c.tp, c.tp + c.fp)


def specificity_from(c: Confusion) -> float:
    """TN / (TN + FP); ``nan`` only for a volume that is all reference."""
    return _ratio(c.tn, c.tn + c.fp)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|) of two masks; ``nan`` when both are empty.

    Raises:
        ValueError: the shapes differ.
    """
    return dice_from(confusion(prediction, reference))


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in millilitres (spacing in mm)."""
    return float(np.count_nonzero(mask) * float(np.prod(spacing)) / 1000.0)


def volume_difference(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float]:
    """(prediction − reference volume in ml, that difference relative to the reference volume; ``nan`` if it is 0)."""
    vp, vr = volume_ml(prediction, spacing), volume_ml(reference, spacing)
    return vp - vr, _ratio(vp - vr, vr)
