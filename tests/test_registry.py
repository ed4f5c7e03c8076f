"""The network registry builds by name and answers typos with the valid names."""

from __future__ import annotations

import pytest
import torch

from voxpipe.errors import InputError
from voxpipe.networks import build_network, list_networks


@pytest.mark.parametrize("name", sorted(list_networks()))
def test_every_network_builds_and_keeps_the_shape_contract(name):
    network = build_network(name, out_channels=3)
    x = torch.randn(1, 1, 32, 32, 32)
    out = network(x)
    assert out.shape == (1, 3, 32, 32, 32)
    out.mean().backward()
    assert any(p.grad is not None for p in network.parameters())


def test_unknown_network_suggests_a_close_name():
    with pytest.raises(InputError, match="did you mean 'segresnet'"):
        build_network("segresnt")
    with pytest.raises(InputError, match="bad arguments"):
        build_network("segresnet", not_an_argument=1)
