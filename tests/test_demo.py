"""A reduced demo runs end to end: phantoms, training, inference, evaluation, all files in one folder."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from voxpipe.pipelines.demo import DemoSettings, run_demo


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end(tmp_path):
    settings = DemoSettings(
        output_dir=tmp_path,
        n_train=3,
        n_test=2,
        max_epochs=1,
        val_interval=1,
        patch_size=(32, 32, 16),
        init_filters=8,
        phantom_size="tiny",
        progress=False,
    )
    result = run_demo(settings)
    assert [r["case"] for r in result.evaluation.rows] == ["liver_003", "liver_004"]
    assert all(r["status"] == "ok" for r in result.evaluation.rows)
    assert set(result.seconds) == {"phantoms", "data check", "training", "inference", "evaluation"}
    assert (result.output_dir / "data_check.json").is_file()
    rows = list(csv.DictReader(open(result.evaluation.per_case_csv)))
    assert len(rows) == 2 and "dice_liver" in rows[0]
    for case in ("liver_003", "liver_004"):
        image = nib.load(result.dataset_dir / "imagesTs" / f"{case}.nii.gz")
        pred = nib.load(result.prediction_dir / f"{case}.nii.gz")
        assert pred.shape == image.shape and np.array_equal(pred.affine, image.affine)
    assert (result.run_dir / "metrics.csv").is_file() and (result.run_dir / "models" / "model.pt").is_file()


@pytest.mark.parametrize("native", [False, True])
def test_demo_trains_in_bf16_only_where_the_cpu_runs_it_natively(tmp_path, monkeypatch, native):
    """Emulated bf16 (AVX2-only CPUs) made an epoch ~50× slower; the demo asks the CPU first."""
    import voxpipe.pipelines.demo as demo

    seen = {}

    class Stop(Exception):
        pass

    def run_bundle(bundle, *, config, overrides):
        seen.update(overrides)
        raise Stop

    monkeypatch.setattr(demo, "cpu_bf16_supported", lambda: native)
    monkeypatch.setattr(demo, "run_bundle", run_bundle)
    settings = DemoSettings(output_dir=tmp_path, n_train=3, n_test=1, phantom_size="tiny", progress=False)
    with pytest.raises(Stop):
        run_demo(settings)
    assert seen["cpu_bf16"] is native
    with pytest.raises(Stop):  # an explicit choice is kept
        run_demo(
            DemoSettings(output_dir=tmp_path / "b", n_train=3, n_test=1, phantom_size="tiny", cpu_bf16=True)
        )
    assert seen["cpu_bf16"] is True


@pytest.mark.parametrize("native", [False, True])
def test_training_warns_when_cpu_bf16_would_be_emulated(tmp_path, monkeypatch, caplog, native):
    import torch

    import voxpipe.pipelines.training.trainer as trainer

    monkeypatch.setattr(trainer, "cpu_bf16_supported", lambda: native)
    network = torch.nn.Conv3d(1, 2, 1)
    with caplog.at_level("WARNING"):
        trainer.build_trainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[],
            network=network,
            optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
            loss_function=torch.nn.MSELoss(),
            output_dir=tmp_path,
            cpu_bf16=True,
            tensorboard=False,
            plot=False,
            progress=False,
        )
    assert ("no native bf16" in caplog.text) is not native
