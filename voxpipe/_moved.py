"""Old dotted paths (voxpipe 0.1 layout) keep importing for one release, with a deprecation warning.

Bundle configs name voxpipe by dotted path (``_target_: voxpipe.pipelines.train.build_trainer``), and
users copy our bundles. When modules moved into capability subpackages, the old paths became
:data:`MOVED_MODULES` (a module that no longer exists) and :data:`MOVED_NAMES` (``voxpipe.pipelines.data``
is now a package; its old functions live in its submodules). Importing an old module gives a thin
forwarding module; each attribute read through it, or an old name read from a package, warns once
with :class:`VoxpipeDeprecationWarning` naming the new path and then returns the very same object.

Why our own: Python has no standard alias for moved modules (``sys.modules`` aliasing would rewrite
the real module's ``__spec__``), and MONAI's ``ConfigParser`` resolves ``_target_`` with
``pydoc.locate``, which imports the module path piece by piece, so the alias must be importable.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Any

REMOVED_IN = "voxpipe 0.3"


class VoxpipeDeprecationWarning(DeprecationWarning):
    """A voxpipe path or option that still works but will go; the message names its replacement.

    Shown by default (``voxpipe/__init__.py`` adds a filter for this class alone), because the people
    who meet it are bundle authors running a config, not the developers of the importing code.
    """


#: Old module → the module that now holds everything it had.
MOVED_MODULES: dict[str, str] = {
    "voxpipe.synthetic": "voxpipe.phantoms.ct",
    "voxpipe.synthetic_dicom": "voxpipe.phantoms.dicom",
    "voxpipe.synthetic_nodules": "voxpipe.phantoms.nodules",
    "voxpipe.cli_data": "voxpipe.cli.data",
    "voxpipe.pipelines.check": "voxpipe.pipelines.data.check",
    "voxpipe.pipelines.fingerprint": "voxpipe.pipelines.data.fingerprint",
    "voxpipe.pipelines.download": "voxpipe.pipelines.data.download",
    "voxpipe.pipelines.train": "voxpipe.pipelines.training.trainer",
    "voxpipe.pipelines.handlers": "voxpipe.pipelines.training.handlers",
    "voxpipe.pipelines.distributed": "voxpipe.pipelines.training.distributed",
    "voxpipe.pipelines.classify": "voxpipe.pipelines.training.classification",
    "voxpipe.pipelines.infer": "voxpipe.pipelines.inference.infer",
    "voxpipe.pipelines.fast_infer": "voxpipe.pipelines.inference.sliding_window",
    "voxpipe.pipelines.stats": "voxpipe.pipelines.inference.stats",
    "voxpipe.pipelines.evaluate": "voxpipe.pipelines.evaluation.evaluate",
    "voxpipe.pipelines.report": "voxpipe.pipelines.evaluation.report",
    "voxpipe.pipelines.bundle": "voxpipe.pipelines.bundles",  # split: see MOVED_NAMES
    "voxpipe.pipelines.bundle_validate": "voxpipe.pipelines.bundles.validate",
    "voxpipe.pipelines.bundle_safety": "voxpipe.pipelines.bundles.safety",
    "voxpipe.pipelines.bundle_export": "voxpipe.pipelines.bundles.export",
}

#: Old module (split into several) → {name: new module}. Checked before MOVED_MODULES.
MOVED_NAMES: dict[str, dict[str, str]] = {
    "voxpipe.pipelines.data": {
        **dict.fromkeys(
            ("detect_layout", "load_datalist", "split_datalist", "msd_datalist", "PARTS", "LAYOUTS"),
            "voxpipe.pipelines.data.datalists",
        ),
        **dict.fromkeys(("make_split", "save_split", "select_split"), "voxpipe.pipelines.data.splits"),
        **dict.fromkeys(
            ("estimate_cache_bytes", "available_memory_bytes", "cached_dataset"),
            "voxpipe.pipelines.data.caching",
        ),
    },
    "voxpipe.pipelines.bundle": {
        **dict.fromkeys(("run_bundle", "run_engines", "innermost_error"), "voxpipe.pipelines.bundles.run"),
        **dict.fromkeys(
            (
                "shipped_bundle",
                "find_config",
                "parse_overrides",
                "weights_keys",
                "CONFIG_SUFFIXES",
                "WORKFLOW_TYPES",
                "CHECKPOINT_LOADERS",
            ),
            "voxpipe.pipelines.bundles.config",
        ),
    },
}


def new_location(old_module: str, name: str) -> str | None:
    """The module that now defines ``old_module.name``, or None when the old path never had it."""
    if name in MOVED_NAMES.get(old_module, {}):
        return MOVED_NAMES[old_module][name]
    if old_module in MOVED_MODULES and old_module not in MOVED_NAMES:
        return MOVED_MODULES[old_module]
    return None


def forward(old_module: str, name: str) -> Any:
    """``old_module.name`` from its new home, warning once per old path; AttributeError if unknown.

    Module ``__getattr__`` hooks (PEP 562) of packages that kept an old module's name call this.
    """
    target = new_location(old_module, name)
    if target is None:
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(target), name)
    warnings.warn(
        f"{old_module}.{name} moved to {target}.{name}; the old path will be removed in {REMOVED_IN} "
        f"(update the bundle config's _target_ or the import)",
        VoxpipeDeprecationWarning,
        stacklevel=3,
    )
    return value


class _MovedModule(types.ModuleType):
    """Stands at an old module path; every attribute comes from the new module, with a warning."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return forward(self.__name__, name)

    def __dir__(self) -> list[str]:
        names = set(MOVED_NAMES.get(self.__name__, {}))
        if self.__name__ not in MOVED_NAMES:
            names |= {
                n
                for n in dir(importlib.import_module(MOVED_MODULES[self.__name__]))
                if not n.startswith("__")
            }
        return sorted(names)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths of :data:`MOVED_MODULES` (only those: others fall through)."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=f"moved to {MOVED_MODULES[fullname]}")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name, f"Moved to {MOVED_MODULES[spec.name]} (deprecated path).")

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: attributes are forwarded on access."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``voxpipe/__init__.py`` calls this)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
