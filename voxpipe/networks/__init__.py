"""Networks by name: ``build_network("segresnet", ...)`` for bundles and code alike."""

from __future__ import annotations

from voxpipe.networks.registry import build_network, list_networks

__all__ = ["build_network", "list_networks"]
