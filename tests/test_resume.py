"""Full resume after a crash and seeded determinism, through the liver bundle on tiny phantoms."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_MODEL

from voxpipe.pipelines.bundles.run import run_bundle


def _losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(open(run / "metrics.csv"))]


def _train_command(dataset: Path, run: Path, *extra: str) -> list[str]:
    settings = {
        "dataset_dir": dataset,
        "output_dir": run,
        "max_epochs": 4,
        "val_interval": 2,
        "patch_size": "[32,32,16]",
        "network_def#init_filters": 8,
        "progress": "false",
        "tensorboard": "false",
    }
    command = [sys.executable, "-m", "voxpipe.cli", "train", str(REPO / "configs" / "liver_ct_segresnet")]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command + list(extra)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "tests"),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_liver_dataset, tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    done = subprocess.run(
        _train_command(tiny_liver_dataset, whole), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # 3 training cases, batch 1: 3 iterations per epoch; iteration 8 is the middle of epoch 3.
    marker = tmp_path / "paused"
    pause = f"train#handlers=[{{_target_: helpers.PauseAt, iteration: 8, marker: '{marker}'}}]"
    process = subprocess.Popen(
        _train_command(tiny_liver_dataset, crashed, "--set", pause),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.read_text() == "epoch 3 iteration 8"
    assert [int(r["epoch"]) for r in csv.DictReader(open(crashed / "metrics.csv"))] == [1, 2]
    assert not (crashed / "models" / "model_final.pt").exists()

    resumed = subprocess.run(
        _train_command(tiny_liver_dataset, crashed, "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 2 of 4 done" in resumed.stderr
    rows = list(csv.DictReader(open(crashed / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # Same seed on the CPU: the resumed run is the uninterrupted run, bit for bit.
    assert _losses(crashed) == _losses(whole)
    assert [r["val_mean_dice"] for r in rows] == [
        r["val_mean_dice"] for r in csv.DictReader(open(whole / "metrics.csv"))
    ]
    final_whole = torch.load(whole / "models" / "model_final.pt", weights_only=True)
    final_resumed = torch.load(crashed / "models" / "model_final.pt", weights_only=True)
    assert all(torch.equal(final_whole[k], final_resumed[k]) for k in final_whole)
    best_whole = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)["best"]
    assert torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)["best"] == best_whole


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_gives_identical_loss_sequences(tiny_liver_dataset, tmp_path, num_workers):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run_bundle(
            REPO / "configs" / "liver_ct_segresnet",
            overrides={
                "dataset_dir": str(tiny_liver_dataset),
                "output_dir": str(run),
                "max_epochs": 2,
                "val_interval": 2,
                "num_workers": num_workers,
                "tensorboard": False,
                **TINY_MODEL,
            },
        )
        runs.append(_losses(run))
    assert runs[0] == runs[1] and len(runs[0]) == 2
    other_seed = tmp_path / "c"
    run_bundle(
        REPO / "configs" / "liver_ct_segresnet",
        overrides={
            "dataset_dir": str(tiny_liver_dataset),
            "output_dir": str(other_seed),
            "max_epochs": 2,
            "val_interval": 2,
            "num_workers": num_workers,
            "tensorboard": False,
            "seed": 1,
            **TINY_MODEL,
        },
    )
    assert _losses(other_seed) != runs[0]


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_from_epoch_one(tiny_liver_dataset, tmp_path, caplog):
    caplog.set_level("INFO")
    run_bundle(
        REPO / "configs" / "liver_ct_segresnet",
        overrides={
            "dataset_dir": str(tiny_liver_dataset),
            "output_dir": str(tmp_path),
            "max_epochs": 1,
            "resume": True,
            "tensorboard": False,
            **TINY_MODEL,
        },
    )
    assert "no checkpoint" in caplog.text and len(_losses(tmp_path)) == 1
