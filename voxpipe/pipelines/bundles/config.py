"""A bundle's files: the shipped bundles, config files by name, ``--set`` overrides, weights keys.

What :mod:`~voxpipe.pipelines.bundles.run`, ``validate``, ``export`` and the ``voxpipe export`` verb
all need to read from a bundle folder without running it.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Mapping, Sequence
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
    parser.read_config(str(find_config(bundle_dir, config)))
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
