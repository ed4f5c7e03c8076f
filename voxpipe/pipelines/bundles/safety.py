"""Safe mode for bundles: refuse the config entries that run code, before anything is instantiated.

A MONAI bundle is code. ``$`` strings are Python expressions evaluated with ``eval`` (``"$__import__('os')
.system(...)"`` runs a shell command), ``_target_`` names any importable callable, and a ``%``
macro pulls in config text from another file. MONAI has no switch to turn these off, so
:func:`check_safe` walks every config file of a bundle (after ``%`` macros are expanded) and lists
every offending key path at once:

- any string value or key starting with ``$`` (expressions, ``$import`` lines in ``imports``);
- a ``_target_`` outside the allow-list :data:`ALLOWED_PACKAGES` (short names such as ``Compose``
  resolve to MONAI components and are allowed), or inside it but in :data:`DENIED_MODULES`
  (parts of those packages that download or run code: ``torch.hub``, ``monai.bundle``, ...).

Weights are loaded with ``torch.load(weights_only=True)`` everywhere in voxpipe and in MONAI's
``CheckpointLoader``, which unpickles tensors and plain containers only. Safe mode lowers the risk of
running someone else's bundle; it does not make it zero (an allowed function can still write files
where the config tells it to). Read the configs of a bundle you do not trust.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator

from voxpipe.errors import BundleError

ALLOWED_PACKAGES = ("monai", "torch", "ignite", "voxpipe", "numpy")
DENIED_MODULES = (
    "torch.hub", "torch.package", "torch.utils.cpp_extension", "torch.ops", "torch.jit.load",
    "monai.bundle", "monai.apps", "monai.utils.module", "numpy.ctypeslib", "numpy.distutils",
)
_LOCATOR = ComponentLocator()


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(key path, key, value) for every entry under ``node``; list items have their index as key."""
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        child = f"{path}#{key}" if path else str(key)
        yield child, key, value
        yield from _walk(value, child)


def target_problem(target: str) -> str | None:
    """Why a ``_target_`` name is refused in safe mode, or ``None`` when it is allowed."""
    if "." not in target:
        if _LOCATOR.get_component_module_name(target) is None:
            return f"_target_ {target!r} is not a MONAI component name"
        return None
    if target.split(".")[0] not in ALLOWED_PACKAGES:
        return f"_target_ {target!r} is outside the allowed packages {', '.join(ALLOWED_PACKAGES)}"
    for denied in DENIED_MODULES:
        if target == denied or target.startswith(denied + "."):
            return f"_target_ {target!r} is in {denied}, which can download or run code"
    return None


def unsafe_entries(config: Any, *, file: str) -> list[str]:
    """Every entry of a parsed config that safe mode refuses, as ``'file: key#path: why'`` lines."""
    problems = []
    for path, key, value in _walk(config, ""):
        if isinstance(key, str) and key.startswith("$"):
            problems.append(f"{file}: {path}: a '$' key runs Python")
        if isinstance(value, str) and value.startswith("$"):
            shown = value if len(value) <= 70 else value[:67] + "..."
            problems.append(f"{file}: {path}: expression {shown!r} runs Python")
        elif key == "_target_" and isinstance(value, str):
            why = target_problem(value)
            if why:
                problems.append(f"{file}: {path}: {why}")
    return problems


def check_safe(config_files: Sequence[str | os.PathLike[str]]) -> None:
    """Raise :class:`BundleError` listing every entry of ``config_files`` that safe mode refuses.

    ``%`` macros are expanded first (MONAI's ``ConfigParser``), so text pulled in from other files
    is checked too.
    """
    problems: list[str] = []
    for config_file in config_files:
        parser = ConfigParser(ConfigParser.load_config_file(config_file))
        parser.resolve_macro_and_relative_ids()
        problems += unsafe_entries(parser.get(), file=Path(config_file).name)
    if problems:
        listing = "\n  ".join(problems)
        raise BundleError(
            f"safe mode refused {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} that would run code:\n  {listing}",
            hint="run without --safe only if you trust the bundle's author (a bundle is code)",
        )
