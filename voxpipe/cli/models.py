"""``voxpipe models list|info|pull``: public models (TotalSegmentator's, the Model Zoo's) in a local cache."""

from __future__ import annotations

import argparse
from typing import Any


def cache_folder(args: argparse.Namespace) -> Any:
    """``--models-cache``, else ``$VOXPIPE_MODELS``, else the user's cache folder."""
    from pathlib import Path

    from voxpipe.pipelines.inference.catalogue import default_cache

    return Path(args.models_cache) if getattr(args, "models_cache", None) else default_cache()


def _cmd_list(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.inference.catalogue import CATALOGUE, pulled

    cache = cache_folder(args)
    print(f"{'name':<28}{'kind':<14}{'pulled':<8}classes")
    from voxpipe.pipelines.inference.totalseg.tasks import OPEN_TASKS, task_names

    licensed = [n for n in task_names() if n not in OPEN_TASKS]
    for name, entry in CATALOGUE.items():
        print(f"{name:<28}{entry.kind:<14}{'yes' if pulled(name, cache) else 'no':<8}{entry.classes}")
    print(
        "TotalSegmentator's other tasks run with `voxpipe infer TASK` when their weights are already in its "
        f"folder (licensed ones from its licence server, {'https://backend.totalsegmentator.com/license-academic/'}): "
        + ", ".join(licensed)
    )
    print(f"cache: {cache}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.inference.catalogue import describe, model

    print(describe(model(args.name), cache_folder(args)))
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.inference.catalogue import pull

    if not args.deadline > 0:
        from voxpipe.errors import InputError

        raise InputError(f"--deadline: expected seconds > 0, found {args.deadline}")
    folder = pull(
        args.name,
        cache_folder(args),
        mirror=args.mirror,
        offline=args.offline,
        weights=args.weights_dir,
        deadline_s=args.deadline,
    )
    print(f"{args.name}: {folder}")
    return 0


def add_cache_option(parser: Any) -> None:
    parser.add_argument(
        "--models-cache",
        metavar="DIR",
        help="where pulled models live (default: $VOXPIPE_MODELS, else ~/.cache/voxpipe/models)",
    )


def add_commands(commands: Any) -> None:
    """Register ``models`` on the top-level subparsers."""
    models = commands.add_parser(
        "models",
        help="public models (TotalSegmentator, Model Zoo): list, describe, download into a cache",
        description="Downloads resume, are complete only at the size the server declares, are hash-checked "
        "(the Model Zoo's published checksums; where the publisher gives none, the SHA-256 of the first "
        "download from the publisher, never a mirror's, is recorded) and unpacked safely; a file that fails "
        "a check is moved aside to <name>.bad. One pull at a time per cache. Offline, copy the file by hand "
        "into <cache>/downloads/. A bundle pulled by name runs in safe mode unless infer --trust-bundle.",
    )
    verbs = models.add_subparsers(dest="models_command", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="the catalogue, and which models are in the cache")
    add_cache_option(listing)
    listing.set_defaults(func=_cmd_list)
    info = verbs.add_parser("info", help="one model: source, licence, classes, size, files and hashes")
    info.add_argument("name")
    add_cache_option(info)
    info.set_defaults(func=_cmd_info)
    pull = verbs.add_parser("pull", help="download, verify and unpack a model into the cache")
    pull.add_argument("name")
    pull.add_argument(
        "--mirror", metavar="URL", help="fetch <URL>/<file name> instead of the publisher's URL"
    )
    pull.add_argument("--offline", action="store_true", help="use only files already in <cache>/downloads/")
    pull.add_argument(
        "--deadline",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="give up on one file after this long, keeping its .part to resume (default 3600)",
    )
    pull.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="TotalSegmentator's tasks: unpack into this weights folder (default: TotalSegmentator's own, "
        "$TOTALSEG_WEIGHTS_PATH, else $TOTALSEG_HOME_DIR/nnunet/results, else ~/.totalsegmentator/nnunet/results)",
    )
    add_cache_option(pull)
    pull.set_defaults(func=_cmd_pull)
