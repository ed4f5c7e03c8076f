"""``voxpipe bundle run|validate|export``: any MONAI bundle, ours or the Model Zoo's."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from voxpipe.cli.common import quiet_monai_bundle


def config_names(values: list[str] | None, default: str) -> list[str]:
    """``--config train --config evaluate`` or ``--config train,evaluate`` → ``["train", "evaluate"]``."""
    names = [name.strip() for value in (values or [default]) for name in value.split(",") if name.strip()]
    return names or [default]


def _cmd_bundle_run(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides, parse_runner_arguments
    from voxpipe.pipelines.bundles.run import run_bundle

    quiet_monai_bundle(args.verbose)
    overrides = {**parse_runner_arguments(args.runner_arguments), **parse_overrides(args.set)}
    run_id = overrides.pop("run_id", args.run_id)
    run_bundle(
        args.bundle,
        config=config_names(args.config, "inference"),
        overrides=overrides,
        weights=args.weights,
        safe=args.safe,
        validate=True,
        run_id=run_id,
    )
    return 0


def _cmd_bundle_validate(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.bundles.validate import validate_bundle

    configs = config_names(args.config, "") if args.config else None
    problems = validate_bundle(args.bundle, configs=configs, overrides=parse_overrides(args.set))
    for problem in problems:
        print(problem)
    errors = [p for p in problems if p.severity != "warning"]
    warnings = len(problems) - len(errors)
    if errors or (warnings and args.strict):
        counted = len(problems) if args.strict else len(errors)
        print(
            f"{counted} problem{'s' if counted != 1 else ''} in {args.bundle}"
            + (f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""),
            file=sys.stderr,
        )
        return 2
    print(
        f"{args.bundle}: no problems"
        + (f" ({warnings} warning{'s' if warnings != 1 else ''}; --strict fails on them)" if warnings else "")
    )
    return 0


def _cmd_bundle_export(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.export import export_bundle

    written = export_bundle(args.bundle, args.output, weights=args.weights, name=args.name)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_bundle_import_nnunet(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.inference.nnunet.bundle import import_nnunet

    written = import_nnunet(args.folder, args.output)
    print(f"wrote {written} (python -m monai.bundle run --config_file {written}/configs/inference.json ...)")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``bundle`` and its actions on the top-level subparsers."""
    bundle = commands.add_parser(
        "bundle", help="run any MONAI bundle (ours or the Model Zoo's), offline, optionally in safe mode"
    )
    bundle_actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")
    bundle_run = bundle_actions.add_parser(
        "run",
        help="run a bundle's config(s) unmodified ($ expressions, @ references, %% macros, scripts/), offline",
        description="Runs as `python -m monai.bundle run` does, and takes its arguments too: "
        "`voxpipe bundle run BUNDLE --dataset_dir /data --load_pretrain False` equals --set dataset_dir=/data "
        "--set load_pretrain=False. Values: @ref, $expression and %%file#id stay as written; otherwise a Python "
        "literal, else YAML, else text.",
    )
    bundle_run.add_argument(
        "bundle", help="bundle folder (configs/metadata.json and configs/CONFIG.{json,yaml}) or bundle zip"
    )
    bundle_run.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help="config name in BUNDLE/configs (default: inference); several (--config train --config "
        "evaluate, or train,evaluate) are merged in order, as MONAI's --config_file list",
    )
    bundle_run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set dataset_dir=/data/Task09_Spleen",
    )
    bundle_run.add_argument("--run-id", default="run", help="config id to run (MONAI's run_id; default: run)")
    bundle_run.add_argument(
        "--weights", help="weights file for the config's CheckpointLoader(s); nothing is downloaded"
    )
    bundle_run.add_argument(
        "--safe",
        action="store_true",
        help="build only components of known kinds (transforms, networks, losses, optimisers, "
        "inferers, engines, handlers, datasets, metrics) and run no code: no $ expressions, no "
        "loaders switched to unsafe, no scripts/ (a bundle is code; see docs/capabilities/bundles.md, the threat model)",
    )
    bundle_run.set_defaults(func=_cmd_bundle_run, accepts_runner_arguments=True)
    bundle_validate = bundle_actions.add_parser(
        "validate",
        help="report every problem of a bundle at once (syntax, references, targets, arguments, "
        "properties, metadata schema) without running it; exit 2 on errors (--strict: on warnings too)",
    )
    bundle_validate.add_argument("bundle", help="bundle folder")
    bundle_validate.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help="validate the merge of these configs with --set applied, as `bundle run` would run "
        "them (default: every config; a fragment such as evaluate on top of train)",
    )
    bundle_validate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override the run will have (checked as part of the configuration)",
    )
    bundle_validate.add_argument(
        "--strict",
        action="store_true",
        help="also fail on warnings (metadata schema findings, missing bundle properties)",
    )
    bundle_validate.set_defaults(func=_cmd_bundle_validate)
    bundle_import = bundle_actions.add_parser(
        "import-nnunet",
        help="write a MONAI bundle that runs an nnU-Net v2 model folder (MONAI's runner runs it too)",
    )
    bundle_import.add_argument("folder", help="nnU-Net model folder <Trainer>__<Plans>__<configuration>")
    bundle_import.add_argument("-o", "--output", required=True, help="the new bundle's folder")
    bundle_import.set_defaults(func=_cmd_bundle_import_nnunet)
    bundle_export = bundle_actions.add_parser(
        "export",
        help="package configs, docs and trained weights as a bundle zip (checksums in metadata.json)",
    )
    bundle_export.add_argument("bundle", help="bundle folder")
    bundle_export.add_argument("-o", "--output", required=True, help="zip file to write")
    bundle_export.add_argument("--weights", help="trained weights (default: BUNDLE/models/model.pt)")
    bundle_export.add_argument(
        "--name", help="bundle folder name inside the zip (default: the folder's name)"
    )
    bundle_export.set_defaults(func=_cmd_bundle_export)
