"""The liver bundle parses, has MONAI's required properties, trains a couple of iterations, and runs
under MONAI's own runner."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL
from monai.bundle import ConfigParser, ConfigWorkflow

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.bundles.config import find_config, parse_overrides
from voxpipe.pipelines.bundles.run import run_bundle


@pytest.mark.parametrize("config,workflow_type", [("train", "train"), ("inference", "infer")])
def test_bundle_configs_parse_and_declare_monai_properties(
    liver_bundle, tiny_liver_dataset, config, workflow_type
):
    workflow = ConfigWorkflow(
        config_file=str(find_config(liver_bundle, config)),
        meta_file=str(liver_bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        dataset_dir=str(tiny_liver_dataset),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("other", ["inference", "evaluate"])
def test_configs_agree_on_model_and_preprocessing(liver_bundle, other):
    train = ConfigParser.load_config_file(find_config(liver_bundle, "train"))
    config = ConfigParser.load_config_file(find_config(liver_bundle, other))
    for key in ("pixdim", "hu_window", "patch_size", "num_classes"):
        assert train[key] == config[key], key
    # Training may start from pretrained weights; the network itself must be the same.
    fine_tuning = ("weights", "freeze")
    assert {k: v for k, v in train["network_def"].items() if k not in fine_tuning} == config["network_def"]
    # Validate on the deployment window grid (inference adds body crop and reduced precision on top).
    window = ("roi_size", "sw_batch_size", "overlap", "mode")
    assert {k: train["validate"]["inferer"][k] for k in window} == {k: config["inferer"][k] for k in window}


@pytest.mark.slow
def test_training_runs_and_writes_checkpoints_and_metrics(liver_bundle, tiny_liver_dataset, tmp_path):
    run_bundle(
        liver_bundle,
        config="train",
        overrides={
            "dataset_dir": str(tiny_liver_dataset),
            "output_dir": str(tmp_path),
            "max_epochs": 2,
            "val_interval": 1,
            **TINY_MODEL,
        },
    )
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"loss", "lr", "val_mean_dice", "val_liver", "val_tumour"} <= set(rows[0])
    assert float(rows[0]["lr"]) == pytest.approx(0.002)  # the lr used during epoch 1
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "model_final.pt").is_file()
    assert (tmp_path / "progress.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer", "best", "summary", "rng"} <= set(last)
    assert last["best"]["best_epoch"] in (1, 2)
    trainer = last["trainer"]  # Ignite stores iteration and epoch length; the epoch follows from them
    assert trainer["iteration"] == 2 * trainer["epoch_length"] and trainer["max_epochs"] == 2


@pytest.mark.slow
def test_monai_runner_trains_the_bundle(liver_bundle, tiny_liver_dataset, tmp_path):
    """`python -m monai.bundle run` (MONAI's own CLI, not voxpipe) runs the training config."""
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(liver_bundle / "configs" / "train.yaml"),
        "--meta_file",
        str(liver_bundle / "configs" / "metadata.json"),
        "--bundle_root",
        str(liver_bundle),
        "--dataset_dir",
        str(tiny_liver_dataset),
        "--output_dir",
        str(tmp_path),
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--patch_size",
        "[32,32,16]",
        "--network_def#init_filters",
        "8",
        "--progress",
        "False",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "models" / "model.pt").is_file()


def test_bundle_errors_name_the_file(liver_bundle, tmp_path):
    with pytest.raises(BundleError, match="configs/ subfolder"):
        run_bundle(tmp_path)
    with pytest.raises(BundleError, match="'nonsense'.*'inference', 'train'"):
        find_config(liver_bundle, "nonsense")
    with pytest.raises(InputError, match=r"absent'.*expected a dataset folder.*found nothing at that path"):
        run_bundle(
            liver_bundle, overrides={"dataset_dir": str(tmp_path / "absent"), "output_dir": str(tmp_path)}
        )


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["max_epochs=3", "patch_size=[64, 64, 32]", "name=segresnet", "lr=1e-3"]) == {
        "max_epochs": 3,
        "patch_size": [64, 64, 32],
        "name": "segresnet",
        "lr": 1e-3,
    }
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["max_epochs"])


def test_training_config_reads_a_saved_split_and_caches_on_disk(liver_bundle, tiny_liver_dataset, tmp_path):
    from voxpipe.pipelines.data.datalists import msd_datalist
    from voxpipe.pipelines.data.splits import make_split, save_split

    split = make_split(msd_datalist(tiny_liver_dataset), folds=2, seed=1)
    save_split(split, tmp_path / "split.json")
    parser = ConfigParser()
    parser.read_config(str(find_config(liver_bundle, "train")))
    parser.update(
        {
            "dataset_dir": str(tiny_liver_dataset),
            "split_file": str(tmp_path / "split.json"),
            "fold": 1,
            "cache": "disk",
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    train, val = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("validate#dataset")
    assert [d["case"] for d in train.data] == split["folds"][1]["train"]
    assert [d["case"] for d in val.data] == split["folds"][1]["val"]
    label = val[0]["label"]
    assert torch.equal(label, label.round()) and set(torch.unique(label).tolist()) <= {0, 1, 2}
    assert any((tmp_path / "cache").iterdir())  # PersistentDataset wrote its cache
