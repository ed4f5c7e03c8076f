"""``voxpipe bundle run|validate|export``: any MONAI bundle, ours or the Model Zoo's."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from voxpipe.cli.common import quiet_monai_bundle


def _cmd_bundle_run(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.bundles.run import run_bundle

    quiet_monai_bundle(args.verbose)
    run_bundle(args.bundle, config=args.config, overrides=parse_overrides(args.set), weights=args.weights, safe=args.safe,
               validate=True)
    return 0


def _cmd_bundle_validate(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.validate import validate_bundle

    problems = validate_bundle(args.bundle)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {args.bundle}", file=sys.stderr)
        return 2
    print(f"{args.bundle}: no problems")
    return 0


def _cmd_bundle_export(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.export import export_bundle

    written = export_bundle(args.bundle, args.output, weights=args.weights, name=args.name)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``bundle`` and its actions on the top-level subparsers."""
    bundle = commands.add_parser("bundle", help="run any MONAI bundle (ours or the Model Zoo's), offline, optionally in safe mode")
    bundle_actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")
    bundle_run = bundle_actions.add_parser(
        "run", help="run one config of a bundle folder unmodified ($ expressions, @ references, %% macros), offline"
    )
    bundle_run.add_argument("bundle", help="bundle folder (configs/metadata.json and configs/CONFIG.{json,yaml}) or bundle zip")
    bundle_run.add_argument("--config", default="inference", help="config name in BUNDLE/configs (default: inference)")
    bundle_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value, e.g. --set dataset_dir=/data/Task09_Spleen")
    bundle_run.add_argument("--weights", help="weights file for the config's CheckpointLoader(s); nothing is downloaded")
    bundle_run.add_argument("--safe", action="store_true",
                            help="refuse $ expressions and _target_s outside monai/torch/ignite/voxpipe/numpy "
                            "(a bundle is code; see README, Bundles)")
    bundle_run.set_defaults(func=_cmd_bundle_run)
    bundle_validate = bundle_actions.add_parser(
        "validate", help="report every problem of a bundle at once (syntax, references, targets, arguments, "
        "properties, metadata schema) without running it; exit 2 on any"
    )
    bundle_validate.add_argument("bundle", help="bundle folder")
    bundle_validate.set_defaults(func=_cmd_bundle_validate)
    bundle_export = bundle_actions.add_parser(
        "export", help="package configs, docs and trained weights as a bundle zip (checksums in metadata.json)"
    )
    bundle_export.add_argument("bundle", help="bundle folder")
    bundle_export.add_argument("-o", "--output", required=True, help="zip file to write")
    bundle_export.add_argument("--weights", help="trained weights (default: BUNDLE/models/model.pt)")
    bundle_export.add_argument("--name", help="bundle folder name inside the zip (default: the folder's name)")
    bundle_export.set_defaults(func=_cmd_bundle_export)
