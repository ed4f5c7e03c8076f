"""A bundle selects any registered segmentation network by name; a liver model fine-tunes into a lung model."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from conftest import TINY_MODEL
from helpers import SMALL

from voxpipe.networks import list_networks, network_spec
from voxpipe.phantoms.ct import write_msd_dataset
from voxpipe.pipelines.bundles.run import run_bundle

SEGMENTATION = sorted(n for n in list_networks() if network_spec(n).task == "segmentation")


@pytest.fixture(scope="module")
def tiny_lung_dataset(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny_lung")
    write_msd_dataset(root, task="lung", n_train=4, n_test=1, seed=3, size="tiny")
    return root


def _train(bundle, dataset, output, **overrides):
    values = {
        "dataset_dir": str(dataset),
        "output_dir": str(output),
        "max_epochs": 1,
        "val_interval": 1,
        **TINY_MODEL,
    }
    run_bundle(bundle, config="train", overrides={**values, **overrides})
    return list(csv.DictReader(open(output / "metrics.csv")))


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTATION)
def test_liver_bundle_trains_any_segmentation_network(name, liver_bundle, tiny_liver_dataset, tmp_path):
    kwargs = dict(SMALL[name])
    patch = [64, 64, 64] if network_spec(name).min_size >= 64 else [32, 32, 16]
    if network_spec(name).fixed_size:
        kwargs["img_size"] = patch
    if name == "dynunet":  # deep supervision on: the bundle's DeepSupervisionLoss weighs every scale
        kwargs.update(deep_supervision=True, deep_supr_num=2)
    network_def = {
        "_target_": "voxpipe.networks.build_network",
        "name": name,
        "out_channels": "@num_classes",
        **kwargs,
    }
    rows = _train(liver_bundle, tiny_liver_dataset, tmp_path, network_def=network_def, patch_size=patch)
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_mean_dice"]) <= 1.0
    assert (tmp_path / "models" / "model_final.pt").is_file()


@pytest.mark.slow
def test_liver_model_fine_tunes_into_a_lung_model(
    liver_bundle, tiny_liver_dataset, tiny_lung_dataset, tmp_path, caplog
):
    _train(liver_bundle, tiny_liver_dataset, tmp_path / "liver")
    liver_weights = tmp_path / "liver" / "models" / "model_final.pt"
    with caplog.at_level(logging.INFO, logger="voxpipe.networks.transfer"):
        rows = _train(
            liver_bundle,
            tiny_lung_dataset,
            tmp_path / "lung",
            num_classes=2,
            label_names=["tumour"],
            hu_window=[-1000, 400],
            pretrained_weights=str(liver_weights),
            freeze="encoder",
            pretrained_lr_scale=0.1,
        )
    report = "\n".join(r.getMessage() for r in caplog.records)
    assert "loaded 81/83 tensors, skipped 2 (shape)" in report, report
    assert "skipped conv_final.2.conv.weight: checkpoint [3, 8, 1, 1, 1] vs network [2, 8, 1, 1, 1]" in report
    assert "froze 58 parameter tensors (encoder)" in report
    assert "val_tumour" in rows[0]
    liver = torch.load(liver_weights, weights_only=True)
    lung = torch.load(tmp_path / "lung" / "models" / "model_final.pt", weights_only=True)
    assert torch.equal(liver["convInit.conv.weight"], lung["convInit.conv.weight"]), (
        "frozen encoder must not change"
    )
    assert not torch.equal(liver["up_layers.0.0.conv1.conv.weight"], lung["up_layers.0.0.conv1.conv.weight"])
    assert lung["conv_final.2.conv.weight"].shape[0] == 2
