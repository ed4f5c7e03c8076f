"""Datalists (MSD, LiTS, plain folders, CSV), seeded splits saved as JSON, and cached datasets.

A datalist is what MONAI datasets take: a list of dicts with absolute ``image`` (and ``label``)
paths. Every entry here also carries ``case`` (the case identifier) and, when known, ``patient``.

Layouts recognised by :func:`load_datalist`:

* **MSD**: a folder with ``dataset.json`` (Task03 Liver, Task06 Lung); MONAI's
  ``load_decathlon_datalist`` resolves the paths.
* **LiTS**: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` anywhere below the folder.
* **Folder**: ``images/`` and ``labels/`` matched by case id (an nnU-Net ``_0000`` channel suffix on
  image names is ignored).
* **CSV**: columns ``image`` and optionally ``label``, ``case``, ``patient``; relative paths are
  resolved against the CSV's folder.

Splits (:func:`make_split`) are train/val/test by ratio or k-fold, grouped by patient when the
entries have one (all of a patient's scans land on one side), and identical for a seed. The JSON
they are saved as is read back by :func:`split_datalist`, which the bundles use.

:func:`cached_dataset` chooses MONAI's ``CacheDataset`` (RAM) or ``PersistentDataset`` (disk) and
estimates the space the cache needs before filling it, refusing with advice when it will not fit.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset, load_decathlon_datalist

from voxpipe.errors import InputError
from voxpipe.transforms.io import case_id, find_volumes, read_geometry, volume_suffix, write_text_atomic

logger = logging.getLogger(__name__)

PARTS = ("all", "train", "val", "test")
LAYOUTS = ("msd", "lits", "folder", "csv")
_LITS = re.compile(r"^(volume|segmentation)-(\d+)$")
_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net's per-channel image suffix


def detect_layout(source: str | os.PathLike[str]) -> str:
    """``"msd"``, ``"lits"``, ``"folder"`` or ``"csv"`` for a dataset path.

    Raises:
        InputError: the path matches no known layout (the message lists what was looked for).
    """
    path = Path(source)
    if not path.exists():
        raise InputError(f"{str(path)!r}: expected a dataset folder or CSV file, found nothing at that path")
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_file() and path.name == "dataset.json":
        return "msd"
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return "msd"
        if (path / "images").is_dir():
            return "folder"
        if any(_LITS.match(case_id(p)) for p in path.rglob("volume-*")):
            return "lits"
    raise InputError(
        f"{str(path)!r}: expected a dataset: a folder with dataset.json (MSD), volume-N/segmentation-N files "
        "(LiTS), images/ + labels/ folders, or a .csv file; found none of these"
    )


def load_datalist(
    source: str | os.PathLike[str], *, layout: str | None = None, section: str = "training", check_files: bool = True
) -> list[dict[str, Any]]:
    """All cases of a dataset as datalist dicts (``image``, optional ``label``, ``case``, ``patient``).

    Args:
        source: dataset folder, MSD ``dataset.json`` or CSV file.
        layout: one of :data:`LAYOUTS`; detected when omitted.
        section: MSD only: ``"training"`` or ``"test"``.
        check_files: raise when a listed file does not exist (``voxpipe data check`` turns this off
            to report every missing file instead of the first).

    Raises:
        InputError: unknown layout, malformed manifest, a missing listed file (named).
    """
    layout = layout or detect_layout(source)
    readers: dict[str, Callable[..., list[dict[str, Any]]]] = {
        "msd": lambda: _msd_entries(Path(source), section),
        "lits": lambda: _lits_entries(Path(source)),
        "folder": lambda: _folder_entries(Path(source)),
        "csv": lambda: _csv_entries(Path(source)),
    }
    if layout not in readers:
        raise InputError(f"dataset layout: expected one of {LAYOUTS}, found {layout!r}")
    entries = readers[layout]()
    if check_files:
        for entry in entries:
            for key in ("image", "label"):
                if entry.get(key) and not Path(entry[key]).exists():
                    raise InputError(
                        f"{str(source)!r}: case {entry['case']!r}: {key} {entry[key]!r} does not exist"
                    )
    return entries


def _msd_entries(path: Path, section: str) -> list[dict[str, Any]]:
    manifest = path if path.is_file() else path / "dataset.json"
    if not manifest.is_file():
        raise InputError(f"{str(manifest)!r}: expected an MSD dataset.json in the dataset folder, found no file")
    try:
        sections = json.loads(manifest.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{str(manifest)!r}: not valid JSON ({error})") from error
    if section not in sections:
        raise InputError(f"{str(manifest)!r}: expected a {section!r} list, found keys {sorted(sections)}")
    entries = load_decathlon_datalist(str(manifest), is_segmentation=True, data_list_key=section, base_dir=str(manifest.parent))
    return [{**entry, "case": case_id(entry["image"])} for entry in entries]


def _lits_entries(root: Path) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        match = _LITS.match(case_id(path)) if volume_suffix(path) else None
        if match:
            entry = found.setdefault(match.group(2), {"case": f"volume-{match.group(2)}"})
            entry["image" if match.group(1) == "volume" else "label"] = str(path)
    return [found[k] for k in sorted(found, key=int)]


def _folder_entries(root: Path) -> list[dict[str, Any]]:
    labels = {case_id(p): p for p in find_volumes(root / "labels")} if (root / "labels").is_dir() else {}
    entries = []
    for image in find_volumes(root / "images"):
        case = _CHANNEL.sub("", case_id(image))
        entry: dict[str, Any] = {"image": str(image), "case": case}
        if case in labels:
            entry["label"] = str(labels.pop(case))
        entries.append(entry)
    for case, label in sorted(labels.items()):  # a label without its image: kept so the check reports it
        entries.append({"image": "", "label": str(label), "case": case})
    return entries


def _csv_entries(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "image" not in rows[0]:
        raise InputError(f"{str(path)!r}: expected a CSV with an 'image' column, found columns {list(rows[0]) if rows else []}")
    entries = []
    for number, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise InputError(f"{str(path)!r}: line {number}: expected an image path, found an empty 'image' cell")
        entry: dict[str, Any] = {"image": str((path.parent / row["image"]).resolve())}
        if row.get("label"):
            entry["label"] = str((path.parent / row["label"]).resolve())
        entry["case"] = row.get("case") or case_id(row["image"])
        if "patient" in row:  # every entry gets the key (a batch collates them), the case id when blank
            entry["patient"] = row["patient"] or entry["case"]
        entries.append(entry)
    return entries


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
        raise InputError(f"split fractions: expected val, test >= 0 with val + test < 1, found val={val}, test={test}")
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
            raise InputError(f"folds: expected 2..{len(rest)} (patient groups left after the test part), found {folds}")
        buckets: list[list[str]] = [[] for _ in range(folds)]
        for name in sorted(rest, key=lambda g: -len(groups[g])):  # largest groups first, then fill the smallest fold
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


def split_datalist(
    source: str | os.PathLike[str], split_file: str | os.PathLike[str], *, part: str = "train", fold: int | None = None
) -> list[dict[str, Any]]:
    """The entries of ``source`` in ``part`` of the saved split (fold ``fold`` for k-fold splits).

    Raises:
        InputError: unknown part/fold, or split case ids that the dataset does not have.
    """
    return select_split(load_datalist(source), split_file, part=part, fold=fold, source=source)


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
            raise InputError(f"{str(split_path)!r}: a {len(split['folds'])}-fold split; expected fold in 0..{len(split['folds']) - 1}, found {fold!r}")
        wanted = split["folds"][fold][part]
    elif part in split:
        wanted = split[part]
    else:
        raise InputError(f"{str(split_path)!r}: expected part in {[k for k in ('train', 'val', 'test') if k in split or 'folds' in split]}, found {part!r}")
    by_case = {entry["case"]: entry for entry in entries}
    unknown = sorted(set(wanted) - set(by_case))
    if unknown:
        raise InputError(f"{str(split_path)!r}: cases {unknown[:5]} are not in the dataset {str(source)!r}")
    return [by_case[case] for case in sorted(wanted)]


def msd_datalist(
    dataset_dir: str | os.PathLike[str],
    *,
    section: str = "training",
    part: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    fold: int | None = None,
) -> list[dict[str, Any]]:
    """Entries of a dataset (any layout; the name is historical) for one part of a split.

    Args:
        dataset_dir: dataset folder (MSD ``dataset.json``, LiTS, images/labels) or CSV.
        section: MSD section, ``"training"`` (image + label) or ``"test"`` (image only).
        part: ``"all"``, or ``"train"`` / ``"val"`` (/ ``"test"`` with a split file).
        val_fraction: without ``split_file``: fraction of cases in a seeded validation part.
        seed: seed of that split.
        split_file: a split saved by ``voxpipe data split`` (takes precedence over the fraction).
        fold: the fold of a k-fold split file.

    Raises:
        InputError: missing/malformed manifest, unknown part, a listed file that does not exist.
    """
    if part not in PARTS:
        raise InputError(f"datalist part: expected one of {PARTS}, found {part!r}")
    if split_file and part != "all":
        return split_datalist(dataset_dir, split_file, part=part, fold=fold)
    entries = load_datalist(dataset_dir, section=section)
    if part == "all":
        return entries
    if part == "test":
        raise InputError("datalist part 'test' needs a split file (voxpipe data split --test ...)")
    split = make_split(entries, val=val_fraction, seed=seed)
    wanted = set(split[part])
    return [e for e in entries if e["case"] in wanted]


def estimate_cache_bytes(
    entries: Sequence[dict[str, Any]], *, keys: Sequence[str] = ("image", "label"), pixdim: Sequence[float] | None = None, bytes_per_voxel: int = 4
) -> int:
    """Bytes the deterministic preprocessing output of ``entries`` takes (float32 per key).

    From the headers only: voxels per case, scaled by (source spacing / ``pixdim``) when the chain
    resamples (a ``pixdim`` entry <= 0 keeps that axis, as in ``Spacingd``). Cropping makes the real figure smaller, so this is an upper bound.
    """
    total = 0.0
    for entry in entries:
        for key in keys:
            if not entry.get(key):
                continue
            shape, affine = read_geometry(entry[key])
            voxels = float(np.prod(shape))
            if pixdim is not None:
                spacing = np.linalg.norm(affine[:3, :3], axis=0)
                target = np.asarray(pixdim, dtype=float)
                target = np.where(target > 0, target, spacing)  # MONAI's Spacingd keeps axes given as <= 0
                voxels *= float(np.prod(spacing / target))
            total += voxels * bytes_per_voxel
    return int(total)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def cached_dataset(
    data: Sequence[dict[str, Any]],
    transform: Callable[..., Any],
    *,
    cache: str = "memory",
    cache_dir: str | os.PathLike[str] | None = None,
    cache_rate: float = 1.0,
    pixdim: Sequence[float] | None = None,
    limit_gb: float | None = None,
    keys: Sequence[str] = ("image", "label"),
    progress: bool = False,
) -> Dataset:
    """A MONAI dataset that caches the deterministic part of ``transform``.

    Args:
        data: datalist.
        transform: the full chain; MONAI caches everything before its first random transform.
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``)
            or ``"none"`` (plain ``Dataset``).
        cache_rate: fraction of cases cached in memory.
        pixdim: target spacing of the chain (mm), for the size estimate.
        limit_gb: refuse when the estimate exceeds this (default: available RAM for memory, free
            disk space in ``cache_dir`` for disk).

    Raises:
        InputError: unknown ``cache`` or the estimate exceeds the limit (with advice).
    """
    if cache not in ("memory", "disk", "none"):
        raise InputError(f"cache: expected 'memory', 'disk' or 'none', found {cache!r}")
    if cache == "none":
        return Dataset(data, transform)
    if cache == "disk" and not cache_dir:
        raise InputError("cache='disk' needs cache_dir, the folder PersistentDataset writes to")
    fraction = cache_rate if cache == "memory" else 1.0
    needed = estimate_cache_bytes(data, keys=keys, pixdim=pixdim) * fraction
    if cache == "memory":
        limit = limit_gb * 1e9 if limit_gb is not None else available_memory_bytes()
        where = "available RAM" if limit_gb is None else f"limit_gb={limit_gb}"
    else:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        limit = limit_gb * 1e9 if limit_gb is not None else shutil.disk_usage(cache_dir).free  # type: ignore[arg-type]
        where = f"free disk in {cache_dir}" if limit_gb is None else f"limit_gb={limit_gb}"
    logger.info("caching %d cases in %s: about %.2f GB needed (%s: %.2f GB)", len(data), cache, needed / 1e9, where, limit / 1e9)
    if needed > limit:
        advice = (
            "use cache='disk' with a cache_dir, lower cache_rate, or a coarser pixdim"
            if cache == "memory"
            else "free disk space, choose another cache_dir, or a coarser pixdim"
        )
        raise InputError(
            f"cache: the preprocessed dataset needs about {needed / 1e9:.2f} GB but {where} is {limit / 1e9:.2f} GB; {advice}"
        )
    if cache == "disk":
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    return CacheDataset(data, transform, cache_rate=cache_rate, progress=progress)
