"""Training curves as a PNG: loss and every validation metric per epoch, from ``metrics.csv`` rows.

Drawn by the training run's ``ProgressPlot`` handler and embedded in the evaluation report. Made with
matplotlib (Agg); Ignite and MONAI log curves to TensorBoard but write no picture a person can open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from voxpipe.transforms.files import atomic_path  # noqa: E402


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Training loss and every ``val_*`` column per epoch, side by side, as a PNG (written atomically).

    ``rows`` are ``metrics.csv`` rows (dicts with ``epoch``, ``loss`` and optional ``val_*`` values;
    empty strings mean "not validated that epoch").
    """
    epochs = [int(r["epoch"]) for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [float(r["loss"]) for r in rows])
    left.set_title("training loss")
    left.set_xlabel("epoch")
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("val_")]
    for key in keys:
        points = [
            (e, float(r[key])) for e, r in zip(epochs, rows, strict=True) if r.get(key) not in (None, "")
        ]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=key)
    right.set_title("validation")
    right.set_xlabel("epoch")
    if keys:
        right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)
    return path
