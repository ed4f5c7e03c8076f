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
  and ``InferProperties``), as warnings: MONAI runs bundles without them;
- ``metadata.json`` against the bundle metadata schema shipped in ``voxpipe/schemas`` (offline), as
  warnings too (``voxpipe bundle validate --strict`` fails on warnings).

What is checked is the configuration that will run: several config files are merged as MONAI
merges them (later files replace top-level keys: ``[train.json, evaluate.json]``), then the
overrides are applied. Validating a whole bundle, a config that only makes sense on top of another
(``evaluate.json`` and ``multi_gpu_*.json`` refer to ``train.json``; ``inference_trt.json`` to
``inference.json``) is checked merged onto the config that resolves its references.

``$`` expressions are not evaluated and nothing is instantiated; only the installed modules that
``_target_`` names live in are imported. Targets in the bundle's own packages (``scripts/``) are
checked by parsing their source, never by importing it.
"""

from __future__ import annotations

import ast
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

from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator
from monai.bundle.properties import InferProperties, TrainProperties

from voxpipe.errors import BundleError
from voxpipe.pipelines.bundles.config import CONFIG_SUFFIXES, read_config

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "bundle_metadata.json"
NON_ARG_KEYS = {"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"}
# The ids MONAI's runner adds to every config (bundle_root comes from the command line or voxpipe).
RUNNER_IDS = {"bundle_root", "_meta_"}
# MONAI's id syntax: words joined by '#' or '::' ("@output_classes:" in a lambda is the id 'output_classes').
_REF = re.compile(r"@(\w+(?:(?:#|::)\w+)*)")
BASE_CONFIGS = ("train", "inference")
_LOCATOR = ComponentLocator()


@dataclass(frozen=True)
class Problem:
    """One problem of a bundle: where (file, key path), what, and what to do."""

    file: str
    key: str
    message: str
    hint: str = ""
    severity: str = "error"  # "error" stops `bundle run`; "warning" does not (MONAI runs such bundles)

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        label = "warning: " if self.severity == "warning" else ""
        return label + where + self.message + (f" (hint: {self.hint})" if self.hint else "")


def _load(path: Path) -> tuple[Any, Problem | None]:
    """Parse a YAML/JSON file with bounds (:func:`read_config`); a problem (a syntax error with its line
    and column, an alias bomb, too deep) becomes a Problem."""
    try:
        return read_config(path), None
    except BundleError as error:
        message = str(error)
        prefix = f"{str(path)!r}: "
        return None, Problem(path.name, "", message[len(prefix) :] if message.startswith(prefix) else message)


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


def _check_config(
    label: str, config: Any, bundle_root: Path, origin: Mapping[str, str] | None = None
) -> list[Problem]:
    """Macros, references and components of one (merged) config; ``origin`` names the file of each top-level key."""
    problems: list[Problem] = []
    ids = _ids(config) | RUNNER_IDS

    def file_of(key: str) -> str:
        return (origin or {}).get(key.split("#")[0], label)

    for key, value in _walk(config):
        if isinstance(value, str) and value.startswith("%"):
            target_file, macro_id = ConfigParser.split_path_id(value[1:])
            macro_id = _normal(macro_id)
            if target_file and not (bundle_root / target_file).is_file() and not Path(target_file).is_file():
                problems.append(
                    Problem(file_of(key), key, f"macro {value!r}: file {target_file!r} not found")
                )
            elif not target_file and macro_id not in ids:
                problems.append(
                    Problem(
                        file_of(key),
                        key,
                        f"macro {value!r} points to no config id",
                        _did_you_mean(macro_id, ids),
                    )
                )
        elif isinstance(value, str) and (value.startswith("@") or value.startswith("$")):
            for ref in _REF.findall(value) if value.startswith("$") else [value[1:]]:
                ref = _normal(ref)
                if ref not in ids:
                    problems.append(
                        Problem(
                            file_of(key),
                            key,
                            f"reference '@{ref}' points to no config id",
                            _did_you_mean(ref, ids),
                        )
                    )
        if (
            isinstance(value, Mapping)
            and isinstance(value.get("_target_"), str)
            and value["_target_"][:1] not in ("$", "@", "%")
        ):
            problems += _check_component(file_of(key), key, value, bundle_root)
    return problems


def _bundle_module_source(bundle_root: Path, dotted: str) -> Path | None:
    """The source file of module ``dotted`` inside the bundle folder (``scripts.networks.unest``), if any."""
    base = bundle_root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _bundle_target(bundle_root: Path, target: str) -> tuple[tuple[set[str], bool] | None, str | None] | None:
    """A ``_target_`` in the bundle's own code, checked by parsing its source (importing it would run it).

    Returns ``None`` when the target's top-level package is not in the bundle folder, else
    ``(accepted keywords or None when unknown, why it is missing or None)``.
    """
    parts = target.split(".")
    if len(parts) < 2 or _bundle_module_source(bundle_root, parts[0]) is None:
        return None
    for split in range(len(parts) - 1, 0, -1):
        source = _bundle_module_source(bundle_root, ".".join(parts[:split]))
        if source is None:
            continue
        if split != len(parts) - 1:  # an attribute of an attribute: not checked statically
            return None, None
        try:
            tree = ast.parse(source.read_text(), filename=str(source))
        except (SyntaxError, UnicodeDecodeError) as error:
            return None, f"is in {source.name}, which does not parse ({error})"
        name = parts[-1]
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                function = (
                    node
                    if not isinstance(node, ast.ClassDef)
                    else next(
                        (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                        None,
                    )
                )
                if function is None:
                    return None, None  # a class without its own __init__: inherited arguments are unknown
                arguments = function.args
                names = {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)} - {
                    "self"
                }
                return (names, arguments.kwarg is not None), None
            assigned = {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
            imported = (
                {(a.asname or a.name).split(".")[0] for a in getattr(node, "names", [])}
                if isinstance(node, (ast.Import, ast.ImportFrom))
                else set()
            )
            if name in assigned | imported:
                return None, None
        return None, f"does not exist in the bundle's {source.relative_to(bundle_root)}"
    return None, f"does not import (no module {'.'.join(parts[:-1])!r} in the bundle folder)"


def _check_component(
    file: str, key: str, component: Mapping[str, Any], bundle_root: Path | None = None
) -> list[Problem]:
    target = component["_target_"]
    own = _bundle_target(bundle_root, target) if bundle_root is not None else None
    if own is not None:
        accepted, why = own
        if why:
            return [Problem(file, f"{key}#_target_", f"{target!r} {why}")]
    else:
        obj, why = _resolve_target(target)
        if obj is None:
            if "." not in target:
                known = getattr(_LOCATOR, "_components_table", None) or {}  # filled by the lookup above
                hint = _did_you_mean(target, set(known))
            else:
                module, _, name = target.rpartition(".")
                try:
                    hint = _did_you_mean(
                        name, [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
                    )
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
        Problem(
            file,
            f"{key}#{arg}",
            f"{target!r} takes no argument {arg!r}",
            _did_you_mean(arg, names) or f"it takes {sorted(names)}",
        )
        for arg in component
        if arg not in NON_ARG_KEYS and arg not in names
    ]


def _check_properties(label: str, workflow_type: str | None, config: Any) -> list[Problem]:
    properties = {"train": TrainProperties, "infer": InferProperties}.get(workflow_type or "")
    if properties is None or not isinstance(config, Mapping):
        return []
    ids = _ids(config) | RUNNER_IDS
    problems = []
    for name, spec in properties.items():
        wanted = _normal(spec.get("id", ""))
        if spec.get("required") and wanted not in ids:
            problems.append(
                Problem(
                    label,
                    wanted,
                    f"required bundle property {name!r} is missing ({spec.get('description', '')})",
                    "MONAI's runner runs the config without it; tools that read bundle properties need it",
                    severity="warning",
                )
            )
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
        problems.append(
            Problem(path.name, key, error.message, "see the MONAI bundle specification", severity="warning")
        )
    return problems


def _set_id(config: dict[str, Any], config_id: str, value: Any) -> None:
    """Set a nested id (``network_def#img_size``) the way MONAI's ``ConfigParser.__setitem__`` does."""
    parts = _normal(config_id).split("#")
    node: Any = config
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return  # MONAI would fail here too; the run reports it
    if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value


def merge_configs(
    paths: list[Path], overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str], list[Problem]]:
    """Merge config files as MONAI does (later files replace top-level keys), then apply overrides.

    Returns ``(config, origin, syntax problems)``; ``origin`` maps each top-level key to the file
    (or ``--set``) that gave it its value.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems: list[Problem] = []
    for path in paths:
        config, syntax = _load(path)
        if syntax is not None:
            problems.append(syntax)
            continue
        if not isinstance(config, Mapping):
            problems.append(
                Problem(
                    path.name,
                    "",
                    f"not a config (a {type(config).__name__} at the top, not a mapping of "
                    "config ids): skipped",
                    "a data file kept in configs/?",
                    severity="warning",
                )
            )
            continue
        for key, value in config.items():
            _set_id(merged, str(key), value)
            origin[_normal(str(key)).split("#")[0]] = path.name
    for key, value in (overrides or {}).items():
        _set_id(merged, str(key), value)
        origin.setdefault(_normal(str(key)).split("#")[0], "--set")
    return merged, origin, problems


def validate_configs(
    bundle_dir: str | os.PathLike[str],
    config_files: list[Path],
    *,
    overrides: Mapping[str, Any] | None = None,
    workflow_type: str | None = None,
) -> list[Problem]:
    """Every problem of the configuration that ``config_files`` (merged in order) and ``overrides`` make."""
    root = Path(bundle_dir)
    config, origin, problems = merge_configs(config_files, overrides)
    label = " + ".join(p.name for p in config_files)
    syntax_ok = not problems  # with a file that does not parse, every property would look missing
    problems += _check_config(label, config, root, origin)
    if syntax_ok:
        problems += _check_properties(label, workflow_type, config)
    return problems


def _dangling(problems: list[Problem]) -> int:
    return sum("points to no config id" in p.message for p in problems)


def validate_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    configs: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Every problem of the bundle folder's ``configs/`` (config files and ``metadata.json``).

    Args:
        bundle_dir: the bundle folder.
        configs: validate the merge of exactly these config names, in order, as they will run (e.g.
            ``["train", "evaluate"]``); default: every config file of the bundle, a fragment merged
            onto the base config that resolves its references.
        overrides: config ids and values that will be set on the command line (applied before checking).

    Returns an empty list for a bundle that passes; warnings (``severity == "warning"``) do not stop
    a run. Nothing is run or instantiated.
    """
    from voxpipe.pipelines.bundles.config import WORKFLOW_TYPES, find_config

    root = Path(bundle_dir)
    folder = root / "configs"
    if not folder.is_dir():
        return [
            Problem(str(root), "", "expected a MONAI bundle folder with a configs/ subfolder, found none")
        ]
    problems: list[Problem] = []
    metadata = folder / "metadata.json"
    problems += (
        _check_metadata(metadata)
        if metadata.is_file()
        else [Problem("metadata.json", "", "the bundle has no configs/metadata.json", severity="warning")]
    )
    if configs is not None:
        paths = [find_config(root, name) for name in configs]
        return problems + validate_configs(
            root, paths, overrides=overrides, workflow_type=WORKFLOW_TYPES.get(configs[-1])
        )
    files = sorted(p for p in folder.iterdir() if p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json")
    stems = {p.stem: p for p in files}
    for path in files:
        found = validate_configs(
            root, [path], overrides=overrides, workflow_type=WORKFLOW_TYPES.get(path.stem)
        )
        if _dangling(found) and path.stem not in BASE_CONFIGS:
            found = _as_fragment(root, path, stems, overrides, alone=found)
        problems += found
    return problems


def _as_fragment(
    root: Path,
    path: Path,
    stems: Mapping[str, Path],
    overrides: Mapping[str, Any] | None,
    *,
    alone: list[Problem],
) -> list[Problem]:
    """Problems of ``path`` checked on top of the configs that resolve its references, as MONAI merges them.

    Greedy: prepend the config that leaves the fewest dangling references, up to two of them
    (``multi_gpu_train_diffusion`` on ``train_autoencoder`` + ``train_diffusion``). ``alone`` (the
    problems of ``path`` by itself) when no base resolves more. Only the fragment's own problems are
    returned (each base is validated on its own).
    """
    chain, best = [path], alone
    for _ in range(2):
        if not _dangling(best):
            break
        trials = []
        for base in (p for p in stems.values() if p not in chain):
            own = [
                p for p in validate_configs(root, [base, *chain], overrides=overrides) if p.file == path.name
            ]
            trials.append((_dangling(own), base.stem not in BASE_CONFIGS, base.name, base, own))
        if not trials:
            break
        dangling, _, _, base, own = min(trials, key=lambda trial: trial[:3])
        if dangling >= _dangling(best):
            break
        chain, best = [base, *chain], own
    return best
