"""Datalists for training and inference: MSD ``dataset.json`` with deterministic train/val splits.

MONAI's ``load_decathlon_datalist`` resolves the paths; this adds the checks a user needs (the file
and every listed image exist, with the offending entry named) and a seeded split that bundles can
ask for with plain arguments instead of ``$`` expressions.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)

PARTS = ("all", "train", "val")


def msd_datalist(
    dataset_dir: str | os.PathLike[str],
    *,
    section: str = "training",
    part: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Entries of an MSD ``dataset.json`` as MONAI datalist dicts with absolute paths.

    Args:
        dataset_dir: folder containing ``dataset.json`` (MSD Task03/Task06 layout).
        section: ``"training"`` (image + label) or ``"test"`` (image only).
        part: ``"all"``, or ``"train"`` / ``"val"``: the two sides of a seeded random split of
            ``section``; the same ``seed`` and ``val_fraction`` always give the same split, and
            at least one case goes to each side when there are two or more.
        val_fraction: fraction of cases in the validation part.
        seed: seed of the split.

    Raises:
        InputError: missing or malformed ``dataset.json``, unknown section/part, or a listed file
            that does not exist.
    """
    root = Path(dataset_dir)
    manifest = root / "dataset.json"
    if not manifest.is_file():
        raise InputError(f"{str(manifest)!r}: expected an MSD dataset.json in the dataset folder, found no file")
    if part not in PARTS:
        raise InputError(f"datalist part: expected one of {PARTS}, found {part!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction: expected a number in [0, 1), found {val_fraction!r}")
    try:
        sections = json.loads(manifest.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{str(manifest)!r}: not valid JSON ({error})") from error
    if section not in sections:
        raise InputError(f"{str(manifest)!r}: expected a {section!r} list, found keys {sorted(sections)}")
    entries = load_decathlon_datalist(str(manifest), is_segmentation=True, data_list_key=section, base_dir=str(root))
    for index, entry in enumerate(entries):
        for key in ("image", "label"):
            if key in entry and not Path(entry[key]).exists():
                raise InputError(
                    f"{str(manifest)!r}: {section}[{index}].{key} points to {entry[key]!r}, which does not exist"
                )
    if part == "all":
        return entries
    order = np.random.default_rng(seed).permutation(len(entries))
    n_val = int(round(val_fraction * len(entries)))
    if len(entries) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(entries) - 1)
    chosen = order[:n_val] if part == "val" else order[n_val:]
    return [entries[i] for i in sorted(chosen)]
