"""Evaluation on hand-made masks with known Dice; conventions for empty and missing cases."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from voxpipe.errors import InputError
from voxpipe.metrics import dice
from voxpipe.pipelines.evaluation.evaluate import ScoringOptions, evaluate_folders, parse_label_groups
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
    assert parse_label_groups("liver=1,tumour=2,liver_total=1+2") == {
        "liver": (1,),
        "tumour": (2,),
        "liver_total": (1, 2),
    }
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
    result = evaluate_folders(
        pred, ref, labels={"liver": (1,), "tumour": (2,), "liver_total": (1, 2)}, output_dir=out
    )
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


def test_prediction_on_another_grid_fails_that_case_naming_both(folders):
    """Promise: one bad case never stops the run; it is listed with its reason and scored the worst."""
    pred, ref, out = folders
    save_nifti(np.zeros((4, 4, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]), pred / "a.nii.gz")
    result = evaluate_folders(pred, ref, labels={"liver": (1,)}, output_dir=out)
    rows = {r["case"]: r for r in result.rows}
    assert rows["a"]["status"] == "wrong_grid" and rows["a"]["dice_liver"] == 0.0
    assert re.search(r"a.nii.gz.*spacing \(1.0, 1.0, 1.0\).*spacing \(0.8, 0.8, 2.5\)", rows["a"]["reason"])
    assert rows["b"]["status"] == "ok" and "a" in result.summary["failed"]
    assert (out / "per_case.csv").is_file() and (out / "summary.json").is_file()


def test_non_integral_labels_fail_that_case(folders):
    pred, ref, out = folders
    save_nifti(np.full((4, 4, 4), 0.5, np.float32), AFFINE, pred / "a.nii.gz")
    rows = {r["case"]: r for r in evaluate_folders(pred, ref, labels={"liver": (1,)}, output_dir=out).rows}
    assert (
        rows["a"]["status"] == "not_labels"
        and "non-integral" in rows["a"]["reason"]
        and rows["b"]["status"] == "ok"
    )


def test_an_unreadable_reference_is_listed_and_the_rest_scored(folders, capsys):
    from voxpipe.cli import main

    pred, ref, out = folders
    (ref / "a.nii.gz").write_bytes(b"not an image at all")
    assert main(["evaluate", str(pred), str(ref), "--labels", "liver=1", "-o", str(out)]) == 2
    shown = capsys.readouterr().out
    assert "a: " in shown and "could not be read" in shown
    rows = {r["case"]: r for r in csv.DictReader(open(out / "per_case.csv"))}
    assert rows["a"]["status"] == "reference_failed" and rows["a"]["dice_liver"] == ""
    assert rows["b"]["status"] == "ok"
    summary = json.loads((out / "summary.json").read_text())
    assert (
        "could not be read" in summary["failed_reasons"]["a"]
        and summary["metrics"]["liver"]["dice"]["n"] == len(rows) - 1
    )


def test_every_metric_conventions_and_lits_global_dice(folders):
    pred, ref, out = folders
    labels = {"liver": (1,), "tumour": (2,)}
    nnunet = evaluate_folders(
        pred, ref, labels=labels, output_dir=out / "n", options=ScoringOptions(convention="nnunet")
    )
    flare = evaluate_folders(
        pred, ref, labels=labels, output_dir=out / "f", options=ScoringOptions(convention="flare")
    )
    a_n = next(r for r in nnunet.rows if r["case"] == "a")
    a_f = next(r for r in flare.rows if r["case"] == "a")
    assert math.isnan(a_n["dice_tumour"]) and math.isnan(a_n["hd95_tumour"])
    assert a_f["dice_tumour"] == a_f["nsd_tumour"] == 1.0 and a_f["hd95_tumour"] == 0.0  # both empty: perfect
    for metric in (
        "dice",
        "iou",
        "sensitivity",
        "precision",
        "specificity",
        "volume_diff_ml",
        "hd",
        "hd95",
        "assd",
        "msd",
        "nsd",
        "lesion_recall",
        "lesion_f1",
    ):
        assert f"{metric}_liver" in a_n
    # Case a: the prediction is the first of the reference's two slabs → volume −16 voxels.
    assert a_n["volume_diff_ml_liver"] == pytest.approx(-16 * 0.8 * 0.8 * 2.5 / 1000)
    # A failed case gets the worst value of every metric, whatever the convention.
    c = next(r for r in flare.rows if r["case"] == "c")
    diagonal = float(np.linalg.norm(np.array([4, 4, 4]) * [0.8, 0.8, 2.5]))
    assert c["dice_tumour"] == 0.0 and c["hd95_liver"] == pytest.approx(diagonal) and c["nsd_liver"] == 0.0
    # LiTS global Dice pools voxels over cases: liver TP = 16 (a) + 28 (b) + 0 (c, missing).
    lits = nnunet.summary["aggregates"]["lits"]["liver"]
    assert lits["dice_global"] == pytest.approx(
        2 * 44 / (2 * 44 + 2 + 16 + 28)
    )  # FP 2 (b); FN 16 (a) + 28 (c)
    ci = nnunet.summary["metrics"]["liver"]["dice"]["ci95"]
    assert ci[0] <= nnunet.summary["metrics"]["liver"]["dice"]["mean"] <= ci[1]


def test_parallel_workers_give_the_same_rows(folders):
    pred, ref, out = folders
    one = evaluate_folders(pred, ref, labels={"liver": (1,)}, output_dir=out / "1")
    two = evaluate_folders(pred, ref, labels={"liver": (1,)}, output_dir=out / "2", workers=2)
    assert (out / "1" / "per_case.csv").read_text() == (out / "2" / "per_case.csv").read_text()
    assert one.summary == two.summary


def test_resample_pred_puts_a_prediction_on_the_reference_grid(tmp_path):
    ref = np.zeros((8, 8, 4), np.uint8)
    ref[2:6, 2:6, 1:3] = 1
    fine = np.repeat(np.repeat(ref, 2, axis=0), 2, axis=1)  # the same object at half the in-plane spacing
    fine_affine = np.diag([0.4, 0.4, 2.5, 1.0])
    fine_affine[:3, 3] = [-0.2, -0.2, 0.0]  # voxel centres of the fine grid inside the coarse voxels
    save_nifti(ref, AFFINE, tmp_path / "ref" / "x.nii.gz")
    save_nifti(fine, fine_affine, tmp_path / "pred" / "x.nii.gz")
    failed = evaluate_folders(
        tmp_path / "pred", tmp_path / "ref", labels={"o": (1,)}, output_dir=tmp_path / "out"
    )
    assert failed.rows[0]["status"] == "wrong_grid" and "resample" in failed.rows[0]["reason"]
    result = evaluate_folders(
        tmp_path / "pred",
        tmp_path / "ref",
        labels={"o": (1,)},
        output_dir=tmp_path / "out",
        resample_predictions=True,
    )
    assert result.rows[0]["dice_o"] == 1.0


def test_report_is_one_self_contained_html(folders, tmp_path):
    from voxpipe.pipelines.evaluation.report import write_report

    pred, ref, out = folders
    result = evaluate_folders(pred, ref, labels={"liver": (1,), "tumour": (2,)}, output_dir=out)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,loss,val_mean_dice\n1,0.9,0.5\n2,0.7,\n3,0.5,0.7\n")
    page = write_report(result, pred, ref, output_dir=out, run_dir=run).read_text()
    assert page.count("data:image/png;base64,") >= 4  # metrics, ≥2 overlays, curves
    assert "http://" not in page and "https://" not in page and "src='file" not in page  # opens offline
    assert "sortTable" in page and "<td>a</td>" in page and "missing" in page
    assert {p.name for p in out.glob("*.png")} >= {"metrics.png", "curves.png"}
