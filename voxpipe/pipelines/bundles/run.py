"""Run MONAI bundles (ours and others') through MONAI's own ``ConfigWorkflow``.

voxpipe adds what the bare runner lacks: configs are found by name inside a bundle folder,
``bundle_root`` is set to that folder, the configuration that will run is validated (and, in safe
mode, checked for code) before anything is built, weights files are checked before the run, and
failures name the culprit instead of ending in a long instantiation traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from voxpipe.errors import BundleError, VoxpipeError
from voxpipe.networks.transfer import load_torch_file
from voxpipe.pipelines.bundles.config import (
    WORKFLOW_TYPES,
    check_config_files,
    checkpoint_loaders,
    find_config,
    is_false,
    is_true,
    protect_paths,
    weights_keys,
)

logger = logging.getLogger(__name__)


def run_engines(engines: Sequence[Any]) -> None:
    """Run Ignite engines in order; the ``run`` entry of voxpipe bundles (no ``$`` expression needed)."""
    for engine in engines:
        engine.run()


class _Workflow(ConfigWorkflow):
    """MONAI's ``ConfigWorkflow``, except that in safe mode ``run`` leaves ``sys.path`` alone.

    MONAI's ``run`` puts the bundle folder on ``sys.path``: any module there (its ``scripts/``, or a
    file that shadows an installed package imported later) would then run as code.
    """

    def __init__(self, *args: Any, safe: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.safe = safe

    def run(self) -> Any:
        if not self.safe:
            return super().run()
        if self.run_id not in self.parser:
            raise ValueError(f"run ID '{self.run_id}' doesn't exist in the config file.")
        return self._run_expr(id=self.run_id)


@contextlib.contextmanager
def _importable(root: Path, *, enabled: bool) -> Iterator[None]:
    """The bundle folder on ``sys.path`` (its ``scripts/`` package importable) while the block runs.

    MONAI's runner does this at ``run``; voxpipe does it from validation on, since components are
    built (and their modules imported) before ``run``. A ``scripts`` package another bundle left in
    ``sys.modules`` is dropped first, so each bundle imports its own.
    """
    if not enabled:
        yield
        return
    entry = str(root)
    before = sys.path.count(entry)
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        source = getattr(sys.modules[name], "__file__", None) or ""
        if not Path(source).resolve().is_relative_to(root):
            del sys.modules[name]
    sys.path.insert(1, entry)
    try:
        yield
    finally:
        for _ in range(sys.path.count(entry) - before):
            sys.path.remove(entry)


def _loaders_in_use(workflow: ConfigWorkflow, loaders: Sequence[tuple[str, str]]) -> list[str]:
    """The weights keys of the loaders that will load: not ``_disabled_``, and not switched off by ``load_pretrain``.

    ``load_pretrain`` is the Model Zoo's switch (``_disabled_: "$not @load_pretrain"``, or an
    ``initialize`` expression that calls the loader only ``if @load_pretrain``).
    """
    parser = workflow.parser
    if "load_pretrain" in parser and is_false(parser.get_parsed_content("load_pretrain")):
        return []
    keys = []
    for loader_id, key in loaders:
        loader = parser.get(loader_id)
        if isinstance(loader, Mapping) and "_disabled_" in loader:
            if is_true(parser.get_parsed_content(f"{loader_id}#_disabled_")):
                continue
        keys.append(key)
    return list(dict.fromkeys(keys))


def run_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    config: str | Sequence[str] = "train",
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    safe: bool = False,
    validate: bool = False,
    run_id: str = "run",
    check_only: bool = False,
    before_run: Callable[[ConfigWorkflow], None] | None = None,
    execute: bool = True,
) -> ConfigWorkflow:
    """Initialise, run and finalise a bundle's config(s) with MONAI's ``ConfigWorkflow``.

    Runs voxpipe's bundles and third-party (Model Zoo) bundles unmodified and offline, as
    ``python -m monai.bundle run`` does: several configs are merged in order, the bundle folder is
    importable (its ``scripts/``), nothing is downloaded (``large_files.yml`` is not read), and a
    weights file that is not there is an error naming the config key that wanted it, before
    anything runs (unless its loader is ``_disabled_`` or ``load_pretrain`` is false). The
    bundle's ``logging.conf`` is not applied (voxpipe's CLI owns logging).

    Args:
        bundle_dir: bundle folder (``configs/metadata.json``, ``configs/<config>.yaml|json``), or a
            bundle zip (extracted to a temporary folder, checksums verified).
        config: config name (``train``, ``inference``, ``evaluate`` or any other file in configs/), or
            several merged in order (``["train", "evaluate"]``, MONAI's ``--config_file`` list).
        overrides: config ids and values, e.g. ``{"dataset_dir": "...", "max_epochs": 2}``;
            ``bundle_root`` defaults to ``bundle_dir``. Path strings holding ``#`` are passed as
            ``Path`` objects (:func:`~voxpipe.pipelines.bundles.config.protect_paths`).
        weights: a weights file for every ``CheckpointLoader`` of the config (:func:`weights_keys`).
        safe: build only components of known kinds and run no code, checked on the configuration
            as it will run, before anything is built (:mod:`voxpipe.pipelines.bundles.safety`).
        validate: check the configuration that will run and ``metadata.json`` first and stop on
            errors (warnings are logged; :func:`voxpipe.pipelines.bundles.validate.validate_bundle`);
            ``voxpipe bundle run`` does.
        run_id: the config id to run (MONAI's ``run_id``; default ``run``).
        check_only: stop after the checks that need no building (files, overrides, safe mode,
            validation): a long-running caller (``voxpipe serve``) refuses a bundle at start-up
            rather than at its first case.
        before_run: called with the initialised workflow just before it runs (``voxpipe infer
            --timings`` wraps its transforms and inferer there).
        execute: ``False`` stops after initialising (components built, weights files checked,
            ``before_run`` called) and returns the workflow unrun: the inference engine
            (:mod:`voxpipe.pipelines.inference.engine`) then runs its evaluator case by case.

    Returns:
        The finished workflow (its ``parser`` gives access to the built components; ``outputs``, when
        run, holds what the `run` entry returned: MONAI drops it, and reading `run` again would run it again).

    Raises:
        BundleError: missing files, refused by safe mode or validation, or a failure while building
            or running the workflow; the message names the config file and the underlying error.
    """
    root = Path(bundle_dir).resolve()
    if root.is_file() and root.suffix == ".zip":  # a zip from `voxpipe bundle export` or the Model Zoo
        from voxpipe.pipelines.bundles.export import open_bundle_zip

        root = open_bundle_zip(root)
    names = [config] if isinstance(config, str) else list(config)
    config_files = [find_config(root, name) for name in names]
    label = " + ".join(repr(str(f)) for f in config_files)
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{str(meta_file)!r}: expected the bundle's metadata.json, found no file")
    check_config_files([*config_files, meta_file])  # bounded parsing, before MONAI walks them
    weights_in_use: list[str] = []
    with _importable(root, enabled=not safe):
        try:
            # Overrides go through the parser below, not ConfigWorkflow's keywords (``workflow_type`` would collide).
            workflow = _Workflow(
                config_file=[str(f) for f in config_files],
                meta_file=str(meta_file),
                logging_file=False,
                workflow_type=WORKFLOW_TYPES.get(names[-1]),
                run_id=run_id,
                safe=safe,
            )
        except Exception as error:
            if validate:  # a syntax error: the validator gives its line and column
                _stop_on_errors(root, names, overrides)
            raise BundleError(f"{label}: {type(error).__name__}: {condensed(str(error))}") from error
        values = _run_values(workflow.parser, root, label, overrides, weights)
        try:
            workflow.parser.update(values)
        except Exception as error:  # an override of a nested id whose parent does not exist
            raise BundleError(f"{label}: --set: {type(error).__name__}: {condensed(str(error))}") from error
        loaders = checkpoint_loaders(workflow.parser.get())
        if safe:
            from voxpipe.pipelines.bundles.safety import check_safe_parser

            check_safe_parser(
                workflow.parser, name=" + ".join(f.name for f in config_files), bundle_root=root
            )
        if validate:
            _stop_on_errors(root, names, values)
        if run_id not in workflow.parser:
            raise BundleError(
                f"{label}: expected a config id {run_id!r} to run, found none",
                hint="name the id to run with --run-id (MONAI's run_id)",
            )
        if check_only:
            return workflow
        try:
            workflow.initialize()
            try:
                missing = workflow.check_properties()
            except (
                Exception
            ) as error:  # MONAI's own check fails on some layouts (a dict where it expects an id)
                logger.debug(
                    "%s: MONAI's property check failed (%s: %s); skipped, as MONAI's runner does",
                    label,
                    type(error).__name__,
                    error,
                )
                missing = None
            if missing:
                logger.warning(
                    "%s: bundle properties missing (MONAI's runner runs it anyway): %s", label, missing
                )
            for key in _loaders_in_use(workflow, loaders):
                wanted = workflow.parser.get_parsed_content(key)
                if not Path(str(wanted)).is_file():
                    raise BundleError(
                        f"{label}: {key}: expected the network weights file {str(wanted)!r}, found no file",
                        hint=f"pass --weights FILE (or --set {key}=FILE, or --set load_pretrain=False where the "
                        "bundle has that switch); voxpipe downloads nothing on its own",
                    )
                load_torch_file(
                    wanted, mmap=True
                )  # a broken or hostile file is named here, not as the config's error
                weights_in_use.append(str(wanted))
            if before_run is not None:
                before_run(workflow)
            if not execute:
                return workflow
            workflow.outputs = (
                workflow.run()
            )  # MONAI drops the resolved `run`: reading it again runs it again
            workflow.finalize()
        except VoxpipeError:
            raise
        except Exception as error:
            root_cause = innermost_error(error)
            if isinstance(root_cause, VoxpipeError):
                raise root_cause from error
            message = str(root_cause)
            if weights_in_use and ("state_dict" in message or "size mismatch" in message):
                raise BundleError(
                    f"{', '.join(repr(w) for w in weights_in_use)}: the weights do not fit the network of {label} "
                    f"({type(root_cause).__name__}: {condensed(message)})",
                    hint=hint_for(message),
                ) from error
            raise BundleError(
                f"{label}: {type(root_cause).__name__}: {condensed(str(root_cause))}",
                hint=hint_for(str(root_cause)),
            ) from error
    return workflow


def _run_values(
    parser: ConfigParser,
    root: Path,
    label: str,
    overrides: Mapping[str, Any] | None,
    weights: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """The ids voxpipe sets on the bundle: ``bundle_root``, the overrides, the weights paths; ``#`` paths protected."""
    values: dict[str, Any] = {"bundle_root": str(root), **(overrides or {})}
    keys = weights_keys(parser.get())
    for key in (
        keys
    ):  # a plain relative weights path means the bundle's file (MONAI's runner, run from the bundle folder)
        value = values.get(key, parser.get(key))
        if (
            isinstance(value, str)
            and value
            and value[0] not in "$@%"
            and not Path(value).is_absolute()
            and not Path(value).exists()
            and (root / value).exists()
        ):
            values[key] = str(root / value)
    if weights is not None:
        if not keys:
            raise BundleError(
                f"{label}: --weights given, but the config has no CheckpointLoader to take them"
            )
        values.update({key: str(weights) for key in keys})
    return {key: protect_paths(value, key=key) for key, value in values.items()}


def _stop_on_errors(root: Path, names: Sequence[str], overrides: Mapping[str, Any] | None) -> None:
    """Validate the configuration that will run; log its warnings, raise its errors all at once."""
    from voxpipe.pipelines.bundles.validate import validate_bundle

    problems = validate_bundle(root, configs=list(names), overrides=overrides)
    for warning in (p for p in problems if p.severity == "warning"):
        logger.warning("%s", warning)
    errors = [p for p in problems if p.severity != "warning"]
    if errors:
        listing = "\n  ".join(str(problem) for problem in errors)
        raise BundleError(
            f"{str(root)!r}: {len(errors)} problem(s) found before running:\n  {listing}",
            hint="fix them, or see `voxpipe bundle validate` for the whole bundle",
        )


def condensed(message: str, *, keep: int = 2) -> str:
    """The first ``keep`` lines of a long error (PyTorch lists every mismatched tensor), joined."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    shown = " ".join(lines[:keep])
    return shown if len(lines) <= keep else f"{shown} ... ({len(lines) - keep} more lines; --debug shows all)"


def hint_for(message: str) -> str:
    if "size mismatch" in message or "Missing key(s) in state_dict" in message:
        return (
            "the weights were trained with other network settings: pass the same network_def values "
            "(e.g. --set network_def#init_filters=8) that training used"
        )
    return "run with --debug for the full traceback"


def innermost_error(error: BaseException) -> BaseException:
    """The error under MONAI's 'Failed to instantiate' / 'applying transform' wrappers.

    The first voxpipe error in the chain of causes (it was written for the user and names the
    file), else the innermost cause.
    """
    seen = {id(error)}
    while (
        not isinstance(error, VoxpipeError)
        and error.__cause__ is not None
        and id(error.__cause__) not in seen
    ):
        error = error.__cause__  # re-raised causes can form a cycle
        seen.add(id(error))
    return error
