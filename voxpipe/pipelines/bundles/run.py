"""Run MONAI bundles (ours and others') through MONAI's own ``ConfigWorkflow``.

voxpipe adds what the bare runner lacks: the config is found by name inside a bundle folder,
``bundle_root`` is set to that folder, ``--set key=value`` overrides are parsed as YAML scalars, and
failures name the bundle and config file instead of ending in a long instantiation traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from voxpipe.errors import BundleError, VoxpipeError
from voxpipe.pipelines.bundles.config import WORKFLOW_TYPES, find_config, weights_keys

logger = logging.getLogger(__name__)


def run_engines(engines: Sequence[Any]) -> None:
    """Run Ignite engines in order; the ``run`` entry of voxpipe bundles (no ``$`` expression needed)."""
    for engine in engines:
        engine.run()



def run_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    config: str = "train",
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike[str] | None = None,
    safe: bool = False,
    validate: bool = False,
) -> ConfigWorkflow:
    """Initialise, run and finalise one config of a bundle with MONAI's ``ConfigWorkflow``.

    Runs voxpipe's bundles and third-party (Model Zoo) bundles unmodified and offline: nothing is
    downloaded (``large_files.yml`` is not read), and a weights file that is not there is an error
    naming the config key that wanted it, before anything runs. The bundle's ``logging.conf`` is not
    applied (voxpipe's CLI owns logging).

    Args:
        bundle_dir: bundle folder (``configs/metadata.json``, ``configs/<config>.yaml|json``), or a
            bundle zip (extracted to a temporary folder, checksums verified).
        config: config name: ``train``, ``inference``, ``evaluate`` or any other file in configs/.
        overrides: config ids and values, e.g. ``{"dataset_dir": "...", "max_epochs": 2}``;
            ``bundle_root`` defaults to ``bundle_dir``.
        weights: a weights file for every ``CheckpointLoader`` of the config (:func:`weights_keys`).
        safe: refuse ``$`` expressions and ``_target_``s outside the allow-list before anything is
            built (:func:`voxpipe.pipelines.bundles.safety.check_safe`).
        validate: check this config and ``metadata.json`` first and stop with every problem
            (:func:`voxpipe.pipelines.bundles.validate.validate_bundle`); ``voxpipe bundle run`` does.

    Returns:
        The finished workflow (its ``parser`` gives access to the built components).

    Raises:
        BundleError: missing files, or a failure while building or running the workflow; the
            message names the config file and the underlying error.
    """
    root = Path(bundle_dir).resolve()
    if root.is_file() and root.suffix == ".zip":  # a zip from `voxpipe bundle export` or the Model Zoo
        from voxpipe.pipelines.bundles.export import open_bundle_zip

        root = open_bundle_zip(root)
    config_file = find_config(root, config)
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{str(meta_file)!r}: expected the bundle's metadata.json, found no file")
    if safe:
        from voxpipe.pipelines.bundles.safety import check_safe

        check_safe([config_file])
    if validate:
        from voxpipe.pipelines.bundles.validate import validate_bundle

        problems = validate_bundle(root, configs=[config_file.stem], overrides=overrides)
        if problems:
            listing = "\n  ".join(str(problem) for problem in problems)
            raise BundleError(f"{str(root)!r}: {len(problems)} problem(s) found before running:\n  {listing}",
                              hint="fix them, or see `voxpipe bundle validate` for the whole bundle")
    values = {"bundle_root": str(root), **(overrides or {})}
    raw = ConfigParser(ConfigParser.load_config_file(config_file))
    keys = weights_keys(raw.get())
    for key in keys:  # a plain relative weights path means the bundle's file (MONAI's runner, run from the bundle folder)
        value = values.get(key, raw.get(key))
        if isinstance(value, str) and value and value[0] not in "$@%" and not Path(value).is_absolute() \
                and not Path(value).exists() and (root / value).exists():
            values[key] = str(root / value)
    if weights is not None:
        if not keys:
            raise BundleError(f"{str(config_file)!r}: --weights given, but the config has no CheckpointLoader to take them")
        values.update({key: str(weights) for key in keys})
    try:
        workflow = ConfigWorkflow(
            config_file=str(config_file),
            meta_file=str(meta_file),
            logging_file=False,
            workflow_type=WORKFLOW_TYPES.get(config),
            **values,
        )
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise BundleError(f"{str(config_file)!r}: required bundle properties missing: {missing}")
        for key in keys:
            wanted = workflow.parser.get_parsed_content(key)
            if not Path(str(wanted)).is_file():
                raise BundleError(
                    f"{str(config_file)!r}: {key}: expected the network weights file {str(wanted)!r}, found no file",
                    hint=f"pass --weights FILE (or --set {key}=FILE); voxpipe downloads nothing on its own",
                )
        workflow.run()
        workflow.finalize()
    except VoxpipeError:
        raise
    except Exception as error:
        root_cause = innermost_error(error)
        if isinstance(root_cause, VoxpipeError):
            raise root_cause from error
        raise BundleError(
            f"{str(config_file)!r}: {type(root_cause).__name__}: {_condensed(str(root_cause))}",
            hint=_hint_for(str(root_cause)),
        ) from error
    return workflow


def _condensed(message: str, *, keep: int = 2) -> str:
    """The first ``keep`` lines of a long error (PyTorch lists every mismatched tensor), joined."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    shown = " ".join(lines[:keep])
    return shown if len(lines) <= keep else f"{shown} ... ({len(lines) - keep} more lines; --debug shows all)"


def _hint_for(message: str) -> str:
    if "size mismatch" in message or "Missing key(s) in state_dict" in message:
        return (
            "the weights were trained with other network settings: pass the same network_def values "
            "(e.g. --set network_def#init_filters=8) that training used"
        )
    return "run with --debug for the full traceback"


def innermost_error(error: BaseException) -> BaseException:
    """The original exception under MONAI's 'Failed to instantiate' / 'applying transform' wrappers."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:  # re-raised causes can form a cycle
        error = error.__cause__
        seen.add(id(error))
    return error
