"""How unsure the model is about one case, from its class probabilities (flip-TTA mean).

MONAI Label ranks by epistemic uncertainty from MC dropout; voxpipe's bundles have no dropout by
default, so the signal here is the predictive entropy of the flip test-time-augmentation mean. Where
the flips disagree, the mean is flat and its entropy high. Entropy is normalised by ``log C`` (0 =
certain, 1 = uniform over the C classes) and averaged over the *region of interest*: voxels the
model labels foreground, or gives at least ``FOREGROUND_FLOOR`` foreground probability. A case
with no foreground at all is therefore scored on its doubtful voxels too, and the huge certain
background does not dilute the figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FOREGROUND_FLOOR = 0.25  # P(not background) from which a voxel counts as possibly foreground
UNCERTAIN = 0.5  # normalised entropy above which a voxel counts as uncertain


def case_uncertainty(probabilities: np.ndarray) -> dict[str, Any]:
    """Uncertainty figures of one case from ``probabilities`` ``(C, X, Y, Z)`` (summing to 1 over C).

    Returns:
        ``mean_entropy`` (normalised, over the region), ``uncertain_fraction`` (of the region above
        :data:`UNCERTAIN`), ``region_voxels``, and ``entropy`` (the normalised entropy map) for the thumbnail.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    classes = p.shape[0]
    entropy = np.zeros(p.shape[1:], dtype=np.float32)
    for c in range(classes):  # channel by channel: no (C, X, Y, Z) temporary
        pc = np.clip(p[c], 1e-7, 1.0)
        entropy -= pc * np.log(pc)
    entropy /= np.float32(np.log(classes))
    region = (p[0] < 1.0 - FOREGROUND_FLOOR) | (p.argmax(0) > 0)
    count = int(region.sum())
    inside = entropy[region]
    return {
        "mean_entropy": float(inside.mean()) if count else 0.0,
        "uncertain_fraction": float((inside > UNCERTAIN).mean()) if count else 0.0,
        "region_voxels": count,
        "entropy": entropy,
    }
