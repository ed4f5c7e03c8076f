"""A bundle's files: the shipped bundles, config files by name, ``--set`` overrides, weights keys.

What :mod:`~voxpipe.pipelines.bundles.run`, ``validate``, ``export`` and the ``voxpipe export`` verb
all need to read from a bundle folder without running it.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

from voxpipe.errors import BundleError, InputError

WORKFLOW_TYPES = {"train": "train", "inference": "infer", "evaluate": "infer"}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def shipped_bundle(name: str) -> Path:
    """The folder of a bundle shipped in this repository's ``configs/`` (e.g. ``liver_ct_segresnet``).

    Raises:
        BundleError: no such bundle (e.g. voxpipe was installed without its source tree).
    """
    root = Path(__file__).resolve().parents[3] / "configs"
    folder = root / name
    if not (folder / "configs").is_dir():
        shipped = sorted(p.name for p in root.iterdir() if (p / "configs").is_dir()) if root.is_dir() else []
        raise BundleError(
            f"{str(folder)!r}: expected the shipped bundle {name!r}, found {shipped or 'no configs/ folder'}",
            hint="install voxpipe from its source tree (pip install -e .) so configs/ is available",
        )
    return folder


MAX_CONFIG_BYTES = 16 * 2**20  # a bundle config is kilobytes; the Model Zoo's largest are under 100 KB
MAX_CONFIG_ITEMS = 1_000_000  # values once YAML aliases are expanded (MONAI walks the expanded tree)
MAX_CONFIG_DEPTH = 64  # nesting; MONAI's ConfigParser recurses once per level


def read_config(path: str | os.PathLike[str]) -> Any:
    """A YAML/JSON config file parsed with bounds, before MONAI's ``ConfigParser`` walks it.

    Why our own: MONAI reads configs with ``yaml.safe_load`` / ``json.load`` and then recurses through
    the result. A YAML alias bomb ("billion laughs") parses in milliseconds into a few shared lists
    that expand to billions of values when walked, and deeply nested JSON overflows Python's stack
    (``RecursionError``) somewhere inside MONAI, naming no file. Here the expanded size, the nesting
    depth and the file size are bounded (:data:`MAX_CONFIG_ITEMS`, :data:`MAX_CONFIG_DEPTH`,
    :data:`MAX_CONFIG_BYTES`) and a self-referencing YAML anchor is refused.

    Raises:
        BundleError: unreadable, too large, a syntax error, too deep, too many values once expanded,
            or self-referencing; the message names the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise BundleError(
                f"{str(path)!r}: expected a config file of at most {MAX_CONFIG_BYTES // 2**20} MiB, found {size} bytes"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BundleError(
            f"{str(path)!r}: expected UTF-8 text, found {error.reason} at byte {error.start}"
        ) from error
    except OSError as error:
        raise BundleError(f"{str(path)!r}: could not be read ({error.strerror or error})") from error
    try:
        content = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except RecursionError as error:
        raise BundleError(
            f"{str(path)!r}: nested too deeply to parse; expected at most {MAX_CONFIG_DEPTH} levels"
        ) from error
    except json.JSONDecodeError as error:
        raise BundleError(
            f"{str(path)!r}: JSON syntax error at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BundleError(f"{str(path)!r}: YAML syntax error{where}: {problem}") from error
    _check_expanded_size(content, path)
    return content


def _check_expanded_size(content: Any, path: Path) -> None:
    """Count values as if shared (aliased) containers were copied, without copying; bound depth and count."""
    sizes: dict[int, int] = {}  # container id -> expanded value count
    open_ids: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(content, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        key = id(node)
        children = list(node.values()) if isinstance(node, dict) else node
        if done:
            open_ids.discard(key)
            sizes[key] = len(children) + sum(
                sizes.get(id(c), 0) for c in children if isinstance(c, (dict, list))
            )
            if sizes[key] > MAX_CONFIG_ITEMS:
                raise BundleError(
                    f"{str(path)!r}: expands to more than {MAX_CONFIG_ITEMS:,} values (YAML aliases repeated "
                    "inside each other: an alias bomb?); expected a config of ordinary size"
                )
            continue
        if key in open_ids:
            raise BundleError(f"{str(path)!r}: a YAML anchor refers to itself (an endless structure)")
        if key in sizes:
            continue
        if depth > MAX_CONFIG_DEPTH:
            raise BundleError(
                f"{str(path)!r}: nested {depth} levels deep; expected at most {MAX_CONFIG_DEPTH}"
            )
        open_ids.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if isinstance(child, (dict, list)))


def check_config_files(files: Sequence[str | os.PathLike[str]]) -> list[Any]:
    """:func:`read_config` on each file and on every file a ``%file#id`` macro in them names (which MONAI
    would read too); the parsed contents of ``files``, in order.

    Raises:
        BundleError: as :func:`read_config`, naming the offending file.
    """
    contents = [read_config(f) for f in files]
    seen = {Path(f).resolve() for f in files}
    pending = list(contents)
    while pending:
        for value in _string_values(pending.pop()):
            if not value.startswith("%") or "#" not in value:
                continue
            target = Path(value[1:].split("#", 1)[0])
            if target.suffix in CONFIG_SUFFIXES and target.is_file() and target.resolve() not in seen:
                seen.add(target.resolve())
                pending.append(read_config(target))
    return contents


def _string_values(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def find_config(bundle_dir: str | os.PathLike[str], config: str) -> Path:
    """The config file ``configs/<config>.{yaml,yml,json}`` of a bundle folder.

    Raises:
        BundleError: the folder is not a bundle, or has no such config (the message lists those it has).
    """
    root = Path(bundle_dir)
    configs = root / "configs"
    if not configs.is_dir():
        raise BundleError(
            f"{str(root)!r}: expected a MONAI bundle folder with a configs/ subfolder, found none"
        )
    for suffix in CONFIG_SUFFIXES:
        candidate = configs / f"{config}{suffix}"
        if candidate.is_file():
            return candidate
    available = sorted(
        p.stem for p in configs.iterdir() if p.suffix in CONFIG_SUFFIXES and p.stem != "metadata"
    )
    raise BundleError(f"{str(configs)!r}: expected a config named {config!r}, found {available}")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into config ids and values, as MONAI's runner reads its arguments.

    Keys are config ids (``network_def#img_size``). Values: ``@ref``, ``$expression`` and
    ``%file#id`` stay strings for MONAI to resolve; otherwise a Python literal (``3``, ``False``,
    ``[64, 64, 32]``, ``{"_target_": "UNet", ...}``), else a YAML scalar or flow collection (``true``,
    ``null``, ``1e-3``, ``{a: 1}``), else the text itself.

    Raises:
        InputError: an item without ``=``.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {pair!r}: expected key=value (e.g. max_epochs=10)")
        overrides[key.strip()] = override_value(value)
    return overrides


def parse_runner_arguments(arguments: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs as ``python -m monai.bundle run`` takes them → overrides.

    Raises:
        InputError: an argument that is not ``--key`` followed by a value.
    """
    overrides: dict[str, Any] = {}
    items = list(arguments)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or len(item) < 3:
            raise InputError(f"{item!r}: expected --key value (MONAI's runner syntax) or --set key=value")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if not items:
                raise InputError(f"{item!r}: expected a value after it")
            value = items.pop(0)
        overrides[key] = override_value(value)
    return overrides


_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def override_value(text: str) -> Any:
    """One override value (see :func:`parse_overrides`); ``1e-3`` is a float, ``nan`` stays a string."""
    if not text.strip():
        return ""
    if text.lstrip()[:1] in ("@", "$", "%"):
        return text  # a reference, an expression or a macro: MONAI resolves it
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
        return float(value)
    return text if isinstance(value, str) else value


def is_true(value: Any) -> bool:
    """A config switch that is on: ``True``, a non-zero number, or ``"true"``/``"yes"``/``"1"``/``"on"``."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return value is True or (isinstance(value, (int, float)) and bool(value))


def is_false(value: Any) -> bool:
    """A config switch that is off: ``False``, ``0``, or ``"false"``/``"no"``/``"0"``/``"off"``."""
    if isinstance(value, str):
        return value.strip().lower() in ("false", "no", "0", "off")
    return value is False or (isinstance(value, (int, float)) and value == 0)


_PATH_KEY = re.compile(r"(dir|path|file|root|folder|checkpoint|ckpt\w*)$", re.IGNORECASE)


def protect_paths(value: Any, *, key: str = "") -> Any:
    """``value`` with every path-like string that holds ``#`` turned into a :class:`~pathlib.Path`.

    MONAI's ``ConfigParser`` rewrites ``#`` to its id separator ``::`` in every string it parses
    (``'/data/Patient #12/ct.nii.gz'`` becomes ``'/data/Patient ::12/ct.nii.gz'``), and no escape
    exists. Non-string values pass through untouched, and MONAI components and voxpipe's bundle
    functions take ``os.PathLike`` wherever they take a path. Path-like: absolute, ``./`` / ``../`` /
    ``~`` relative, naming something whose parent folder exists, or the value of a config id that
    names a path (``output_dir``, ``data_list_file_path``, ``checkpoint``, ...: ``key``). Lists and
    dicts are walked. References, expressions and macros (``@``, ``$``, ``%``) are left to MONAI.
    """
    if isinstance(value, str):
        if "#" not in value or value[:1] in ("@", "$", "%"):
            return value
        named = bool(_PATH_KEY.search(re.split(r"#|::", key)[-1])) if key else False
        looks_like_path = (
            named
            or value.startswith(("/", "./", "../", "~"))
            or (os.sep in value and Path(value).parent.exists())
        )
        return Path(value) if looks_like_path else value
    if isinstance(value, list):
        return [protect_paths(v, key=key) for v in value]
    if isinstance(value, dict):
        return {k: protect_paths(v, key=str(k)) for k, v in value.items()}
    return value


CHECKPOINT_LOADERS = (
    "CheckpointLoader",
    "monai.handlers.CheckpointLoader",
    "monai.handlers.checkpoint_loader.CheckpointLoader",
)


def checkpoint_loaders(config: Any, path: str = "") -> list[tuple[str, str]]:
    """``(loader id, weights key)`` for every ``CheckpointLoader`` in a config.

    The weights key is the config id users override: ``load_path: "@checkpoint"`` gives
    ``checkpoint``; a literal or an expression gives the handler's own ``...#load_path`` id.
    """
    found: list[tuple[str, str]] = []
    items = (
        config.items()
        if isinstance(config, Mapping)
        else enumerate(config)
        if isinstance(config, list)
        else ()
    )
    for key, value in items:
        child = f"{path}#{key}" if path else str(key)
        if (
            isinstance(value, Mapping)
            and value.get("_target_") in CHECKPOINT_LOADERS
            and "load_path" in value
        ):
            load_path = value["load_path"]
            is_ref = isinstance(load_path, str) and load_path.startswith("@")
            found.append((child, load_path[1:] if is_ref else f"{child}#load_path"))
        else:
            found += checkpoint_loaders(value, child)
    return found


def weights_keys(config: Any) -> list[str]:
    """Config ids that hold the weights path of every ``CheckpointLoader`` in a config (each once)."""
    return list(dict.fromkeys(key for _, key in checkpoint_loaders(config)))


def bundle_network(
    bundle_dir: str | os.PathLike[str],
    *,
    config: str = "inference",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any], list[int] | None, list[str] | None]:
    """The registry name, resolved arguments, patch size and label names of a bundle's ``network_def``.

    Raises:
        BundleError / InputError: no such config, or its ``network_def`` is not ``voxpipe.networks.build_network``.
    """
    parser = ConfigParser()
    parser.read_config(read_config(find_config(bundle_dir, config)))
    parser.update({"bundle_root": str(Path(bundle_dir).resolve()), **(overrides or {})})
    definition = parser.get("network_def")
    if not isinstance(definition, Mapping) or not str(definition.get("_target_", "")).endswith(
        "build_network"
    ):
        raise InputError(
            f"{str(bundle_dir)!r}: expected network_def with _target_ voxpipe.networks.build_network, "
            f"found {definition.get('_target_') if isinstance(definition, Mapping) else definition!r}",
            hint="for other bundles export the network in Python with voxpipe.networks.export.export_network",
        )
    kwargs = {k: parser.get_parsed_content(f"network_def#{k}") for k in definition if not k.startswith("_")}
    name = kwargs.pop("name")
    for key in ("device", "weights", "freeze"):
        kwargs.pop(key, None)
    patch = parser.get_parsed_content("patch_size") if "patch_size" in parser.get() else None
    return name, kwargs, (list(patch) if patch is not None else None), _label_names(Path(bundle_dir))


def _label_names(bundle_dir: Path) -> list[str] | None:
    """Class names in channel order from metadata.json ``network_data_format.outputs.pred.channel_def``."""
    meta = bundle_dir / "configs" / "metadata.json"
    try:
        outputs = json.loads(meta.read_text())["network_data_format"]["outputs"]
        channels = next(iter(outputs.values()))["channel_def"]
        return [channels[k] for k in sorted(channels, key=int)]
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None
