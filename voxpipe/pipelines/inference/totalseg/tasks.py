"""TotalSegmentator's tasks as its release defines them: each task's models, spacing, crop and labels.

The tables (``tables.json``) are TotalSegmentator 2.18.0's own (Apache-2.0): its task configurations,
its weights folders and releases, and the label names it writes, dumped by
``tests/oracles/totalseg_tables.py`` from the installed package; a test checks the shipped file still
equals them. Each task names its exact dataset folder, trainer, plans, configuration and folds, as
TotalSegmentator does: nothing here picks "the first folder found".

Why our own: TotalSegmentator's package cannot be installed beside voxpipe (its dependencies replace
the CPU torch), and its configuration is spread over module globals; here it is one frozen record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from voxpipe.errors import InputError

#: The tasks TotalSegmentator 2.18.0's README lists as openly available. The others of its table run
#: too when their weights are in the folder: the licensed ones, ``total_v3`` and ``brain_aneurysm``
#: (whose weights are CC BY-NC).
OPEN_TASKS = (
    "total",
    "total_mr",
    "lung_vessels",
    "body",
    "body_mr",
    "vertebrae_mr",
    "cerebral_bleed",
    "hip_implant",
    "pleural_pericard_effusion",
    "head_glands_cavities",
    "head_muscles",
    "headneck_bones_vessels",
    "headneck_muscles",
    "liver_vessels",
    "oculomotor_muscles",
    "lung_nodules",
    "kidney_cysts",
    "breasts",
    "liver_segments",
    "liver_segments_mr",
    "craniofacial_structures",
    "abdominal_muscles",
    "teeth",
    "trunk_cavities",
    "ventricle_parts",
    "liver_lesions",
    "liver_lesions_mr",
    "vertebrae_pp",
    "vertebrae_pp_refined",
    "vertebrae_body",
    "lung_vessels_LEGACY",
)

#: TotalSegmentator's licence page, named when a licensed task's weights are missing.
LICENCE_URL = "https://backend.totalsegmentator.com/license-academic/"


@cache
def tables() -> dict[str, Any]:
    """TotalSegmentator's tables (see the module docstring)."""
    text = resources.files("voxpipe.pipelines.inference.totalseg").joinpath("tables.json").read_text()
    return json.loads(text)


def task_names() -> list[str]:
    """Every task TotalSegmentator defines (open and licensed), in its order."""
    return [name for name in tables()["tasks"] if name != "test"]


def is_task(name: str) -> bool:
    return name in tables()["tasks"] and name != "test"


def is_licensed(name: str) -> bool:
    return bool(tables()["tasks"].get(name, {}).get("commercial"))


@dataclass(frozen=True)
class Task:
    """One task as TotalSegmentator 2.18.0's ``get_task_config`` resolves it for a run."""

    name: str
    task_ids: tuple[int, ...]  # one model, or several parts merged in this order
    trainer: str
    plans: str
    configuration: str
    folds: tuple[int, ...] | None  # None: every fold found (nnU-Net's automatic folds)
    resample: tuple[float, float, float] | None  # TotalSegmentator's own spacing (x, y, z), mm
    crop: tuple[str, ...] | None  # structures of the crop model to crop to
    crop_model: str | None  # a task whose output gives the crop (else the rough total/body model)
    crop_addon: tuple[int, int, int]
    robust_crop: bool
    remove_outside: tuple[str, ...] | None
    remove_outside_dilation: float | None
    modality: str | None
    licensed: bool
    several: bool  # TotalSegmentator's ``multimodel``: the task's models are parts merged by name


def task(name: str, *, fast: bool = False, fastest: bool = False, robust_crop: bool | None = None) -> Task:
    """The task ``name`` with TotalSegmentator's sub-mode (``fast``: the 3 mm model, ``fastest``: the
    6 mm one) and defaults applied, as ``get_task_config`` does.

    Raises:
        InputError: an unknown task, or ``fast`` where the task has no fast model.
    """
    if not is_task(name):
        raise InputError(
            f"{name!r}: not a TotalSegmentator task",
            hint="voxpipe models list shows the tasks; TotalSegmentator's own names are used",
        )
    raw = tables()["tasks"][name]
    config = dict(tables()["defaults"])
    if robust_crop is not None:
        config["robust_crop"] = robust_crop
    config["plans"] = config.get("plans") or "nnUNetPlans"
    if "sub_modes" in raw:
        mode = "fast" if fast else ("fastest" if fastest else "default")
        if mode not in raw["sub_modes"]:
            mode = "fast" if fast or fastest else "default"
        config.update(raw["sub_modes"][mode])
    else:
        config.update({k: v for k, v in raw.items() if k not in ("disallow_fast", "commercial", "info_msg")})
        if raw.get("disallow_fast") and fast:
            raise InputError(
                f"{name!r}: TotalSegmentator's task has no --fast model", hint="leave out --fast"
            )
    ids = config["task_id"] if isinstance(config["task_id"], list) else [config["task_id"]]
    resample = config.get("resample")
    if isinstance(resample, (int, float)):
        resample = [float(resample)] * 3
    crop = config.get("crop")
    if isinstance(crop, str):
        crop = [crop]
    return Task(
        name=name,
        task_ids=tuple(int(i) for i in ids),
        trainer=str(config["trainer"]),
        plans=str(config["plans"] or "nnUNetPlans"),
        configuration=str(config.get("model") or "3d_fullres"),
        folds=None if config.get("folds") is None else tuple(int(f) for f in config["folds"]),
        resample=None if resample is None else tuple(float(r) for r in resample),  # type: ignore[arg-type]
        crop=None if crop is None else tuple(crop),
        crop_model=config.get("crop_model"),
        crop_addon=tuple(int(a) for a in config.get("crop_addon") or (3, 3, 3)),  # type: ignore[arg-type]
        robust_crop=bool(config.get("robust_crop")),
        remove_outside=None if config.get("remove_outside") is None else tuple(config["remove_outside"]),
        remove_outside_dilation=config.get("remove_outside_dilation"),
        modality=config.get("modality"),
        licensed=bool(raw.get("commercial")),
        several=isinstance(config["task_id"], list),
    )


def classes(name: str) -> dict[int, str]:
    """The labels TotalSegmentator writes for task ``name``: value → structure name."""
    mapping = tables()["classes"].get(name)
    if mapping is None:
        raise InputError(f"{name!r}: TotalSegmentator defines no labels for this task")
    return dict(sorted((int(k), v) for k, v in mapping.items()))  # (the JSON's keys are strings)


def part_classes(name: str, task_id: int) -> dict[int, str]:
    """For a task of several models: the labels of model ``task_id`` (its own values → names)."""
    return dict(sorted((int(k), v) for k, v in tables()["parts"][name][str(task_id)].items()))


def auxiliary(name: str) -> list[int]:
    """Labels a task's model predicts but TotalSegmentator removes (``<task>_auxiliary``)."""
    return [int(k) for k in tables()["classes"].get(f"{name}_auxiliary", {})]


def dataset_folder(task_id: int) -> str:
    """The weights folder of model ``task_id`` as TotalSegmentator names it (``Dataset291_...``)."""
    entry = tables()["weights"].get(str(task_id))
    if entry is None:
        raise InputError(f"TotalSegmentator model {task_id}: not in TotalSegmentator's weights table")
    return str(entry["foldername"])


def release(task_id: int) -> str | None:
    """The GitHub release holding model ``task_id``'s zip, or None for licensed models."""
    entry = tables()["weights"].get(str(task_id), {})
    version = entry.get("version")
    return None if entry.get("commercial") or not version or version == "TODO" else str(version)


def models_of(name: str) -> list[int]:
    """Every model a default run of task ``name`` may need: its own and the crop models'."""
    spec = task(name)
    ids = list(spec.task_ids)
    if name == "vertebrae_pp_refined":
        ids.append(305)
    if spec.crop is not None:
        if spec.crop_model is not None:
            ids += models_of(spec.crop_model)
        elif "body_trunc" in spec.crop or "body_extremities" in spec.crop:
            ids.append(300)
        elif name.endswith("_mr") or spec.modality == "mr":
            ids.append(852)
        else:
            ids.append(297 if spec.robust_crop else 298)
    return list(dict.fromkeys(ids))


__all__ = [
    "LICENCE_URL",
    "OPEN_TASKS",
    "Task",
    "auxiliary",
    "classes",
    "dataset_folder",
    "is_licensed",
    "is_task",
    "models_of",
    "part_classes",
    "release",
    "tables",
    "task",
    "task_names",
]
