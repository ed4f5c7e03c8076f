"""Trainer pieces: the CPU bf16 wrapper, the epoch summary CSV, the optimizer builder."""

from __future__ import annotations

import csv

import pytest
import torch
from ignite.engine import Engine

from voxpipe.errors import InputError
from voxpipe.networks import build_network
from voxpipe.pipelines.train import CpuBf16Autocast, EpochSummary, batch_loss, build_optimizer


def test_cpu_bf16_wrapper_returns_float32_and_trains_the_wrapped_weights():
    network = build_network("segresnet", out_channels=3, init_filters=8)
    wrapped = CpuBf16Autocast(network)
    x = torch.randn(1, 1, 32, 32, 16)
    out = wrapped(x)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 32, 16)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    out.mean().backward()
    assert network.convInit.conv.weight.grad is not None
    # Close to the float32 forward pass (bf16 has ~3 significant digits).
    assert torch.allclose(out, network(x), atol=0.1)


def test_epoch_summary_writes_one_row_per_epoch(tmp_path):
    losses = iter([1.0, 3.0, 0.5, 0.5])
    engine = Engine(lambda e, batch: [{"loss": torch.tensor(next(losses))}])
    EpochSummary(tmp_path).attach(engine)
    engine.run([0, 1], max_epochs=2)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["loss"]) for r in rows] == [2.0, 0.5]
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_batch_loss_reads_decollated_and_plain_outputs():
    assert batch_loss([{"loss": torch.tensor(0.25)}, {"loss": torch.tensor(0.25)}]) == 0.25
    assert batch_loss({"loss": 1.5}) == 1.5


def test_build_optimizer_skips_frozen_parameters_and_names_bad_choices():
    network = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    network[0].weight.requires_grad_(False)
    optimizer = build_optimizer(network=network, name="adamw", lr=0.01)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 3
    with pytest.raises(InputError, match="'adamx'"):
        build_optimizer(network=network, name="adamx")
