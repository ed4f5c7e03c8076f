"""An nnU-Net v2 model folder as a model source: what it holds, checked before anything runs.

A trained nnU-Net model is a folder ``<Trainer>__<Plans>__<configuration>/`` with ``plans.json``,
``dataset.json`` and ``fold_K/checkpoint_final.pth`` (or ``checkpoint_best.pth``) per trained fold.
:class:`NnUNetFolder` reads it the way nnU-Net 2.8's predictor does — the configuration with its
``inherits_from`` chain resolved (a child's keys replace its parent's), the labels or regions of
``dataset.json`` (:class:`Labels`), the folds and their checkpoints — and names the file and the
field when something is missing or malformed. Why our own: nnU-Net's ``PlansManager`` and
``LabelManager`` import its whole package (and torchvision-dependent code), and they raise bare
assertions rather than errors that name the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.inference.nnunet.validate import check_labels_json, check_plans

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
#: The resampling functions voxpipe reproduces (nnU-Net's default planners name this one).
RESAMPLING = ("resample_data_or_seg_to_shape",)

_FOLDER = re.compile(r"^(?P<trainer>[^_]+(?:_[^_]+)*)__(?P<plans>.+)__(?P<configuration>[^_].*)$")


@dataclass(frozen=True)
class Labels:
    """``dataset.json``'s labels as nnU-Net's ``LabelManager`` reads them.

    ``values`` are the label values (background 0 first, the ignore label left out); with regions
    (a label given as a list of values), ``regions`` are the foreground regions in file order and
    ``regions_class_order`` the value each region paints, in that order (later regions over earlier
    ones, probabilities above 0.5). ``heads`` is the network's number of output channels.
    """

    names: dict[int, str]
    values: list[int]
    regions: list[tuple[int, ...]] | None
    regions_class_order: list[int] | None
    ignore: int | None

    @property
    def heads(self) -> int:
        return len(self.regions) if self.regions is not None else len(self.values)


def read_labels(dataset: Mapping[str, Any], *, source: str = "dataset.json") -> Labels:
    """:class:`Labels` from a ``dataset.json``; errors name the file and the entry."""
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise InputError(f"{source}: expected 'labels' (name → value), found {type(labels).__name__}")
    if "background" not in labels:
        raise InputError(f"{source}: labels: expected 'background': 0, found no background entry")
    if isinstance(labels["background"], (list, tuple)) or int(labels["background"]) != 0:
        raise InputError(f"{source}: labels.background: expected 0, found {labels['background']!r}")
    ignore = labels.get("ignore")
    if ignore is not None and (isinstance(ignore, (list, tuple, bool)) or not isinstance(ignore, int)):
        raise InputError(f"{source}: labels.ignore: expected one integer value, found {ignore!r}")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    values: set[int] = set()
    names: dict[int, str] = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        members = list(value) if isinstance(value, (list, tuple)) else [value]
        try:
            values.update(int(v) for v in members)
        except (TypeError, ValueError):
            raise InputError(f"{source}: labels.{name}: expected integer values, found {value!r}") from None
        if not isinstance(value, (list, tuple)):
            names[int(value)] = str(name)
    ordered = sorted(values)
    if ignore is not None and ignore != max(ordered) + 1:
        raise InputError(
            f"{source}: labels.ignore: expected the highest value ({max(ordered) + 1}), found {ignore}"
        )
    regions = order = None
    if has_regions:
        regions = []
        region_names: list[str] = []
        for name, value in labels.items():
            if name == "ignore":
                continue
            members = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
            if set(members) == {0}:
                continue
            regions.append(members if isinstance(value, (list, tuple)) else members[0])
            region_names.append(str(name))
        order_value = dataset.get("regions_class_order")
        if not isinstance(order_value, list) or len(order_value) != len(regions):
            raise InputError(
                f"{source}: regions_class_order: expected {len(regions)} values (one per region), found {order_value!r}"
            )
        order = [int(v) for v in order_value]
        names = {0: "background", **{value: name for value, name in zip(order, region_names, strict=True)}}
    return Labels(
        names={k: names[k] for k in sorted(names)},
        values=ordered,
        regions=regions,  # type: ignore[arg-type]
        regions_class_order=order,
        ignore=ignore,
    )


def resolve_configuration(
    plans: Mapping[str, Any], name: str, *, source: str = "plans.json"
) -> dict[str, Any]:
    """A configuration of ``plans`` with its ``inherits_from`` chain applied (the child's keys win)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping):
        raise InputError(f"{source}: expected 'configurations', found {type(configurations).__name__}")
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current not in configurations:
            where = f" (inherited by {chain[-1]!r})" if chain else ""
            raise InputError(
                f"{source}: configurations: expected {current!r}{where}, found only {sorted(configurations)}"
            )
        if current in chain:
            raise InputError(
                f"{source}: configurations: inherits_from forms a cycle: {' → '.join([*chain, current])}"
            )
        chain.append(current)
        if not isinstance(configurations[current], Mapping):
            raise InputError(
                f"{source}: configurations.{current}: expected an object, found {type(configurations[current]).__name__}"
            )
        parent = configurations[current].get("inherits_from")
        if parent is not None and not isinstance(parent, str):
            raise InputError(
                f"{source}: configurations.{current}.inherits_from: expected a name, found {parent!r}"
            )
        current = parent
    resolved: dict[str, Any] = {}
    for link in reversed(chain):
        resolved.update(json.loads(json.dumps(configurations[link])))
    resolved.pop("inherits_from", None)
    return resolved


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{str(path)!r}: expected this file of an nnU-Net model folder, found no file")
    try:
        content = json.loads(path.read_text())
    except RecursionError:
        raise BundleError(f"{str(path)!r}: expected JSON, found values nested too deep to read") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{str(path)!r}: expected JSON, could not read it ({error})") from None
    if not isinstance(content, dict):
        raise BundleError(f"{str(path)!r}: expected a JSON object, found {type(content).__name__}")
    return content


class NnUNetFolder:
    """An nnU-Net v2 model folder (module doc).

    Args:
        path: the ``<Trainer>__<Plans>__<configuration>`` folder.
        folds: which folds to use (default: every ``fold_K`` with a checkpoint, in nnU-Net's order;
            ``fold_all`` only when named, as ``nnUNetv2_predict`` leaves it out of its automatic folds).
        checkpoint: the checkpoint file name in each fold.
        configuration: the configuration (default: from the folder name, else the checkpoint's).

    Raises:
        BundleError: missing or unreadable plans/dataset/checkpoints, an unknown configuration (named).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        folds: Sequence[int | str] | None = None,
        checkpoint: str = CHECKPOINTS[0],
        configuration: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"{str(self.path)!r}: expected an nnU-Net model folder, found no folder")
        self.plans = _read_json(self.path / "plans.json")
        self.dataset = _read_json(self.path / "dataset.json")
        match = _FOLDER.match(self.path.name)
        self.trainer = match.group("trainer") if match else None
        name = configuration or (match.group("configuration") if match else None)
        if name is None:
            raise BundleError(
                f"{str(self.path)!r}: expected a folder named <Trainer>__<Plans>__<configuration>, found "
                f"{self.path.name!r}; name the configuration (one of {sorted(self.plans.get('configurations', {}))})"
            )
        try:
            self.configuration = resolve_configuration(self.plans, name, source=str(self.path / "plans.json"))
            check_labels_json(self.dataset, str(self.path / "dataset.json"))
            self.labels = read_labels(self.dataset, source=str(self.path / "dataset.json"))
        except InputError as error:
            raise BundleError(str(error), hint=error.hint) from None
        self.configuration_name = name
        for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
            function = self.configuration.get(key)
            if function not in (None, *RESAMPLING):
                raise BundleError(
                    f"{str(self.path / 'plans.json')!r}: configurations.{name}.{key}: expected one of "
                    f"{list(RESAMPLING)}, found {function!r}",
                    hint="voxpipe runs nnU-Net's default resampling; plans made with another resampling "
                    "planner would give other numbers",
                )
        previous = self.configuration.get("previous_stage")
        self.previous_stage: str | None = str(previous) if previous else None
        self.checkpoints = self._checkpoints(folds, checkpoint)
        channels = self.dataset.get("channel_names") or self.dataset.get("modality") or {}
        self.channels = (
            [str(channels[k]) for k in sorted(channels, key=int)] if isinstance(channels, Mapping) else []
        )
        if not self.channels:
            raise BundleError(f"{str(self.path / 'dataset.json')!r}: expected channel_names, found none")
        check_plans(self.plans, self.configuration, name, str(self.path / "plans.json"), len(self.channels))

    def previous_folder(self) -> Path:
        """A cascade stage's first stage: the sibling folder ``<Trainer>__<Plans>__<previous_stage>``.

        Raises:
            BundleError: this configuration is no cascade stage, or the sibling folder is missing.
        """
        if not self.previous_stage:
            raise BundleError(
                f"{str(self.path)!r}: configuration {self.configuration_name!r} has no previous stage"
            )
        match = _FOLDER.match(self.path.name)
        prefix = self.path.name[: match.start("configuration")] if match else ""
        folder = self.path.parent / f"{prefix}{self.previous_stage}"
        if not (folder / "plans.json").is_file():
            raise BundleError(
                f"{str(folder)!r}: expected the {self.previous_stage!r} model folder beside "
                f"{self.path.name!r} (a cascade stage takes its prediction as input), found none"
            )
        return folder

    def _checkpoints(self, folds: Sequence[int | str] | None, name: str) -> list[Path]:
        if folds is None:  # nnU-Net's automatic folds: fold_K in its (name) order, never fold_all
            found = sorted(
                p for p in self.path.glob("fold_*") if p.name[5:].isdigit() and (p / name).is_file()
            )
            if not found:
                raise BundleError(
                    f"{str(self.path)!r}: expected fold_K/{name} (a trained fold), found none",
                    hint="copy the fold folders with their checkpoints, or name another --checkpoint",
                )
            return [p / name for p in found]
        paths = [self.path / f"fold_{f}" / name for f in folds]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise BundleError(f"{missing[0]!r}: expected the checkpoint of a requested fold, found no file")
        return paths


__all__ = ["CHECKPOINTS", "Labels", "NnUNetFolder", "read_labels", "resolve_configuration"]
