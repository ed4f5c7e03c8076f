"""MkDocs hook: the CLI reference page is generated from voxpipe's own argparse parsers at build time,
so it cannot drift from ``voxpipe --help``. A page holding the marker ``<!-- voxpipe-cli -->`` gets,
for every verb and sub-verb, its ``--help`` text."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- voxpipe-cli -->"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _render(parser: argparse.ArgumentParser, path: list[str], level: int) -> list[str]:
    name = " ".join(path)
    out = [f"{'#' * level} `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for sub, child in _subcommands(parser):
        out += _render(child, [*path, sub], min(level + 1, 4))
    return out


def cli_reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fixed, so the page is the same everywhere
    from voxpipe.cli.main import build_parser

    parser = build_parser()
    parser.prog = "voxpipe"
    lines = ["```text", parser.format_help().rstrip(), "```", ""]
    for sub, child in _subcommands(parser):
        lines += _render(child, ["voxpipe", sub], 2)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
