"""Networks by name: ``build_network("segresnet", ...)`` for bundles and code alike; transfer and export.
A building block: may import voxpipe.transforms (io) and errors, never voxpipe.pipelines or voxpipe.cli.
"""

from __future__ import annotations

from voxpipe.networks.registry import (
    NetworkCost,
    NetworkSpec,
    build_network,
    list_networks,
    network_cost,
    network_spec,
)

__all__ = ["NetworkCost", "NetworkSpec", "build_network", "list_networks", "network_cost", "network_spec"]
