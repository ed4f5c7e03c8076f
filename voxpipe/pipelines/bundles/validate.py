"""Check a bundle before running it and report every problem at once (``voxpipe bundle validate``).

MONAI finds a bundle's mistakes one at a time, while instantiating, and reports them as a chain of
"Failed to instantiate component" errors (MONAI#7451, #6976, #4401). This module reads the files
without running them and lists, for each problem, the file, the key path
(``train#trainer#max_epochs``), what is wrong and a hint:

- YAML/JSON syntax errors, with line and column;
- ``@`` references (plain or inside ``$`` expressions) and ``%`` macros that point nowhere, with
  "did you mean";
- ``_target_`` names that do not import (short names are looked up among MONAI's components, as
  MONAI does);
- keyword arguments that the target's signature does not accept;
- required bundle properties missing for train / inference configs (MONAI's ``TrainProperties``
  and ``InferProperties``);
- ``metadata.json`` against the bundle metadata schema shipped in ``voxpipe/schemas`` (offline).

``$`` expressions are not evaluated and nothing is instantiated; only the modules that ``_target_``
names live in are imported.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator
from monai.bundle.properties import InferProperties, TrainProperties

from voxpipe.pipelines.bundles.config import CONFIG_SUFFIXES

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "bundle_metadata.json"
NON_ARG_KEYS = {"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"}
# The ids MONAI's runner adds to every config (bundle_root comes from the command line or voxpipe).
RUNNER_IDS = {"bundle_root", "_meta_"}
_REF = re.compile(r"@([\w#:]+)")
_LOCATOR = ComponentLocator()


@dataclass(frozen=True)
class Problem:
    """One problem of a bundle: where (file, key path), what, and what to do."""

    file: str
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        return where + self.message + (f" (hint: {self.hint})" if self.hint else "")


def _load(path: Path) -> tuple[Any, Problem | None]:
    """Parse a YAML/JSON file; a syntax error becomes a Problem with its line and column."""
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text), None
        return yaml.safe_load(text), None
    except json.JSONDecodeError as error:
        return None, Problem(path.name, "", f"JSON syntax error at line {error.lineno}, column {error.colno}: {error.msg}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        return None, Problem(path.name, "", f"YAML syntax error{where}: {problem}")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        child = f"{path}#{key}" if path else str(key)
        yield child, value
        yield from _walk(value, child)


def _normal(config_id: str) -> str:
    """MONAI accepts ``::`` and ``#`` as id separators; voxpipe reports ``#``."""
    return config_id.replace("::", "#")


def _ids(config: Any) -> set[str]:
    return {path for path, _ in _walk(config)}


def _did_you_mean(name: str, candidates: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _resolve_target(target: str) -> tuple[Any, str | None]:
    """The object a ``_target_`` names (MONAI's lookup), or ``None`` and why not."""
    module_name = _LOCATOR.get_component_module_name(target)
    if isinstance(module_name, list):
        module_name = module_name[0]
    full = f"{module_name}.{target}" if module_name else target
    if "." not in full:
        return None, "is neither a MONAI component nor a module path"
    parts = full.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        except Exception as error:  # a module that fails at import for another reason
            return None, f"could not be imported ({type(error).__name__}: {error})"
        try:
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
            return obj, None
        except AttributeError:
            return None, f"does not exist in module {'.'.join(parts[:split])!r}"
    return None, f"does not import (no module {parts[0]!r})"


def _accepted(target: Any) -> tuple[set[str], bool] | None:
    """Keyword names ``target`` accepts and whether it takes ``**kwargs``; ``None`` if unknown."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    names = {p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())


def _check_config(path: Path, config: Any, bundle_root: Path, extra_ids: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    ids = _ids(config) | RUNNER_IDS | extra_ids
    for key, value in _walk(config):
        if isinstance(value, str) and value.startswith("%"):
            target_file, macro_id = ConfigParser.split_path_id(value[1:])
            macro_id = _normal(macro_id)
            if target_file and not (bundle_root / target_file).is_file() and not Path(target_file).is_file():
                problems.append(Problem(path.name, key, f"macro {value!r}: file {target_file!r} not found"))
            elif not target_file and macro_id not in ids:
                problems.append(Problem(path.name, key, f"macro {value!r} points to no config id", _did_you_mean(macro_id, ids)))
        elif isinstance(value, str) and (value.startswith("@") or value.startswith("$")):
            for ref in _REF.findall(value) if value.startswith("$") else [value[1:]]:
                ref = _normal(ref)
                if ref not in ids:
                    problems.append(Problem(path.name, key, f"reference '@{ref}' points to no config id", _did_you_mean(ref, ids)))
        if isinstance(value, Mapping) and isinstance(value.get("_target_"), str) and not value["_target_"].startswith("$"):
            problems += _check_component(path.name, key, value)
    return problems


def _check_component(file: str, key: str, component: Mapping[str, Any]) -> list[Problem]:
    target = component["_target_"]
    obj, why = _resolve_target(target)
    if obj is None:
        if "." not in target:
            known = getattr(_LOCATOR, "_components_table", None) or {}  # filled by the lookup above
            hint = _did_you_mean(target, set(known))
        else:
            module, _, name = target.rpartition(".")
            try:
                hint = _did_you_mean(name, [n for n in dir(importlib.import_module(module)) if not n.startswith("_")])
            except Exception:
                hint = ""
        return [Problem(file, f"{key}#_target_", f"{target!r} {why}", hint)]
    accepted = _accepted(obj)
    if accepted is None:
        return []
    names, has_var_keyword = accepted
    if has_var_keyword:
        return []
    return [
        Problem(file, f"{key}#{arg}", f"{target!r} takes no argument {arg!r}", _did_you_mean(arg, names) or f"it takes {sorted(names)}")
        for arg in component
        if arg not in NON_ARG_KEYS and arg not in names
    ]


def _check_properties(path: Path, config: Any, extra_ids: set[str]) -> list[Problem]:
    properties = {"train": TrainProperties, "inference": InferProperties, "evaluate": InferProperties}.get(path.stem)
    if properties is None or not isinstance(config, Mapping):
        return []
    ids = _ids(config) | RUNNER_IDS | extra_ids
    problems = []
    for name, spec in properties.items():
        wanted = _normal(spec.get("id", ""))
        if spec.get("required") and wanted not in ids:
            problems.append(Problem(path.name, wanted, f"required bundle property {name!r} is missing ({spec.get('description', '')})"))
    return problems


def _check_metadata(path: Path) -> list[Problem]:
    import jsonschema

    metadata, syntax = _load(path)
    if syntax is not None:
        return [syntax]
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path))):
        key = "#".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(Problem(path.name, key, error.message, "see the MONAI bundle specification"))
    return problems


def validate_bundle(
    bundle_dir: str | os.PathLike[str], *, configs: list[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> list[Problem]:
    """Every problem of the bundle folder's ``configs/`` (config files and ``metadata.json``).

    Args:
        bundle_dir: the bundle folder.
        configs: only these config names (e.g. ``["inference"]``); default all.
        overrides: ids that will be set on the command line (they count as present).

    Returns an empty list for a bundle that passes; nothing is run or instantiated.
    """
    root = Path(bundle_dir)
    folder = root / "configs"
    if not folder.is_dir():
        return [Problem(str(root), "", "expected a MONAI bundle folder with a configs/ subfolder, found none")]
    extra_ids = set(overrides or {})
    problems: list[Problem] = []
    metadata = folder / "metadata.json"
    problems += _check_metadata(metadata) if metadata.is_file() else [Problem("metadata.json", "", "the bundle has no configs/metadata.json")]
    files = sorted(p for p in folder.iterdir() if p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json")
    for path in [p for p in files if configs is None or p.stem in configs]:
        config, syntax = _load(path)
        if syntax is not None:
            problems.append(syntax)
            continue
        problems += _check_config(path, config, root, extra_ids)
        problems += _check_properties(path, config, extra_ids)
    return problems
