"""The ``voxpipe`` command: parse arguments, call one pipeline function, map errors to exit codes.

The verbs live in one module per group (:mod:`~voxpipe.cli.demo`, ``train``, ``bundle``, ``infer``,
``models``, ``networks``, ``evaluate``, ``data``, ``plan``, ``serve``, ``annotate``), each with an ``add_commands`` that registers them here.

Exit codes: 0 success, 2 the user's or the machine's problem (a :class:`voxpipe.errors.UserError`: the message names the
file and the problem), 1 internal failure. No traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from voxpipe import __version__
from voxpipe.cli import annotate, bundle, data, demo, evaluate, infer, models, networks, plan, serve, train
from voxpipe.errors import VoxpipeError


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # MONAI and Ignite log every engine event at INFO; show them only with -v.
    noisy = logging.INFO if verbose else logging.WARNING
    for name in ("ignite", "monai", "py.warnings"):
        logging.getLogger(name).setLevel(noisy)
    # Ignite logs an engine's exception in full before re-raising it; the CLI reports it in one line.
    logging.getLogger("ignite.engine").setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``voxpipe`` parser; each verb group's module registers its own commands."""
    parser = argparse.ArgumentParser(
        prog="voxpipe",
        description="3D CT/MRI segmentation from file to trustworthy results (MONAI + PyTorch + Ignite).",
        epilog="Exit codes: 0 success, 2 bad input, 1 internal failure. Run 'voxpipe COMMAND --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"voxpipe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (MONAI/Ignite events)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb_group in (demo, train, bundle, infer, models, networks, evaluate, data, plan, serve, annotate):
        verb_group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_runner_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.runner_arguments = extra  # `voxpipe bundle run B --key value`, as MONAI's runner takes them
    args.argv = list(sys.argv[1:] if argv is None else argv)  # (infer --devices runs it again per device)
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except VoxpipeError as error:
        if args.debug:
            raise
        print(f"voxpipe: error: {error}", file=sys.stderr)
        if error.hint:
            print(f"voxpipe: hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("voxpipe: interrupted", file=sys.stderr)
        return 130
    except (
        OSError
    ) as error:  # a full disk, no permission, a folder where a file should be: the machine's problem
        if args.debug:
            raise
        where = f"{error.filename!r}: " if getattr(error, "filename", None) else ""
        print(f"voxpipe: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except Exception as error:  # anything unexpected is our bug: one line, exit 1
        if args.debug:
            raise
        print(
            f"voxpipe: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
