"""Two gloo processes under torchrun train the liver bundle; validation metrics equal one process's."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from voxpipe.pipelines.bundles.config import find_config

SETTINGS = {
    "patch_size": [32, 32, 16],
    "network_def#init_filters": 8,
    "val_fraction": 0.75,
    "val_interval": 1,
}


@pytest.mark.slow
def test_two_gloo_processes_train_and_validate_like_one(liver_bundle, tiny_liver_dataset, tmp_path):
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "voxpipe.cli",
        "train",
        str(liver_bundle),
        "--set",
        f"dataset_dir={tiny_liver_dataset}",
        "--set",
        f"output_dir={run}",
        "--set",
        "max_epochs=2",
        "--set",
        "progress=false",
        *[arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rank 1 of 2 joined the gloo process group" in done.stderr
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # one writer: no duplicated rows

    # The same validation, in this one process, with the weights the last validation used.
    parser = ConfigParser()
    parser.read_config(find_config(liver_bundle, "train"))
    parser.read_meta(liver_bundle / "configs" / "metadata.json")
    parser.update({"bundle_root": str(liver_bundle), "dataset_dir": str(tiny_liver_dataset), **SETTINGS})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(run / "models" / "model_final.pt", weights_only=True))
    assert len(parser.get_parsed_content("validate#dataset")) == 3  # 3 cases on 2 ranks: uneven shards
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert float(rows[-1]["val_mean_dice"]) == pytest.approx(
        float(evaluator.state.metrics["val_mean_dice"]), abs=1e-6
    )
