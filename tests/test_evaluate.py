"""Evaluation on hand-made masks with known Dice; conventions for empty and missing cases."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from voxpipe.errors import GeometryError, InputError
from voxpipe.metrics import dice
from voxpipe.pipelines.evaluate import evaluate_folders, parse_label_groups
from voxpipe.transforms.io import save_nifti

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def test_dice_on_known_masks():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[:1] = True  # 16 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 16 / 48)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    with pytest.raises(ValueError, match="same shape"):
        dice(a, a[:3])


def test_parse_label_groups():
    assert parse_label_groups("liver=1,tumour=2,liver_total=1+2") == {"liver": (1,), "tumour": (2,), "liver_total": (1, 2)}
    with pytest.raises(InputError, match="'liver'"):
        parse_label_groups("liver")
    with pytest.raises(InputError, match="integer"):
        parse_label_groups("liver=one")


@pytest.fixture()
def folders(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    # case a: liver 2 slabs in ref, 1 in pred (Dice 2/3); tumour absent in both (undefined).
    r = np.zeros((4, 4, 4), np.uint8)
    r[:2] = 1
    p = np.zeros_like(r)
    p[:1] = 1
    save_nifti(r, AFFINE, ref / "a.nii.gz")
    save_nifti(p, AFFINE, pred / "a.nii.gz")
    # case b: perfect liver, tumour of 4 voxels predicted as 2 of them (Dice 4/6).
    r = np.zeros((4, 4, 4), np.uint8)
    r[2:] = 1
    r[3, 0, :] = 2
    p = r.copy()
    p[3, 0, 2:] = 1
    save_nifti(r, AFFINE, ref / "b.nii.gz")
    save_nifti(p, AFFINE, pred / "b.nii.gz")
    # case c: no prediction at all.
    save_nifti(r, AFFINE, ref / "c.nii.gz")
    return pred, ref, tmp_path / "out"


def test_evaluation_csv_and_summary_are_right(folders):
    pred, ref, out = folders
    result = evaluate_folders(pred, ref, labels={"liver": (1,), "tumour": (2,), "liver_total": (1, 2)}, output_dir=out)
    rows = {r["case"]: r for r in csv.DictReader(open(out / "per_case.csv"))}
    assert float(rows["a"]["dice_liver"]) == pytest.approx(2 / 3)
    assert rows["a"]["dice_tumour"] == ""  # both empty: undefined, not 0 or 1
    assert float(rows["b"]["dice_liver"]) == pytest.approx(2 * 28 / (28 + 30))
    assert float(rows["b"]["dice_tumour"]) == pytest.approx(2 * 2 / 6)
    assert float(rows["b"]["dice_liver_total"]) == 1.0
    assert rows["c"]["status"] == "missing" and float(rows["c"]["dice_liver"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["c"] and summary["cases"] == 3
    tumour = summary["metrics"]["tumour"]["dice"]
    assert tumour["n"] == 2 and tumour["n_undefined"] == 1  # a is undefined; c counts as 0
    assert tumour["mean"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert result.summary == summary


def test_prediction_on_another_grid_is_an_error_naming_both(folders):
    pred, ref, out = folders
    save_nifti(np.zeros((4, 4, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]), pred / "a.nii.gz")
    with pytest.raises(GeometryError, match=r"a.nii.gz.*spacing \(1.0, 1.0, 1.0\).*spacing \(0.8, 0.8, 2.5\)"):
        evaluate_folders(pred, ref, labels={"liver": (1,)}, output_dir=out)


def test_non_integral_labels_are_refused(folders):
    pred, ref, out = folders
    save_nifti(np.full((4, 4, 4), 0.5, np.float32), AFFINE, pred / "a.nii.gz")
    with pytest.raises(InputError, match="non-integral"):
        evaluate_folders(pred, ref, labels={"liver": (1,)}, output_dir=out)
