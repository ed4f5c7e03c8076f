"""Datalists: MSD, LiTS, plain folders and CSV read into what MONAI datasets take.

A datalist is a list of dicts with absolute ``image`` (and ``label``) paths. Every entry here also
carries ``case`` (the case identifier) and, when known, ``patient``.

Layouts recognised by :func:`load_datalist`:

* **MSD**: a folder with ``dataset.json`` (Task03 Liver, Task06 Lung); MONAI's
  ``load_decathlon_datalist`` resolves the paths.
* **nnU-Net v2 raw**: ``dataset.json`` (``channel_names``, ``labels`` as name → value,
  ``file_ending``) with ``imagesTr/<case>_0000<file_ending>``, ``_0001``… (one file per channel) and
  ``labelsTr/<case><file_ending>``; ``imagesTs`` is the test section. A case with several channels
  has ``image`` as the list of its channel files, in channel order.
* **LiTS**: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` anywhere below the folder.
* **Folder**: ``images/`` and ``labels/`` matched by case id (an nnU-Net ``_0000`` channel suffix on
  image names is ignored).
* **CSV**: columns ``image`` and optionally ``label``, ``case``, ``patient``; relative paths are
  resolved against the CSV's folder.

:func:`msd_datalist` (the function the bundles call) and :func:`split_datalist` pick one part of a
split (:mod:`voxpipe.pipelines.data.splits`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from voxpipe.errors import InputError
from voxpipe.pipelines.data.splits import make_split, select_split
from voxpipe.transforms.io import case_id, find_volumes, volume_suffix

logger = logging.getLogger(__name__)

PARTS = ("all", "train", "val", "test")
LAYOUTS = ("msd", "nnunet", "lits", "folder", "csv")
_LITS = re.compile(r"^(volume|segmentation)-(\d+)$")
_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net's per-channel image suffix


def dataset_label_groups(
    info: Mapping[str, Any], *, source: str | os.PathLike[str] = "dataset.json"
) -> dict[str, tuple[int, ...]]:
    """Label name → the values it covers, from a ``dataset.json`` in either convention.

    MSD: ``{"0": "background", "1": "liver"}`` (value → name). nnU-Net v2: ``{"background": 0,
    "liver": 1}`` (name → value), where a region-based label lists several values
    (``"whole_tumour": [1, 2, 3]``). Background (value 0 alone) is included.

    Raises:
        InputError: ``labels`` is not a mapping, or an entry is neither convention (names the key).
    """
    labels = info.get("labels", {})
    if not isinstance(labels, Mapping):
        raise InputError(f"{str(source)!r}: 'labels': expected a mapping, found {type(labels).__name__}")
    groups: dict[str, tuple[int, ...]] = {}
    msd = all(str(key).strip().lstrip("-").isdigit() for key in labels)
    for key, value in labels.items():
        try:
            if msd:
                groups[str(value)] = (int(key),)
            elif isinstance(value, (list, tuple)):
                groups[str(key)] = tuple(int(v) for v in value)
            else:
                groups[str(key)] = (int(value),)
        except (TypeError, ValueError) as error:
            raise InputError(
                f'{str(source)!r}: labels entry {key!r}: {value!r}: expected MSD\'s "value": "name" or '
                f'nnU-Net v2\'s "name": value (or a list of values for a region)'
            ) from error
    return groups


def dataset_label_values(
    info: Mapping[str, Any], *, source: str | os.PathLike[str] = "dataset.json"
) -> dict[int, str]:
    """Label value → name from a ``dataset.json`` (MSD or nnU-Net v2 convention; see :func:`dataset_label_groups`).

    Raises:
        InputError: region-based labels (one name, several values), which a label map cannot hold as values.
    """
    values: dict[int, str] = {}
    for name, group in dataset_label_groups(info, source=source).items():
        if len(group) != 1:
            raise InputError(
                f"{str(source)!r}: label {name!r} is region-based ({list(group)}); expected one value per label",
                hint="region-based labels (nnU-Net v2 regions) can be scored with voxpipe evaluate --dataset",
            )
        values[group[0]] = name
    return values


def dataset_modality(info: Mapping[str, Any]) -> list[str]:
    """Channel modalities (``modality`` in MSD, ``channel_names`` in nnU-Net v2), upper case, in channel order."""
    channels = info.get("modality") or info.get("channel_names") or {}
    if not isinstance(channels, Mapping):
        return []
    return [
        str(channels[k]).upper() for k in sorted(channels, key=lambda k: int(k) if str(k).isdigit() else 0)
    ]


def detect_layout(source: str | os.PathLike[str]) -> str:
    """``"msd"``, ``"nnunet"``, ``"lits"``, ``"folder"`` or ``"csv"`` for a dataset path.

    Raises:
        InputError: the path matches no known layout (the message lists what was looked for).
    """
    path = Path(source)
    if not path.exists():
        raise InputError(f"{str(path)!r}: expected a dataset folder or CSV file, found nothing at that path")
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_file() and path.name == "dataset.json":
        return "nnunet" if _is_nnunet(path.parent) else "msd"
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return "nnunet" if _is_nnunet(path) else "msd"
        if (path / "images").is_dir():
            return "folder"
        if any(_LITS.match(case_id(p)) for p in path.rglob("volume-*")):
            return "lits"
    raise InputError(
        f"{str(path)!r}: expected a dataset: a folder with dataset.json (MSD), volume-N/segmentation-N files "
        "(LiTS), images/ + labels/ folders, or a .csv file; found none of these"
    )


def load_datalist(
    source: str | os.PathLike[str],
    *,
    layout: str | None = None,
    section: str = "training",
    check_files: bool = True,
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
        "nnunet": lambda: _nnunet_entries(Path(source), section),
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
                paths = entry.get(key) or []
                for item in [paths] if isinstance(paths, str) else paths:
                    if not Path(item).exists():
                        raise InputError(
                            f"{str(source)!r}: case {entry['case']!r}: {key} {item!r} does not exist"
                        )
    return entries


def _msd_entries(path: Path, section: str) -> list[dict[str, Any]]:
    manifest = path if path.is_file() else path / "dataset.json"
    if not manifest.is_file():
        raise InputError(
            f"{str(manifest)!r}: expected an MSD dataset.json in the dataset folder, found no file"
        )
    try:
        sections = json.loads(manifest.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{str(manifest)!r}: not valid JSON ({error})") from error
    if section not in sections:
        raise InputError(f"{str(manifest)!r}: expected a {section!r} list, found keys {sorted(sections)}")
    entries = load_decathlon_datalist(
        str(manifest), is_segmentation=True, data_list_key=section, base_dir=str(manifest.parent)
    )
    return [{**entry, "case": case_id(entry["image"])} for entry in entries]


def _is_nnunet(folder: Path) -> bool:
    """A dataset.json without MSD's ``training`` list next to an ``imagesTr`` folder: nnU-Net v2's raw layout."""
    try:
        info = json.loads((folder / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        isinstance(info, dict)
        and "training" not in info
        and ((folder / "imagesTr").is_dir() or isinstance(info.get("dataset"), dict))
    )


def _nnunet_entries(path: Path, section: str) -> list[dict[str, Any]]:
    root = path.parent if path.is_file() else path
    manifest = root / "dataset.json"
    info = json.loads(manifest.read_text())
    ending = info.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(
            f"{str(manifest)!r}: 'file_ending': expected a suffix such as '.nii.gz', found {ending!r}"
        )
    channels = info.get("channel_names", info.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        raise InputError(
            f'{str(manifest)!r}: \'channel_names\': expected a mapping such as {{"0": "CT"}}, found {channels!r}'
        )
    n_channels = len(channels)
    if section == "training" and isinstance(
        info.get("dataset"), dict
    ):  # explicit file lists (nnU-Net's "dataset" key)
        return _nnunet_listed(root, info["dataset"], n_channels, manifest)
    images_dir = root / ("imagesTr" if section == "training" else "imagesTs")
    if not images_dir.is_dir():
        return []
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for file in sorted(images_dir.iterdir()):
        match = pattern.match(file.name)
        if match and not file.name.startswith("."):
            cases.setdefault(match.group(1), {})[int(match.group(2))] = file
    entries = []
    for case, files in sorted(cases.items()):
        if sorted(files) != list(range(n_channels)):
            raise InputError(
                f"{str(images_dir)!r}: case {case!r}: expected channels {list(range(n_channels))} "
                f"(files {case}_0000{ending}...), found {sorted(files)}"
            )
        images = [str(files[c]) for c in range(n_channels)]
        entry: dict[str, Any] = {"image": images[0] if n_channels == 1 else images, "case": case}
        label = root / "labelsTr" / f"{case}{ending}"
        if section == "training":
            entry["label"] = str(label)
        entries.append(entry)
    return entries


def _nnunet_listed(
    root: Path, listed: Mapping[str, Any], n_channels: int, manifest: Path
) -> list[dict[str, Any]]:
    """Cases of an nnU-Net v2 ``dataset`` key: ``{id: {"images": [...], "label": ...}}``, paths relative to the
    dataset folder unless absolute, ``$VARIABLES`` expanded (as nnU-Net does)."""

    def resolve(value: Any) -> str:
        path = Path(os.path.expandvars(str(value)))
        return str(path if path.is_absolute() else (root / path).resolve())

    entries = []
    for case, item in sorted(listed.items()):
        images = item.get("images") if isinstance(item, Mapping) else None
        if not isinstance(images, list) or len(images) != n_channels or "label" not in item:
            raise InputError(
                f"{str(manifest)!r}: dataset entry {case!r}: expected {{'images': [{n_channels} file(s)], "
                f"'label': file}}, found {item!r}"
            )
        paths = [resolve(i) for i in images]
        entries.append(
            {
                "image": paths[0] if n_channels == 1 else paths,
                "label": resolve(item["label"]),
                "case": str(case),
            }
        )
    return entries


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
        raise InputError(
            f"{str(path)!r}: expected a CSV with an 'image' column, found columns {list(rows[0]) if rows else []}"
        )
    entries = []
    for number, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise InputError(
                f"{str(path)!r}: line {number}: expected an image path, found an empty 'image' cell"
            )
        entry: dict[str, Any] = {"image": str((path.parent / row["image"]).resolve())}
        if row.get("label"):
            entry["label"] = str((path.parent / row["label"]).resolve())
        entry["case"] = row.get("case") or case_id(row["image"])
        if "patient" in row:  # every entry gets the key (a batch collates them), the case id when blank
            entry["patient"] = row["patient"] or entry["case"]
        entries.append(entry)
    return entries


def split_datalist(
    source: str | os.PathLike[str],
    split_file: str | os.PathLike[str],
    *,
    part: str = "train",
    fold: int | None = None,
) -> list[dict[str, Any]]:
    """The entries of ``source`` in ``part`` of the saved split (fold ``fold`` for k-fold splits).

    Raises:
        InputError: unknown part/fold, or split case ids that the dataset does not have.
    """
    return select_split(load_datalist(source), split_file, part=part, fold=fold, source=source)


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
