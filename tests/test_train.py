"""Trainer pieces: the CPU bf16 wrapper, the epoch summary CSV, the optimizer builder."""

from __future__ import annotations

import csv

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator

from voxpipe.errors import InputError
from voxpipe.networks import build_network
from voxpipe.pipelines.training.handlers import EpochSummary, NanGuard, TrainingDiverged, batch_loss
from voxpipe.pipelines.training.trainer import (
    CpuBf16Autocast,
    DeepSupervisionLoss,
    build_optimizer,
    build_scheduler,
    build_trainer,
    clip_gradients,
)


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


def test_nan_guard_stops_with_epoch_iteration_and_a_hint():
    losses = iter([0.5, float("nan"), 0.1])
    engine = Engine(lambda e, batch: {"loss": torch.tensor(next(losses))})
    NanGuard().attach(engine)
    with pytest.raises(TrainingDiverged, match="found nan at epoch 1, iteration 2") as caught:
        engine.run([0, 1, 2], max_epochs=1)
    assert "grad_clip" in caught.value.hint


def test_gradient_clipping_bounds_the_norm_seen_by_the_step():
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    clip_gradients(optimizer, max_norm=0.5)
    before = [p.detach().clone() for p in layer.parameters()]
    (1000 * layer(torch.ones(1, 4))).sum().backward()
    optimizer.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, layer.parameters(), strict=True)])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)  # lr 1: the step is the clipped gradient
    with pytest.raises(InputError, match="grad_clip"):
        clip_gradients(optimizer, max_norm=0)


def test_deep_supervision_loss_takes_lists_stacked_and_plain_outputs():
    loss = DeepSupervisionLoss(torch.nn.MSELoss(), weight_mode="same")
    target = torch.rand(2, 1, 8, 8, 8)
    plain = torch.rand(2, 1, 8, 8, 8)
    assert loss(plain, target) == torch.nn.functional.mse_loss(plain, target)
    stacked = torch.stack([plain, plain + 1], dim=1)  # DynUNet: (B, S, C, X, Y, Z)
    expected = torch.nn.functional.mse_loss(plain, target) + torch.nn.functional.mse_loss(
        plain + 1, target
    )  # weights 1, 1
    assert loss(stacked, target) == pytest.approx(expected.item(), rel=1e-6)
    scales = [plain, torch.rand(2, 1, 4, 4, 4)]  # SegResNetDS: a list at decreasing size
    assert torch.isfinite(loss(scales, target))


@pytest.mark.parametrize(
    "name,epoch3", [("cosine", 0.5), ("poly", 0.5**0.9), ("warmup_cosine", 0.5), ("constant", 1.0)]
)
def test_schedules_by_name(name, epoch3):
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = build_scheduler(
        optimizer=optimizer, name=name, max_epochs=6 if name != "warmup_cosine" else 5, warmup_epochs=1
    )
    for _ in range(3):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(epoch3, abs=1e-6)
    with pytest.raises(InputError, match="'step'"):
        build_scheduler(optimizer=optimizer, name="step", max_epochs=3)


class _Scripted(Metric):
    """A validation 'metric' that returns the next of a fixed sequence at each validation."""

    def __init__(self, values):
        self.values = iter(values)
        super().__init__()

    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        return next(self.values)


def test_early_stopping_and_best_model_follow_the_validation_metric(tmp_path):
    network = torch.nn.Conv3d(1, 2, 1)
    data = [{"image": torch.rand(1, 1, 4, 4, 4), "label": torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)}]
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=data,
        network=network,
        key_val_metric={"score": _Scripted([0.5, 0.6, 0.4, 0.3, 0.2, 0.9])},
    )
    trainer = build_trainer(
        device="cpu",
        max_epochs=6,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=lambda out, label: out.mean() * 0,
        output_dir=tmp_path,
        evaluator=evaluator,
        early_stop_patience=2,
        tensorboard=False,
        progress=False,
    )
    trainer.run()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["val_score"]) for r in rows] == [
        0.5,
        0.6,
        0.4,
        0.3,
    ]  # two validations without improvement
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["best"] == {"best": 0.6, "best_epoch": 2} and saved["early_stop"]["counter"] == 2
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "progress.png").is_file()
