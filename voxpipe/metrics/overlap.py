"""Overlap metrics as pure functions on label masks.

Written here rather than taken from MONAI's ``compute_dice`` because evaluation works on whole
volumes on the source grid (numpy, any dtype, no one-hot tensors) and needs an explicit empty-mask
convention: Dice is NaN when both masks are empty (the nnU-Net convention), 0 when only one is.
"""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|) of two boolean masks of the same shape.

    Returns:
        A float in [0, 1]; ``nan`` when both masks are empty.

    Raises:
        ValueError: the shapes differ.
    """
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"dice: masks must have the same shape, found {prediction.shape} and {reference.shape}")
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total
