"""``voxpipe annotate finetune``: train the current model further on the corrected cases.

The bundle's own train config runs (:func:`voxpipe.pipelines.bundles.run.run_bundle`) from the
work folder's weights (``pretrained_weights``: voxpipe's transfer learning, which loads what fits
and reports the rest). Its dataset is a CSV datalist of the images and their ``labels/final``.
Then ``voxpipe annotate prelabel`` with the new weights re-ranks the cases still to correct. That is one
round of active learning in three commands.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError
from voxpipe.pipelines.annotation.prelabel import read_manifest
from voxpipe.transforms.files import write_text_atomic

logger = logging.getLogger(__name__)


def finetune(
    workdir: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    max_epochs: int = 20,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Fine-tune on the work folder's final labels; the new weights file (``OUTPUT/models/model_final.pt``).

    Args:
        weights: starting weights (default: the ones ``prelabel`` used, from ``annotation.json``).
        max_epochs, overrides: train config values (e.g. ``{"learning_rate": 1e-3}``).

    Raises:
        InputError: no corrected case yet, or no starting weights.
    """
    from voxpipe.pipelines.bundles.run import run_bundle

    root = Path(workdir)
    manifest = read_manifest(root)
    finals = sorted((root / "labels" / "final").glob("*.nii.gz"))
    cases = {p.name[: -len(".nii.gz")]: p for p in finals if p.name[: -len(".nii.gz")] in manifest["cases"]}
    if not cases:
        raise InputError(
            f"{str(root / 'labels' / 'final')!r}: expected corrected labels (run `voxpipe annotate ingest` "
            "first), found none"
        )
    start = weights or manifest.get("weights")
    if not start or not Path(start).is_file():
        raise InputError(
            f"{start!r}: expected the weights to fine-tune from, found no file",
            hint="pass --weights FILE (the model that made the pre-labels)",
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "image", "label"])
    for case, label in sorted(cases.items()):
        writer.writerow([case, manifest["cases"][case]["image"], str(label.resolve())])
    datalist = write_text_atomic(root / "finetune.csv", buffer.getvalue())
    out = Path(output_dir)
    values = {
        "dataset_dir": str(datalist.resolve()),
        "output_dir": str(out.resolve()),
        "pretrained_weights": str(Path(start).resolve()),
        "max_epochs": int(max_epochs),
        **manifest.get("overrides", {}),
        **(overrides or {}),
    }
    if (
        len(cases) < 5
    ):  # the default 20% validation part would be empty or one case: validate on the training cases
        values.setdefault("val_fraction", 0.0)
    logger.info(
        "fine-tuning %s on %d corrected case(s) from %s for %d epochs",
        Path(bundle).name,
        len(cases),
        start,
        max_epochs,
    )
    run_bundle(bundle, config="train", overrides=values)
    trained = out / "models" / "model_final.pt"
    if not trained.is_file():
        raise InputError(f"{str(bundle)!r}: training finished but wrote no {str(trained)!r}")
    return trained
