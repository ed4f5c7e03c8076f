"""``voxpipe serve``: a DICOM node next to a PACS (receive CT series, send DICOM-SEG + SR back)."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.common import quiet_monai_bundle


def share_threads(workers: int) -> None:
    """Give each of ``workers`` networks an equal share of the CPU threads: torch's intra-op pool is per process, and
    ``workers`` networks each using every core would fight over them. Process-wide: set here, by the command, not by the library."""
    import logging
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    torch.set_num_threads(threads)
    logging.getLogger(__name__).info(
        "%d workers on %d cores: %d CPU thread(s) per network", workers, cores, threads
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from voxpipe.errors import InputError

    if args.status:
        from voxpipe.pipelines.deploy.jobs import JobStore, format_status

        if args.bundle is not None:
            raise InputError(
                f"--status: expected only the work folder, found a bundle argument too ({args.bundle!r})"
            )
        print(format_status(JobStore(args.status, create=False)))
        return 0
    if args.bundle is None:
        raise InputError("serve: expected a bundle folder (or --status WORKDIR), found none")
    from pathlib import Path

    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.deploy.node import DicomNode
    from voxpipe.pipelines.inference.catalogue import CATALOGUE
    from voxpipe.pipelines.inference.totalseg.tasks import is_task

    if not Path(args.bundle).exists() and args.bundle in CATALOGUE and not is_task(args.bundle):
        from voxpipe.cli.infer import _pulled_model

        args.model = args.bundle
        args.bundle = str(_pulled_model(args))  # a pulled catalogue model, as `voxpipe infer NAME` finds it

    quiet_monai_bundle(args.verbose)
    if args.workers > 1:
        share_threads(args.workers)
    node = DicomNode(
        args.bundle,
        workdir=args.workdir,
        ae_title=args.ae_title,
        port=args.port,
        bind=args.bind,
        send_to=args.send_to,
        allow_aet=args.allow_aet,
        idle=args.idle,
        weights=args.weights,
        overrides=parse_overrides(args.set),
        trust_bundle=args.trust_bundle,
        dicomweb=args.dicomweb,
        poll=args.poll,
        retry=args.retry,
        workers=args.workers,
    )
    node.serve_forever()
    return 0


def add_commands(commands: Any) -> None:
    """Register ``serve`` on the top-level subparsers."""
    serve = commands.add_parser(
        "serve",
        help="DICOM node: segment the CT series a PACS sends, send DICOM-SEG + SR back",
        description="A Storage SCP receives series (C-STORE); a series with no new instance for --idle seconds is "
        "queued on disk, segmented with the bundle's inference, and a DICOM-SEG plus a TID 1500 SR "
        "(volumes, mean HU on CT, lesion count, largest diameter) are sent to --send-to. With --dicomweb URL the node polls "
        "QIDO-RS, fetches with WADO-RS and stores with STOW-RS instead. Runs until Ctrl-C or SIGTERM; "
        "after a kill, restarting on the same --workdir finishes what was left.",
    )
    serve.add_argument(
        "bundle",
        nargs="?",
        metavar="MODEL",
        help="what segments each series, as `voxpipe infer` names it: a bundle folder (weights from "
        "BUNDLE/models/model.pt unless --weights), an nnU-Net model folder, a TotalSegmentator task "
        "(total, ...: from its weights folder, as TotalSegmentator runs it) or a pulled catalogue model",
    )
    from voxpipe.cli.models import add_cache_option

    add_cache_option(serve)
    serve.add_argument(
        "--send-to",
        metavar="AET@HOST:PORT",
        help="where results are sent by C-STORE (e.g. ORTHANC@127.0.0.1:4242)",
    )
    serve.add_argument("--ae-title", default="VOXPIPE", help="this node's AE title (default VOXPIPE)")
    serve.add_argument(
        "--port", type=int, default=11112, help="port the Storage SCP listens on (default 11112)"
    )
    serve.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    serve.add_argument(
        "--allow-aet",
        action="append",
        default=[],
        metavar="AET",
        help="calling AE title allowed to send (repeatable; default: the AE title of --send-to)",
    )
    serve.add_argument(
        "--workdir", default="voxpipe-node", help="the node's folder: instances, job queue, results, node.log"
    )
    serve.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="seconds without a new instance after which a series is complete (default 5)",
    )
    serve.add_argument("--weights", help="network weights file (default: BUNDLE/models/model.pt)")
    serve.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an inference config value"
    )
    serve.add_argument(
        "--trust-bundle",
        action="store_true",
        help="run the bundle's own code (default: safe mode, as `voxpipe bundle run --safe`)",
    )
    serve.add_argument(
        "--dicomweb",
        metavar="URL",
        help="DICOMweb base URL to poll (QIDO-RS), fetch from (WADO-RS) and, "
        "without --send-to, store results to (STOW-RS); no Storage SCP is started",
    )
    serve.add_argument("--poll", type=float, default=10.0, help="seconds between DICOMweb polls (default 10)")
    serve.add_argument(
        "--retry",
        type=float,
        default=30.0,
        help="seconds before a failed delivery is tried again (default 30)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="series segmented at once (default 1, at most 8); each worker loads its own network at "
        "start-up, and the CPU threads are shared out between them",
    )
    serve.add_argument("--status", metavar="WORKDIR", help="list the jobs of a node's work folder and exit")
    serve.set_defaults(func=_cmd_serve)
