"""The ``voxpipe`` command: one module per verb group, each parsing arguments and calling one pipeline function.
May import everything else in voxpipe; nothing imports it (``python -m voxpipe.cli`` runs :func:`main`).
"""

from __future__ import annotations

from voxpipe.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
