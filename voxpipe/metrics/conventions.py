"""Empty-mask conventions of the challenges, selectable by name.

The pure metric functions return ``nan`` for 0/0 ratios and ``inf`` distances when exactly one
surface is empty. Challenges disagree on what those cases score:

``nnunet``
    Both empty → every metric undefined (``nan``), left out of means (nnU-Net's evaluation).
``flare``
    Both empty → Dice = IoU = NSD = sensitivity = precision = 1 and distances 0 (FLARE: a correct
    "nothing here" is a perfect answer).
``lits``
    Both empty → per-case Dice (and IoU, NSD) 1, distances 0; the summary also reports LiTS's
    *global* Dice (all cases' voxels pooled), which needs no convention.

In every convention, exactly one mask empty → Dice = IoU = NSD = 0 (the formulas give that) and
surface distances = the image diagonal in mm, the largest distance possible on that grid, so a
missed or hallucinated structure is penalised and means stay finite. A failed case (missing or
unreadable prediction) scores the worst value of every metric whatever the reference holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

CONVENTIONS = ("nnunet", "flare", "lits")
OVERLAP = ("dice", "iou", "nsd", "sensitivity", "precision")
DISTANCES = ("hd", "hd95", "assd", "msd")
#: Direction of each metric: True when higher is better.
HIGHER_IS_BETTER = {
    "dice": True,
    "iou": True,
    "nsd": True,
    "sensitivity": True,
    "precision": True,
    "specificity": True,
    "hd": False,
    "hd95": False,
    "assd": False,
    "msd": False,
    "lesion_recall": True,
    "lesion_precision": True,
    "lesion_f1": True,
}


def check_convention(name: str) -> str:
    if name not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {list(CONVENTIONS)}, found {name!r}")
    return name


def apply_convention(
    metrics: Mapping[str, float],
    *,
    prediction_empty: bool,
    reference_empty: bool,
    convention: str,
    worst_distance: float,
) -> dict[str, float]:
    """Fill the empty-mask cases of one structure's metrics according to ``convention``.

    Args:
        metrics: raw values from the pure functions (``nan``/``inf`` where undefined).
        prediction_empty, reference_empty: which masks were empty.
        convention: one of :data:`CONVENTIONS`.
        worst_distance: the value (mm) for distances when exactly one mask is empty.
    """
    check_convention(convention)
    out = dict(metrics)
    if prediction_empty and reference_empty:
        if convention in ("flare", "lits"):
            out.update({k: 1.0 for k in OVERLAP if k in out})
            out.update({k: 0.0 for k in DISTANCES if k in out})
        else:
            out.update({k: math.nan for k in (*OVERLAP, *DISTANCES) if k in out})
    elif prediction_empty or reference_empty:
        out.update({k: worst_distance for k in DISTANCES if k in out})
        out.update({k: 0.0 for k in ("dice", "iou", "nsd") if k in out})
    return out


def worst_values(metrics: Mapping[str, float], *, worst_distance: float) -> dict[str, float]:
    """The worst value of every metric (a failed case)."""
    out = {}
    for key, value in metrics.items():
        if key in HIGHER_IS_BETTER:
            out[key] = 0.0 if HIGHER_IS_BETTER[key] else worst_distance
        else:
            out[key] = value
    return out
