"""Safe mode for bundles: build only components of known kinds, run no code, load nothing unsafely.

A MONAI bundle is code. ``$`` strings are Python expressions run with ``eval``; a ``_target_`` can
name any importable callable (``torch.load`` with ``weights_only: false`` unpickles code, so does
``numpy.load`` with ``allow_pickle: true``); ``%`` macros pull config text in from other files; and
MONAI's runner puts the bundle folder on ``sys.path``, so its ``scripts/`` package (or any module
there that shadows an installed one) is imported and run. MONAI has no switch to turn these off.

The rule (:func:`unsafe_entries`), checked on the configuration *as it will run* (config files
merged, ``--set`` overrides and ``--weights`` applied, ``_meta_`` included, ``%`` macros expanded:
:func:`check_safe_parser`), lists every offending key path at once:

1. **No code.** No string value or key starts with ``$`` (expressions, ``$import``), and
   ``_mode_`` is ``default``, ``callable`` or ``partial`` (``debug`` starts a debugger).
2. **Components of known kinds only.** A ``_target_`` (after following ``@`` references) must
   resolve inside ``monai``, ``torch``, ``ignite`` or ``voxpipe``, outside :data:`DENIED_MODULES`,
   to a class of one of the kinds in :func:`component_kinds` (transforms, networks and losses,
   optimisers and schedulers, inferers, engines, handlers, datasets, loaders and samplers, metrics,
   image readers and writers) or to one of :data:`BUNDLE_SAFE_FUNCTIONS` (voxpipe's functions that
   bundles call, and a few MONAI helpers). Functions that load or evaluate (``torch.load``,
   ``numpy.load``, ``pickle.*``, ``eval``, ``importlib``, ``subprocess``, ``os.*``, ``shutil.*``,
   ``open``, bundle runners, ``monai.bundle.*``, ``torch.hub``) are none of these, so they are refused.
3. **No unsafe switches.** Keyword values that turn a safe loader into an unsafe one are refused
   wherever they appear: ``weights_only`` false, ``allow_pickle`` true, ``pickle_module``,
   ``trust_remote_code`` true.
4. **No string becomes a callable unchecked.** MONAI turns a string into a class or function in
   ``LoadImage(reader=...)`` and ``SaveImage(writer=...)`` (a name is looked up in ``monai.data``,
   then imported as a dotted path with ``pydoc.locate``, which also finds builtins such as ``open``;
   every item of a list is resolved, and the other keywords go to what it found). So every string
   under a ``reader`` / ``writer`` key, in any nesting of lists and dicts, must name a MONAI image
   reader / writer class (:func:`io_class_problem`). Anywhere else, any string that is a dotted
   name in an installed module (``os.system``, ``monai.utils.optional_import``) must pass the
   ``_target_`` rule, so an argument that resolves names which this list does not know is covered
   too. ``_meta_`` is data and exempt; dtype names (``torch.float32``) pass.
5. **Nothing downloads.** A keyword whose name says it fetches (``url``, ``uri``, ``download``,
   ``pretrained``, ``hub``, or any ``*_url`` / ``*_uri``: ``pretrained_url``) with any value other
   than off/empty; a keyword with such a word as a ``_``-separated part (``download_weights``,
   ``use_hub``) switched on (not a number or a path: ``pretrained_lr_scale`` is not a fetch); and
   any string value that is a URL
   (``http``, ``https``, ``ftp``, ``s3``, ``gs``, ``hf``), are refused outside ``_meta_``.
6. **No bundle code.** A ``_target_`` in the bundle's own ``scripts/`` package (or anything that is
   not installed) is refused, and :func:`voxpipe.pipelines.bundles.run.run_bundle` does not put the
   bundle folder on ``sys.path`` in safe mode.

Weights are read with ``torch.load(weights_only=True)`` by voxpipe and by MONAI's
``CheckpointLoader``, which never unpickles code. What safe mode does not stop: an allowed component
writes wherever the config says (an output folder can be any folder you can write to), reads any
file you can read, and uses as much memory and time as the config asks for. Read the configs of a
bundle you do not trust; run it as a user who can write only where the outputs go.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import pydoc
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator

from voxpipe.errors import BundleError
from voxpipe.pipelines.bundles.config import check_config_files, is_false, is_true

ALLOWED_PACKAGES = ("monai", "torch", "ignite", "voxpipe")
# Parts of the allowed packages that download, load code or run bundles, whatever kind their classes are.
DENIED_MODULES = (
    "torch.hub",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.jit",
    "torch.ops",
    "torch.classes",
    "torch.utils.data.datapipes",
    "torch.distributed.rpc",
    "monai.bundle",
    "monai.apps",
    "monai.utils.module",
    "monai.data.dataset.LMDBDataset",
    "monai.data.LMDBDataset",
    "voxpipe.pipelines.bundles",
    "voxpipe.cli",
)
# Inside those: MONAI's box transforms for detection are plain transforms (no download, no code loading).
SAFE_INSIDE_DENIED = ("monai.apps.detection.transforms",)
# Functions (not component classes) that bundles may call: they build or list things and run no code
# from the config. run_engines is the one runner here: it calls .run() on engines the config built.
BUNDLE_SAFE_FUNCTIONS = frozenset(
    {
        "voxpipe.networks.registry.build_network",
        "voxpipe.runtime.select_device",
        "voxpipe.transforms.presets.compose",
        "voxpipe.pipelines.bundles.run.run_engines",
        "voxpipe.pipelines.data.datalists.msd_datalist",
        "voxpipe.pipelines.data.datalists.split_datalist",
        "voxpipe.pipelines.data.caching.cached_dataset",
        "voxpipe.pipelines.training.trainer.build_trainer",
        "voxpipe.pipelines.training.trainer.build_optimizer",
        "voxpipe.pipelines.training.trainer.build_scheduler",
        "voxpipe.pipelines.training.distributed.initialize",
        "voxpipe.pipelines.training.distributed.data_loader",
        "voxpipe.pipelines.training.classification.classification_datalist",
        "voxpipe.pipelines.training.classification.classification_metrics",
        "voxpipe.pipelines.training.classification.classification_loss",
        "voxpipe.pipelines.training.classification.balanced_sample_weights",
        "voxpipe.pipelines.evaluation.evaluate.batch_image_meta",
        "voxpipe.networks.retinanet.build_retinanet",
        "voxpipe.networks.retinanet.build_detector",
        "voxpipe.pipelines.training.detection.detection_datalist",
        "voxpipe.pipelines.training.detection.plan_anchors",
        "voxpipe.pipelines.training.detection.read_anchors",
        "voxpipe.pipelines.inference.detect.run_detection",
        "voxpipe.pipelines.inference.nnunet_predict.run_nnunet_bundle",  # bundles imported before the move
        "voxpipe.pipelines.inference.nnunet.bundle.run_nnunet_bundle",
        "voxpipe.pipelines.evaluation.detections.evaluate_run",
        "monai.data.utils.no_collation",
        "monai.data.decathlon_datalist.load_decathlon_datalist",
        "monai.data.utils.partition_dataset",
        "monai.data.utils.list_data_collate",
        "monai.data.utils.pad_list_data_collate",
        "monai.data.utils.decollate_batch",
        "monai.handlers.utils.from_engine",
        "monai.engines.utils.default_prepare_batch",
    }
)
# voxpipe's own handler classes (Ignite handlers are plain classes with an attach method), steps and loaders.
BUNDLE_SAFE_CLASSES = frozenset(
    {
        "voxpipe.pipelines.training.handlers.CaseProgress",
        "voxpipe.pipelines.inference.prefetch.PrefetchDataLoader",
        "voxpipe.pipelines.training.handlers.ProgressPlot",
        "voxpipe.pipelines.training.detection.DetectionTrainStep",
        "voxpipe.pipelines.training.detection.DetectionValStep",
    }
)
SAFE_MODES = ("default", "callable", "partial")
_LOCATOR = ComponentLocator()
_MAX_REFERENCE_DEPTH = 20


@functools.lru_cache(maxsize=1)
def component_kinds() -> tuple[tuple[str, type], ...]:
    """``(kind, base class)`` pairs a safe ``_target_`` class must derive from (handlers apart)."""
    import ignite.engine
    import ignite.metrics
    import monai.data
    import monai.inferers
    import monai.metrics
    import monai.transforms
    import torch
    import torch.utils.data

    return (
        ("transform", monai.transforms.Transform),
        ("network or loss", torch.nn.Module),
        ("optimiser", torch.optim.Optimizer),
        ("learning-rate scheduler", torch.optim.lr_scheduler.LRScheduler),
        ("learning-rate scheduler", torch.optim.lr_scheduler.ReduceLROnPlateau),
        ("inferer", monai.inferers.Inferer),
        ("engine", ignite.engine.Engine),
        ("dataset", torch.utils.data.Dataset),
        ("data loader", torch.utils.data.DataLoader),
        ("sampler", torch.utils.data.Sampler),
        ("metric", monai.metrics.Metric),
        ("metric", ignite.metrics.Metric),
        ("image reader", monai.data.ImageReader),
        ("image writer", monai.data.ImageWriter),
    )


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(key path, key, value) for every entry under ``node``; list items have their index as key."""
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        child = f"{path}#{key}" if path else str(key)
        yield child, key, value
        yield from _walk(value, child)


def _in(name: str, prefixes: Sequence[str]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def _denied(name: str) -> str | None:
    """The denied module ``name`` lies in, unless it lies in one of the safe parts of it."""
    return None if _in(name, SAFE_INSIDE_DENIED) else _in(name, DENIED_MODULES)


def _is_bundle_code(obj: Any, bundle_root: Path | None) -> bool:
    if bundle_root is None:
        return False
    try:
        source = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except (TypeError, OSError):
        return False
    return Path(source).resolve().is_relative_to(bundle_root.resolve())


def target_problem(target: str, *, bundle_root: str | os.PathLike[str] | None = None) -> str | None:
    """Why a ``_target_`` name is refused in safe mode, or ``None`` when it is allowed.

    Only modules inside the allowed packages are imported to answer (those are installed code, not
    the bundle's); the bundle's own ``scripts`` package is never imported.
    """
    if not isinstance(target, str) or not target:
        return f"_target_ {target!r} is not a component name"
    if target.split(".")[0] == "scripts":
        return f"_target_ {target!r} is in the bundle's own scripts/ package: importing it runs the bundle's code"
    if "." not in target:
        module = _LOCATOR.get_component_module_name(target)
        if module is None:
            return f"_target_ {target!r} is not a MONAI component name"
        target = f"{module[0] if isinstance(module, list) else module}.{target}"
    if target.split(".")[0] not in ALLOWED_PACKAGES:
        return f"_target_ {target!r} is outside the allowed packages {', '.join(ALLOWED_PACKAGES)}"
    denied = _denied(target)
    if denied and target not in BUNDLE_SAFE_FUNCTIONS:
        return f"_target_ {target!r} is in {denied}, which downloads, loads code or runs bundles"
    try:
        obj = pydoc.locate(target)
    except pydoc.ErrorDuringImport as error:
        return f"_target_ {target!r} does not import ({error.value})"
    if obj is None:
        return f"_target_ {target!r} does not exist"
    if _is_bundle_code(obj, Path(bundle_root) if bundle_root else None):
        return f"_target_ {target!r} is defined inside the bundle folder: importing it runs the bundle's code"
    module = getattr(obj, "__module__", "") or ""
    qualified = f"{module}.{getattr(obj, '__qualname__', '')}"
    if module.split(".")[0] not in ALLOWED_PACKAGES:
        return (
            f"_target_ {target!r} is {qualified}, outside the allowed packages {', '.join(ALLOWED_PACKAGES)}"
        )
    if qualified in BUNDLE_SAFE_FUNCTIONS or qualified in BUNDLE_SAFE_CLASSES:
        return None
    denied = _denied(qualified)
    if denied:
        return f"_target_ {target!r} is {qualified}, in {denied}, which downloads, loads code or runs bundles"
    if inspect.isclass(obj):
        if any(issubclass(obj, base) for _, base in component_kinds()):
            return None
        if _in(module, ("monai.handlers", "ignite.handlers")) and hasattr(obj, "attach"):
            return None  # Ignite/MONAI handlers: classes that attach to engines
        kinds = sorted({kind for kind, _ in component_kinds()} | {"handler"})
        return f"_target_ {target!r} is a class of no component kind safe mode builds ({', '.join(kinds)})"
    return (
        f"_target_ {target!r} is a function, not a component; safe mode calls only components "
        f"and voxpipe's bundle-safe functions (functions that load, evaluate or run code are refused)"
    )


def _follow(config: Any, value: Any) -> tuple[Any, bool]:
    """The literal ``value`` stands for after following ``@`` references: ``(value, resolved)``.

    ``resolved`` is False when a reference points nowhere or into something that is not a literal
    (a component, an expression): then safe mode cannot tell what the value will be.
    """
    for _ in range(_MAX_REFERENCE_DEPTH):
        if not (isinstance(value, str) and value.startswith("@")):
            return value, not (isinstance(value, str) and value.startswith("$"))
        node = config
        for part in value[1:].replace("::", "#").split("#"):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return value, False
        if isinstance(node, Mapping) and "_target_" in node:
            return node, False
        value = node
    return value, False


# keyword → (is it unsafe?, why)
_UNSAFE_KEYWORDS = {
    "weights_only": (is_false, "weights_only: false lets torch.load unpickle code"),
    "allow_pickle": (is_true, "allow_pickle: true lets numpy.load unpickle code"),
    "pickle_module": (lambda v: v is not None, "pickle_module replaces the unpickler torch.load uses"),
    "trust_remote_code": (is_true, "trust_remote_code: true runs code that comes with downloaded weights"),
}
_FETCHING_KEY = re.compile(r"(^|_)(url|urls|uri|download|pretrained|hub)(_|$)", re.IGNORECASE)
_ADDRESS_KEY = re.compile(r"(^|_)(url|urls|uri)(_|$)", re.IGNORECASE)


def _fetches(key: str, value: Any) -> bool:
    """Whether a keyword named like a fetching one asks for a fetch with this (literal) value.

    ``url`` / ``pretrained`` / ``download`` / ``hub`` alone and any ``*_url`` / ``*_uri`` key: any value
    but off or empty. A key that only contains such a word (``pretrained_lr_scale``, ``download_dir``):
    a switch turned on (``True``, ``"yes"``), not a number or a path.
    """
    if _is_off(value):
        return False
    if key.lower() in ("url", "urls", "uri", "download", "pretrained", "hub") or _ADDRESS_KEY.search(key):
        return True
    return value is True or (isinstance(value, str) and is_true(value))


_URL_VALUE = re.compile(r"^\s*(https?|ftp|s3|gs|hf)://", re.IGNORECASE)
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _is_off(value: Any) -> bool:
    """A fetching keyword that fetches nothing: ``None``, ``False``/``0``/``"false"``, ``""``, ``[]``, ``{}``."""
    return value is None or is_false(value) or (isinstance(value, (str, list, tuple, dict)) and not value)


def io_class_problem(key: str, name: str) -> str | None:
    """Why a ``reader`` / ``writer`` string is refused, or ``None`` when it names a MONAI reader/writer class.

    Mirrors how ``LoadImage`` / ``SaveImage`` resolve it: a bare name in ``monai.data`` first, then
    MONAI's lower-case aliases (``"itkreader"``), else a dotted path imported by ``pydoc.locate``
    (which also finds builtins: ``"open"``).
    """
    import monai.data
    from monai.data.image_writer import SUPPORTED_WRITERS
    from monai.transforms.io.array import SUPPORTED_READERS

    base = monai.data.ImageReader if key == "reader" else monai.data.ImageWriter
    kind = "image reader" if key == "reader" else "image writer"
    aliases = SUPPORTED_READERS if key == "reader" else SUPPORTED_WRITERS
    if "." not in name:
        found = getattr(monai.data, name, None)
        if (inspect.isclass(found) and issubclass(found, base)) or (
            found is None and name.lower() in aliases
        ):
            return None
        return f"{key} {name!r} is not a MONAI {kind} class (MONAI would resolve it with pydoc.locate)"
    why = target_problem(name)
    if why:
        return f"{key} {name!r}: {why}"
    found = pydoc.locate(name)
    if not (inspect.isclass(found) and issubclass(found, base)):
        return f"{key} {name!r} is not a MONAI {kind} class"
    return None


def _leaves(node: Any) -> Iterator[Any]:
    """Every leaf of lists, tuples and plain dicts (a ``_target_`` dict is a component, checked on its own)."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield node
        else:
            for value in node.values():
                yield from _leaves(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _leaves(value)
    else:
        yield node


def _importable_name(value: str) -> bool:
    """A dotted name whose top-level module is installed (found without importing anything)."""
    if not _DOTTED_NAME.match(value):
        return False
    try:
        return importlib.util.find_spec(value.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _dtype_name(value: str) -> bool:
    """``torch.float32`` / ``numpy.int16``: dtype names MONAI converts, not callables."""
    module, _, name = value.partition(".")
    if module not in ("torch", "numpy") or "." in name:
        return False
    import numpy
    import torch

    found = getattr(torch if module == "torch" else numpy, name, None)
    return isinstance(found, torch.dtype) or (inspect.isclass(found) and issubclass(found, numpy.generic))


def unsafe_entries(config: Any, *, file: str, bundle_root: str | os.PathLike[str] | None = None) -> list[str]:
    """Every entry of a parsed config that safe mode refuses, as ``'file: key#path: why'`` lines."""
    problems = []
    for path, key, value in _walk(config, ""):
        in_meta = path == "_meta_" or path.startswith("_meta_#")
        if isinstance(key, str) and key.startswith("$"):
            problems.append(f"{file}: {path}: a '$' key runs Python")
        if isinstance(value, str) and value.startswith("$"):
            shown = value if len(value) <= 70 else value[:67] + "..."
            problems.append(f"{file}: {path}: expression {shown!r} runs Python")
            continue
        if key == "_target_":
            target, resolved = _follow(config, value)
            why = (
                target_problem(target, bundle_root=bundle_root)
                if resolved
                else f"_target_ {value!r} does not name a component literally (safe mode cannot check it)"
            )
            if why:
                problems.append(f"{file}: {path}: {why}")
        elif key == "_mode_":
            mode, resolved = _follow(config, value)
            if not resolved or mode not in SAFE_MODES:
                problems.append(
                    f"{file}: {path}: _mode_ {value!r}: safe mode allows only {', '.join(SAFE_MODES)}"
                )
        elif key in _UNSAFE_KEYWORDS:
            literal, resolved = _follow(config, value)
            unsafe, why = _UNSAFE_KEYWORDS[key]
            if not resolved:
                problems.append(
                    f"{file}: {path}: {key} is {value!r}, which safe mode cannot check ({why.split(' ', 2)[-1]})"
                )
            elif unsafe(literal):
                problems.append(f"{file}: {path}: {why}")
        elif key in ("reader", "writer"):
            problems.extend(f"{file}: {path}: {why}" for why in _io_problems(config, key, value))
        elif isinstance(key, str) and _FETCHING_KEY.search(key) and not in_meta:
            literal, resolved = _follow(config, value)
            if not resolved:
                if not (isinstance(literal, Mapping) and "_target_" in literal):
                    problems.append(
                        f"{file}: {path}: {key} is {value!r}, which safe mode cannot check (it may fetch)"
                    )
            elif _fetches(key, literal):
                shown = repr(literal) if len(repr(literal)) <= 70 else repr(literal)[:67] + "..."
                problems.append(f"{file}: {path}: {key} {shown}: safe mode downloads nothing")
        elif isinstance(value, str) and not in_meta:
            if _URL_VALUE.match(value):
                problems.append(f"{file}: {path}: {value!r} is a URL: safe mode downloads nothing")
            elif _importable_name(value) and not _dtype_name(value):
                why = target_problem(value, bundle_root=bundle_root)
                if why:
                    problems.append(f"{file}: {path}: the string {value!r} names code ({why})")
    return problems


def _io_problems(config: Any, key: str, value: Any) -> Iterator[str]:
    """What is wrong with a ``reader`` / ``writer`` value: a string, a component, or lists / dicts of them."""
    literal, resolved = _follow(config, value)
    if not resolved:
        if not (isinstance(literal, Mapping) and "_target_" in literal):  # a component is checked on its own
            yield f"{key} {value!r} does not name a reader/writer literally (safe mode cannot check it)"
        return
    for item in _leaves(literal):
        item, resolved = _follow(config, item)
        if isinstance(item, Mapping) and "_target_" in item:
            continue
        if not resolved:
            yield f"{key} item {item!r} does not name a reader/writer literally (safe mode cannot check it)"
        elif isinstance(item, str):
            why = io_class_problem(key, item)
            if why:
                yield why


def _expanded(parser: ConfigParser) -> Any:
    """The parser's config with ``%`` macros and relative ids resolved, on a copy (the parser is untouched)."""
    copy = ConfigParser(parser.get())
    copy.resolve_macro_and_relative_ids()
    return copy.get()


def check_safe_parser(
    parser: ConfigParser, *, name: str, bundle_root: str | os.PathLike[str] | None = None
) -> None:
    """Raise :class:`BundleError` listing every entry safe mode refuses in what ``parser`` will run.

    Give the workflow's own parser after overrides are applied and before anything is built, so
    the check sees exactly the configuration that runs (``name`` labels the lines, e.g. the config
    file names).
    """
    problems = unsafe_entries(_expanded(parser), file=name, bundle_root=bundle_root)
    if problems:
        listing = "\n  ".join(problems)
        raise BundleError(
            f"safe mode refused {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} that would run code:\n  {listing}",
            hint="a bundle is code: let it run only if you trust its author (leave out --safe; for serve "
            "and bundles pulled by name, add --trust-bundle); see docs/capabilities/bundles.md, the threat model",
        )


def check_safe(
    config_files: Sequence[str | os.PathLike[str]],
    *,
    overrides: Mapping[str, Any] | None = None,
    bundle_root: str | os.PathLike[str] | None = None,
) -> None:
    """:func:`check_safe_parser` on ``config_files`` merged in order, with ``overrides`` applied."""
    merged = ConfigParser(config={})
    for content in check_config_files(config_files):  # bounded parsing; merged in order as MONAI merges
        for key, value in content.items():
            merged[key] = value
    parser = ConfigParser()
    parser.read_config(merged.get())
    parser.update(dict(overrides or {}))
    check_safe_parser(parser, name=", ".join(Path(f).name for f in config_files), bundle_root=bundle_root)
