"""``voxpipe train``: run a bundle's train config (resume, overrides)."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.bundle import config_names
from voxpipe.cli.common import quiet_monai_bundle


def _fold_worker() -> tuple[int, int] | None:
    """Under torchrun: this rank's share of the folds, on its own GPU, trained as a single process.

    The folds are independent, so each rank trains its own without joining a process group: the
    torchrun variables that would make the bundle start data-parallel training are removed here.
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    for name in (
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        os.environ.pop(name, None)
    return rank, world


def _cmd_train(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.bundles.run import run_bundle

    quiet_monai_bundle(args.verbose)
    overrides = parse_overrides(args.set)
    if args.folds:
        from voxpipe.pipelines.evaluation.crossval import train_folds

        record = train_folds(
            args.bundle, folds=args.folds, overrides=overrides, resume=args.resume, worker=_fold_worker()
        )
        print(
            f"wrote {record} (out-of-fold probabilities in fold_*/validation/; compare runs with voxpipe select)"
        )
        return 0
    if args.resume:
        overrides["resume"] = True
    run_bundle(args.bundle, config=config_names(args.config, "train"), overrides=overrides)
    return 0


def add_commands(commands: Any) -> None:
    """Register ``train`` on the top-level subparsers."""
    train = commands.add_parser("train", help="train a bundle (MONAI bundle format)")
    train.add_argument("bundle", help="bundle folder, e.g. configs/liver_ct_segresnet")
    train.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help="config name in BUNDLE/configs (default: train); several are merged in order",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set dataset_dir=/data/Task03_Liver --set max_epochs=50",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/checkpoints/last.pt (weights, optimizer, scheduler, epoch, "
        "best metric, RNG states); starts from epoch 1 if there is none",
    )
    train.add_argument(
        "--folds",
        metavar="all|K,K...",
        help="cross-validation: train these folds of the config's k-fold split_file one after the other "
        "(OUTPUT_DIR/fold_K each, resumable), then predict each fold's validation cases with "
        "probabilities (fold_K/validation/); finished folds are skipped; OUTPUT_DIR/cv.json lists them. "
        "Under torchrun --nproc_per_node=N each rank trains every N-th fold on its own GPU",
    )
    train.set_defaults(func=_cmd_train)
