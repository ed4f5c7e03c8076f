"""One simulated round of active learning on labelled data: what the three commands would gain.

The reviewer is simulated by the reference labels. ``prelabel`` ranks the pool, and the ``n_correct``
cases at the top of the worklist get their reference labels as "corrections" (written as Slicer
``.seg.nrrd``, as a reviewer would save them). Then ``ingest`` measures the edit and ``finetune``
trains on those cases. ``prelabel`` with the new weights then predicts the cases that remain.
Reported: Dice against the reference on the remaining cases before and after, per structure, and
the edit-effort summary of the corrected cases. This is the measurement behind the README's
active-learning figures (``benchmarks/active_learning.py``) and the slow test.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.transforms.io import case_id, load_volume


def _dice_per_structure(
    work: Path, cases: Sequence[str], labels: Mapping[str, Path], names: Mapping[int, str]
) -> dict[str, float]:
    from voxpipe.metrics import dice

    scores: dict[str, list[float]] = {name: [] for name in names.values()}
    for case in cases:
        predicted = load_volume(work / "prelabel" / f"{case}.nii.gz", label=True).array
        reference = load_volume(labels[case], label=True).array
        for value, name in names.items():
            if (reference == value).any():
                scores[name].append(float(dice(predicted == value, reference == value)))
    return {name: float(np.mean(values)) if values else float("nan") for name, values in scores.items()}


def simulate_round(
    bundle: str | os.PathLike[str],
    pool: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    workdir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str],
    n_correct: int,
    finetune_epochs: int = 20,
    overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    tta: bool = True,
) -> dict[str, Any]:
    """Run prelabel → (simulated correction) → ingest → finetune → prelabel on ``pool`` (image, label) pairs.

    Returns:
        ``{"corrected": [...], "remaining": [...], "dice_before": {...}, "dice_after": {...},
        "edit_effort": summary, "weights": new weights}``.
    """
    from voxpipe.pipelines.annotation.finetune import finetune
    from voxpipe.pipelines.annotation.ingest import ingest
    from voxpipe.pipelines.annotation.prelabel import prelabel
    from voxpipe.pipelines.inference.infer import label_names
    from voxpipe.transforms.slicer_seg import write_slicer_seg

    root = Path(workdir)
    images = [Path(image) for image, _ in pool]
    labels = {case_id(image): Path(label) for image, label in pool}
    names = label_names(bundle)
    rows = prelabel(bundle, images, root, weights=weights, overrides=overrides, tta=tta)
    corrected = [row["case"] for row in rows[:n_correct]]
    remaining = [row["case"] for row in rows[n_correct:]]
    dice_before = _dice_per_structure(root, remaining, labels, names)
    reviewer = root / "reviewer"
    for case in corrected:
        reference = load_volume(labels[case], label=True)
        write_slicer_seg(reference.array, reference.affine, reviewer / f"{case}.seg.nrrd", names=names)
    effort = ingest(root, reviewer)["summary"]
    new_weights = finetune(
        root,
        bundle,
        root / "finetune",
        weights=weights,
        max_epochs=finetune_epochs,
        overrides=train_overrides,
    )
    prelabel(bundle, images, root, weights=new_weights, overrides=overrides, tta=tta)
    dice_after = _dice_per_structure(root, remaining, labels, names)
    return {
        "corrected": corrected,
        "remaining": remaining,
        "dice_before": dice_before,
        "dice_after": dice_after,
        "edit_effort": effort,
        "weights": str(new_weights),
    }
