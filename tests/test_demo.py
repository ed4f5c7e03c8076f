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
