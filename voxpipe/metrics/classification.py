"""Classification metrics: ROC AUC (binary and one-vs-rest macro), accuracy, F1, sensitivity,
specificity and the confusion matrix, as pure numpy functions.

MONAI's ``compute_roc_auc`` needs one-hot tensors and has no F1/specificity for the multi-class
case; scikit-learn is not a runtime dependency. The definitions follow scikit-learn's
(``roc_auc_score`` with ties counted half, ``f1_score(average="macro")``); tests compare them.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC = P(score of a positive > score of a negative), ties counted half (Mann–Whitney).

    ``nan`` when only one class is present.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_ovr(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC for (N, C) class scores and integer labels 0..C-1."""
    y = np.asarray(labels).ravel()
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1 or p.shape[1] == 1:
        return roc_auc(y, p.ravel())
    if p.shape[1] == 2:
        return roc_auc(y == 1, p[:, 1])
    return float(np.nanmean([roc_auc(y == c, p[:, c]) for c in range(p.shape[1])]))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    q = np.asarray(predictions, dtype=np.int64).ravel()
    n = n_classes or int(max(y.max(initial=0), q.max(initial=0)) + 1)
    return np.bincount(y * n + q, minlength=n * n).reshape(n, n)


def classification_summary(
    labels: np.ndarray, predictions: np.ndarray, n_classes: int | None = None
) -> dict[str, float]:
    """Accuracy, macro F1, and for two classes sensitivity (recall of class 1) and specificity."""
    matrix = confusion_matrix(labels, predictions, n_classes)
    total = matrix.sum()
    tp = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (actual + predicted) > 0  # scikit-learn averages over classes seen in either
    result = {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "f1_macro": float(f1[present].mean()),
    }
    if matrix.shape == (2, 2):
        tn, fp, fn, tp1 = matrix.ravel()
        result["sensitivity"] = float(tp1 / (tp1 + fn)) if tp1 + fn else float("nan")
        result["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
        result["f1"] = float(f1[1])
    return result
