"""Seeded train/val/test and k-fold splits of a datalist, saved as JSON and read back.

Splits (:func:`make_split`) are by ratio or k-fold, grouped by patient when the entries have one
(all of a patient's scans land on one side), and identical for a seed. The JSON they are saved as
is read back by :func:`select_split` (and :func:`voxpipe.pipelines.data.datalists.split_datalist`,
which the bundles use).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import InputError
from voxpipe.transforms.files import write_text_atomic


def make_split(
    entries: Sequence[dict[str, Any]],
    *,
    val: float = 0.2,
    test: float = 0.0,
    folds: int | None = None,
    seed: int = 0,
    group_key: str = "patient",
) -> dict[str, Any]:
    """A seeded split of ``entries`` by case id: ratio (train/val/test) or k-fold (+ optional test).

    Cases sharing ``entry[group_key]`` (a patient) always land in the same part. With ``folds``,
    the test part (``test`` fraction) is held out first and the rest is cut into ``folds`` folds;
    fold ``k`` validates on its own cases and trains on the others.

    Returns:
        ``{"seed", "group_key", "train", "val", "test"}`` or, for k-fold, ``{"seed", "group_key",
        "test", "folds": [{"train", "val"}, ...]}``; case-id lists, sorted.

    Raises:
        InputError: fractions outside [0, 1), fewer groups than parts, or duplicate case ids.
    """
    cases = [str(e["case"]) for e in entries]
    if len(set(cases)) != len(cases):
        duplicates = sorted({c for c in cases if cases.count(c) > 1})
        raise InputError(f"split: expected unique case ids, found duplicates {duplicates}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(
            f"split fractions: expected val, test >= 0 with val + test < 1, found val={val}, test={test}"
        )
    groups: dict[str, list[str]] = {}
    for entry in entries:
        groups.setdefault(str(entry.get(group_key) or entry["case"]), []).append(str(entry["case"]))
    names = sorted(groups)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]

    def take(pool: list[str], fraction: float) -> tuple[list[str], list[str]]:
        """Whole groups from the front of ``pool`` until ``fraction`` of all cases is reached."""
        target, taken, count = round(fraction * len(cases)), [], 0
        if fraction > 0:
            target = max(target, 1)
        while pool and count < target:
            taken.append(pool.pop(0))
            count += len(groups[taken[-1]])
        return taken, pool

    def flat(group_names: list[str]) -> list[str]:
        return sorted(case for name in group_names for case in groups[name])

    test_groups, rest = take(list(order), test)
    result: dict[str, Any] = {"seed": seed, "group_key": group_key, "test": flat(test_groups)}
    if folds:
        if folds < 2 or folds > len(rest):
            raise InputError(
                f"folds: expected 2..{len(rest)} (patient groups left after the test part), found {folds}"
            )
        buckets: list[list[str]] = [[] for _ in range(folds)]
        for name in sorted(
            rest, key=lambda g: -len(groups[g])
        ):  # largest groups first, then fill the smallest fold
            min(buckets, key=lambda b: sum(len(groups[g]) for g in b)).append(name)
        result["folds"] = [
            {"train": flat([g for j, b in enumerate(buckets) if j != k for g in b]), "val": flat(bucket)}
            for k, bucket in enumerate(buckets)
        ]
        return result
    val_groups, train_groups = take(rest, val)
    if not train_groups:
        raise InputError(f"split: {len(names)} patient groups are too few for val={val}, test={test}")
    result.update(train=flat(train_groups), val=flat(val_groups))
    return result


def save_split(split: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a split as JSON (atomically)."""
    return write_text_atomic(path, json.dumps(split, indent=2) + "\n")


def select_split(
    entries: Sequence[dict[str, Any]],
    split_file: str | os.PathLike[str],
    *,
    part: str = "train",
    fold: int | None = None,
    source: str | os.PathLike[str] = "the dataset",
) -> list[dict[str, Any]]:
    """The ``entries`` (dicts with a ``case``) in ``part`` (fold ``fold``) of a split saved by ``voxpipe data split``."""
    split_path = Path(split_file)
    try:
        split = json.loads(split_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{str(split_path)!r}: could not read the split JSON ({error})") from error
    if "folds" in split and part in ("train", "val"):
        if fold is None or not 0 <= fold < len(split["folds"]):
            raise InputError(
                f"{str(split_path)!r}: a {len(split['folds'])}-fold split; expected fold in 0..{len(split['folds']) - 1}, found {fold!r}"
            )
        wanted = split["folds"][fold][part]
    elif part in split:
        wanted = split[part]
    else:
        raise InputError(
            f"{str(split_path)!r}: expected part in {[k for k in ('train', 'val', 'test') if k in split or 'folds' in split]}, found {part!r}"
        )
    by_case = {entry["case"]: entry for entry in entries}
    unknown = sorted(set(wanted) - set(by_case))
    if unknown:
        raise InputError(f"{str(split_path)!r}: cases {unknown[:5]} are not in the dataset {str(source)!r}")
    return [by_case[case] for case in sorted(wanted)]


def split_part(
    entries: Sequence[dict[str, Any]],
    part: str,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    fold: int | None = None,
    source: str | os.PathLike[str] = "the dataset",
) -> list[dict[str, Any]]:
    """The ``train`` or ``val`` part of ``entries``: from ``split_file`` (and ``fold``), else a seeded
    :func:`make_split` with ``val_fraction`` (grouped by patient). What the bundles' datalists call."""
    if split_file:
        return select_split(entries, split_file, part=part, fold=fold, source=source)
    wanted = set(make_split(entries, val=val_fraction, seed=seed)[part])
    return [entry for entry in entries if entry["case"] in wanted]
