"""The network registry builds every network by name, keeps its shape contract, and reports cost."""

from __future__ import annotations

import pytest
import torch

from voxpipe.cli import main
from voxpipe.errors import InputError
from voxpipe.networks import build_network, list_networks, network_cost, network_spec


@pytest.mark.parametrize("name", sorted(list_networks()))
def test_every_network_trains_one_step_and_keeps_its_shape_contract(name):
    spec = network_spec(name)
    size = max(32, spec.divisor, spec.min_size)
    out_channels = 3 if spec.task == "segmentation" else 2
    kwargs = {"img_size": (size,) * 3} if spec.fixed_size else {}
    network = build_network(name, out_channels=out_channels, **kwargs)
    batch = 2 if size < 64 else 1  # a 64³ transformer step takes tens of seconds on two cores per item
    x = torch.randn(batch, 1, size, size, size)
    out = network(x)
    first = out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: full scale first
    expected = (
        (batch, out_channels, size, size, size) if spec.task == "segmentation" else (batch, out_channels)
    )
    assert tuple(first.shape) == expected
    first.float().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_unknown_network_suggests_a_close_name():
    with pytest.raises(InputError, match="did you mean 'segresnet'"):
        build_network("segresnt")
    with pytest.raises(InputError, match="bad arguments"):
        build_network("segresnet", not_an_argument=1)


def test_network_cost_counts_parameters_and_flops():
    cost = network_cost("segresnet", size=32, init_filters=8)
    network = build_network("segresnet", init_filters=8)
    assert cost.parameters == sum(p.numel() for p in network.parameters())
    assert cost.gflops > 0
    assert network_cost("segresnet", size=64, init_filters=8).gflops == pytest.approx(
        8 * cost.gflops, rel=0.05
    )


def test_networks_list_cli(capsys):
    assert main(["networks", "list", "--size", "32"]) == 0
    out = capsys.readouterr().out
    for name in list_networks():
        assert name in out
    assert "multiple of 32, at least 64" in out and "img_size (fixed)" in out
