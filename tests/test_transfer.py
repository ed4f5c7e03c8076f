"""Transfer learning: prefix styles, class-count changes, the loaded/skipped/missing report, freezing."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import SMALL

from voxpipe.cli import main
from voxpipe.errors import InputError
from voxpipe.networks import build_network, list_networks, network_spec
from voxpipe.networks.transfer import freeze, load_weights, parameter_groups, read_state_dict
from voxpipe.pipelines.training.trainer import build_optimizer


def small_kwargs(name: str) -> dict:
    return dict(SMALL[name])


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="raw"),
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="module."),
        pytest.param(lambda s: {f"model.{k}": v for k, v in s.items()}, id="model."),
        pytest.param(lambda s: {"state_dict": {f"net.{k}": v for k, v in s.items()}}, id="state_dict/net."),
        pytest.param(
            lambda s: {"network": s, "optimizer": {"state": {}, "param_groups": []}}, id="voxpipe-checkpoint"
        ),
    ],
)
def test_prefix_styles_load_every_tensor(tmp_path, wrap):
    source = build_network("segresnet", out_channels=3, init_filters=8)
    torch.save(wrap(source.state_dict()), tmp_path / "w.pt")
    target = build_network("segresnet", out_channels=3, init_filters=8)
    report = load_weights(target, tmp_path / "w.pt", strict=True)
    assert len(report.loaded) == len(source.state_dict()) and not report.skipped and not report.missing
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_monai_unet_keeps_its_own_model_prefix(tmp_path):
    # MONAI's UNet names its parameters "model.…": stripping must not break them.
    source = build_network("unet3d", out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.pt")
    target = build_network("unet3d", out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    report = load_weights(target, tmp_path / "w.pt", strict=True)
    assert report.stripped == {"module.": len(source.state_dict())}


@pytest.mark.parametrize("name", sorted(list_networks()))
def test_class_count_change_skips_only_the_head(name):
    spec = network_spec(name)
    source = build_network(name, out_channels=3, **small_kwargs(name))
    target = build_network(name, out_channels=2, **small_kwargs(name))
    report = load_weights(target, source.state_dict())
    assert report.skipped, "a new class count must change the head"
    assert all(any(re.search(p, k) for p in spec.head) for k in report.skipped), sorted(report.skipped)
    assert not report.missing and not report.unexpected
    loaded = dict(target.state_dict())
    for key in report.loaded:
        assert torch.equal(loaded[key], source.state_dict()[key])


@pytest.mark.parametrize("name", sorted(list_networks()))
def test_freeze_encoder_and_backbone(name):
    network = build_network(name, **small_kwargs(name))
    encoder = set(freeze(network, name, "encoder"))
    assert encoder and all(not p.requires_grad for n, p in network.named_parameters() if n in encoder)
    network = build_network(name, **small_kwargs(name))
    backbone = set(freeze(network, name, "backbone"))
    trainable = [n for n, p in network.named_parameters() if p.requires_grad]
    assert encoder <= backbone and trainable, "feature extraction leaves exactly the head trainable"


def test_freeze_by_module_name_and_bad_name():
    network = build_network("segresnet", init_filters=8)
    frozen = freeze(network, "segresnet", ["convInit", "down_layers.0"])
    assert frozen and all(n.startswith(("convInit.", "down_layers.0.")) for n in frozen)
    with pytest.raises(InputError, match="top-level modules"):
        freeze(network, "segresnet", "encoderr")


def test_parameter_groups_and_optimizer_lower_the_pretrained_rate(tmp_path):
    source = build_network("segresnet", out_channels=3, init_filters=8)
    torch.save(source.state_dict(), tmp_path / "liver.pt")
    network = build_network(
        "segresnet", out_channels=2, init_filters=8, weights=tmp_path / "liver.pt", freeze="encoder"
    )
    optimizer = build_optimizer(network=network, lr=1e-3, pretrained_lr_scale=0.1)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {"pretrained": pytest.approx(1e-4), "new": pytest.approx(1e-3)}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in in_optimizer for p in network.parameters() if not p.requires_grad)
    head = [g for g in parameter_groups(network, lr=1.0, pretrained=[]) if g["name"] == "new"]
    assert len(head[0]["params"]) == sum(p.requires_grad for p in network.parameters())


def test_pickled_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"network": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="pickled reference to"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_unrelated_weights_and_strict_mismatch_are_clear_errors(tmp_path):
    torch.save(build_network("densenet121").state_dict(), tmp_path / "d.pt")
    with pytest.raises(InputError, match="no tensor with a matching name"):
        load_weights(build_network("segresnet", init_filters=8), tmp_path / "d.pt")
    torch.save(build_network("segresnet", out_channels=3, init_filters=8).state_dict(), tmp_path / "s.pt")
    with pytest.raises(InputError, match="strict loading failed"):
        load_weights(
            build_network("segresnet", out_channels=2, init_filters=8), tmp_path / "s.pt", strict=True
        )
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        read_state_dict(tmp_path / "junk.pt")


def test_networks_load_cli_reports_reuse(tmp_path, capsys):
    torch.save(
        {"network": build_network("segresnet", out_channels=3, init_filters=8).state_dict()},
        tmp_path / "w.pt",
    )
    argv = [
        "networks",
        "load",
        "segresnet",
        str(tmp_path / "w.pt"),
        "--set",
        "out_channels=2",
        "--set",
        "init_filters=8",
        "--freeze",
        "encoder",
        "--report",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "loaded 81/83 tensors, skipped 2 (shape)" in out and "conv_final.2.conv.weight" in out
    assert json.loads((tmp_path / "r.json").read_text())["skipped"]["conv_final.2.conv.bias"] == {
        "checkpoint": [3],
        "network": [2],
    }
