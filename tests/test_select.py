"""Cross-validation (voxpipe train --folds), selection (voxpipe select) and the fold ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from voxpipe.errors import InputError
from voxpipe.networks.ensemble import FoldEnsemble
from voxpipe.pipelines.bundles.config import shipped_bundle
from voxpipe.pipelines.evaluation.crossval import parse_folds, train_folds
from voxpipe.pipelines.evaluation.select import select_runs


def test_fold_ensemble_returns_log_of_mean_probabilities():
    torch.manual_seed(0)
    spec = {"name": "unet3d", "in_channels": 1, "out_channels": 3, "channels": (4, 8), "strides": (2,)}
    ensemble = FoldEnsemble(networks=[spec, spec]).eval()
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in ensemble.members]).mean(0)
        got = torch.softmax(
            ensemble(x), 1
        )  # what the bundle's Activationsd(softmax=True) makes of the output
    assert torch.allclose(got, expected, atol=1e-6)
    copy = FoldEnsemble(network=spec, members=2)
    copy.load_state_dict(ensemble.state_dict())  # one state dict, keys members.<i>.*: one models/model.pt
    with torch.no_grad():
        assert torch.allclose(copy.eval()(x), ensemble(x))
    with pytest.raises(InputError, match="members"):
        FoldEnsemble(network=spec, members=0)


def test_folds_are_parsed_against_the_split():
    assert parse_folds("all", 5) == [0, 1, 2, 3, 4] and parse_folds("2,0,2", 3) == [0, 2]
    for bad in ("5", "a,b", ""):
        with pytest.raises(InputError, match="--folds"):
            parse_folds(bad, 5)


def test_train_folds_needs_a_k_fold_split(tmp_path):
    with pytest.raises(InputError, match="split_file.*k-fold"):
        train_folds(shipped_bundle("liver_ct_segresnet"), overrides={"dataset_dir": str(tmp_path)})


def _sphere(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def _one_hot(label, classes=3, confidence=0.9):
    probabilities = np.full((classes, *label.shape), (1 - confidence) / (classes - 1), np.float32)
    for value in range(classes):
        probabilities[value][label == value] = confidence
    return probabilities


@pytest.fixture
def oof_runs(tmp_path):
    """Two fake cross-validation runs on a 4-case dataset (liver with two tumours inside it).

    Run "islands" predicts the truth plus a far-away liver island and a far-away tumour island;
    run "shrunk" misses the outer rim of the liver. Their mean is what an ensemble sees.
    """
    shape = (40, 40, 24)
    dataset = tmp_path / "dataset"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    training, truths = [], {}
    for index in range(4):
        label = np.zeros(shape, np.uint8)
        label[_sphere(shape, (18, 18, 12), 11)] = 1
        label[_sphere(shape, (12, 18, 12), 2 + index % 2)] = 2  # two true tumours, both inside the liver
        label[_sphere(shape, (24, 18, 12), 2)] = 2
        case = f"case_{index}"
        nib.save(
            nib.Nifti1Image(label.astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])),
            dataset / "imagesTr" / f"{case}.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(label, np.diag([1.0, 1.0, 2.0, 1.0])), dataset / "labelsTr" / f"{case}.nii.gz"
        )
        training.append({"image": f"imagesTr/{case}.nii.gz", "label": f"labelsTr/{case}.nii.gz"})
        truths[case] = label
    (dataset / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "liver", "2": "tumour"},
                "modality": {"0": "CT"},
                "training": training,
            }
        )
    )
    runs = []
    for name in ("islands", "shrunk"):
        run = tmp_path / "runs" / name
        folds = {}
        for fold, cases in enumerate((["case_0", "case_1"], ["case_2", "case_3"])):
            validation = run / f"fold_{fold}" / "validation"
            validation.mkdir(parents=True)
            for case in cases:
                label = truths[case].copy()
                if name == "islands":
                    label[_sphere(shape, (36, 36, 20), 2)] = 1
                    label[_sphere(shape, (36, 4, 4), 1)] = 2
                else:
                    label[(label == 1) & ~_sphere(shape, (18, 18, 12), 9)] = 0
                np.savez_compressed(
                    validation / f"{case}_probabilities.npz",
                    probabilities=_one_hot(label),
                    affine=np.diag([1.0, 1.0, 2.0, 1.0]),
                )
            folds[str(fold)] = {
                "cases": cases,
                "validation_dir": str(validation),
                "weights": "unused",
                "output_dir": str(run / f"fold_{fold}"),
            }
        (run / "cv.json").write_text(
            json.dumps(
                {
                    "bundle": str(shipped_bundle("liver_ct_segresnet")),
                    "dataset_dir": str(dataset),
                    "n_folds": 2,
                    "folds": folds,
                }
            )
        )
        runs.append(run)
    return runs


def test_select_scores_every_candidate_and_refuses_post_processing_that_deletes_true_lesions(
    oof_runs, tmp_path
):
    selection = select_runs(oof_runs[:1], tmp_path / "selection", write_bundle=False)
    by_option = {c["postprocessing"]: c for c in selection["candidates"]}
    # Largest component per class removes the liver island (Dice up) but also the second true tumour.
    assert by_option["largest per class"]["dice"]["liver"] > by_option["none"]["dice"]["liver"]
    assert by_option["largest per class"]["lesion_f1"]["tumour"] < by_option["none"]["lesion_f1"]["tumour"]
    winner = selection["winner"]
    assert winner["postprocessing"] != "largest per class"
    assert any("largest per class: refused" in line for line in selection["why"])
    # The largest component of liver + tumours together drops both islands and keeps the inner tumours.
    assert winner["postprocessing"] == "largest of all foreground"
    assert winner["lesion_f1"]["tumour"] >= by_option["none"]["lesion_f1"]["tumour"]
    text = (tmp_path / "selection" / "selection.md").read_text()
    assert "| Members | Post-processing | Mean fg Dice | 95 % CI |" in text and "✔" in text
    assert (
        json.loads((tmp_path / "selection" / "selection.json").read_text())["winner"]["postprocessing"]
        == winner["postprocessing"]
    )


def test_select_scores_ensembles_of_runs(oof_runs, tmp_path):
    selection = select_runs(oof_runs, tmp_path / "both", write_bundle=False)
    members = {tuple(c["members"]) for c in selection["candidates"]}
    assert (
        len(members) == 3 and len(selection["candidates"]) == 3 * 6
    )  # 2 singles + 1 ensemble, 6 options each
    assert len(selection["cases"]) == 4
    with pytest.raises(InputError, match="cv.json"):
        select_runs([tmp_path / "nothing"], tmp_path / "x")


@pytest.mark.slow
def test_plan_cross_validate_select_and_infer_the_winner(tiny_liver_dataset, tmp_path, monkeypatch):
    from voxpipe.pipelines.data.datalists import load_datalist
    from voxpipe.pipelines.data.splits import make_split, save_split
    from voxpipe.pipelines.inference.infer import infer_with_bundle
    from voxpipe.pipelines.planning.planner import plan_dataset

    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "planned"
    plan_dataset(tiny_liver_dataset, bundle, rules="nnunet")
    split = save_split(
        make_split(load_datalist(tiny_liver_dataset), folds=2, seed=0), tmp_path / "two_folds.json"
    )
    overrides = {"split_file": str(split), "max_epochs": 1, "val_interval": 1, "progress": False}
    record = train_folds(bundle, folds="all", overrides=overrides)
    cv = json.loads(record.read_text())
    assert sorted(cv["folds"]) == ["0", "1"] and record.parent == tmp_path / "runs" / "planned"
    assert all(
        Path(f["validation_dir"], f"{c}_probabilities.npz").is_file()
        for f in cv["folds"].values()
        for c in f["cases"]
    )
    again = train_folds(bundle, folds="0", overrides=overrides)  # finished folds are not trained again
    assert json.loads(again.read_text())["folds"]["0"] == cv["folds"]["0"]
    selection = select_runs([record.parent], tmp_path / "selected")
    winner_bundle = Path(selection["bundle"])
    images = sorted((tiny_liver_dataset / "imagesTs").glob("*.nii.gz"))
    predictions = infer_with_bundle(winner_bundle, images, output_dir=tmp_path / "pred", progress=False)
    for image, prediction in zip(images, predictions, strict=True):
        source, predicted = nib.load(image), nib.load(prediction)
        assert predicted.shape == source.shape and np.allclose(predicted.affine, source.affine)
    state = torch.load(winner_bundle / "models" / "model.pt", weights_only=True)
    assert {k.split(".")[1] for k in state} == {"0", "1"}  # both fold models in one file
    from voxpipe.pipelines.evaluation.evaluate import evaluate_folders

    result = evaluate_folders(
        tmp_path / "pred",
        tiny_liver_dataset / "labelsTs",
        labels={"liver": (1,), "tumour": (2,)},
        output_dir=tmp_path / "scores",
    )  # the challenge-style summary of the selected model
    assert result.summary["cases"] == len(images) and not result.summary["failed"]


@pytest.mark.slow
def test_multichannel_mri_from_msd_4d_files_plans_trains_selects_and_infers(tmp_path, monkeypatch):
    from voxpipe.phantoms.mri import write_brain_dataset
    from voxpipe.pipelines.data.check import check_dataset
    from voxpipe.pipelines.data.datalists import load_datalist
    from voxpipe.pipelines.data.splits import make_split, save_split
    from voxpipe.pipelines.evaluation.evaluate import evaluate_folders
    from voxpipe.pipelines.inference.infer import infer_with_bundle
    from voxpipe.pipelines.planning.planner import plan_dataset

    monkeypatch.chdir(tmp_path)
    dataset = write_brain_dataset(
        tmp_path / "brain", n_train=4, n_test=2, seed=3, size="tiny", channels=3
    ).parent
    assert not check_dataset(dataset).problems  # 4D images are read with their channels
    plan = plan_dataset(dataset, tmp_path / "brain_plan", rules="nnunet")
    assert plan["channels"] == ["FLAIR", "T1w", "T1gd"] and plan["network_spec"]["in_channels"] == 3
    split = save_split(make_split(load_datalist(dataset), folds=2, seed=0), tmp_path / "two_folds.json")
    record = train_folds(
        tmp_path / "brain_plan",
        overrides={"split_file": str(split), "max_epochs": 2, "val_interval": 1, "progress": False},
    )
    selection = select_runs([record.parent], tmp_path / "selected")
    assert set(selection["labels"].values()) == {"edema", "non-enhancing tumour", "enhancing tumour"}
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    outputs = infer_with_bundle(
        Path(selection["bundle"]), images, output_dir=tmp_path / "pred", progress=False
    )
    for image, output in zip(images, outputs, strict=True):
        source, predicted = nib.load(image), nib.load(output)
        assert (
            source.ndim == 4
            and predicted.shape == source.shape[:3]
            and np.allclose(predicted.affine, source.affine)
        )
    result = evaluate_folders(
        tmp_path / "pred",
        dataset / "labelsTs",
        labels={"edema": (1,), "tumour_core": (2, 3)},
        output_dir=tmp_path / "scores",
    )
    assert result.summary["cases"] == 2 and not result.summary["failed"]


@pytest.mark.slow
def test_torchrun_ranks_train_one_fold_each_into_one_cv_record(tiny_liver_dataset, tmp_path):
    import os
    import subprocess
    import sys

    from voxpipe.pipelines.data.datalists import load_datalist
    from voxpipe.pipelines.data.splits import make_split, save_split
    from voxpipe.pipelines.planning.planner import plan_dataset

    bundle = tmp_path / "planned"
    plan_dataset(tiny_liver_dataset, bundle, rules="nnunet")
    split = save_split(
        make_split(load_datalist(tiny_liver_dataset), folds=2, seed=0), tmp_path / "two_folds.json"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "voxpipe.cli",
        "train",
        str(bundle),
        "--folds",
        "all",
        "--set",
        f"split_file={split}",
        "--set",
        "max_epochs=1",
        "--set",
        "val_interval=1",
        "--set",
        "progress=false",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "worker 1 of 2: folds [0]" in done.stderr and "worker 2 of 2: folds [1]" in done.stderr
    cv = json.loads((tmp_path / "runs" / "cv.json").read_text())
    assert sorted(cv["folds"]) == ["0", "1"]  # both ranks' folds, merged under the lock
    assert "process group" not in done.stderr  # each fold trained as a single process


@pytest.mark.slow
def test_nnunet_layout_with_one_file_per_channel_cross_validates_and_infers(tmp_path, monkeypatch):
    """nnU-Net v2 raw layout, two channels as case_0000/case_0001: plan, folds, select, infer a folder of channel files."""
    from voxpipe.phantoms.mri import brain_phantom
    from voxpipe.pipelines.inference.infer import infer_with_bundle
    from voxpipe.pipelines.planning.planner import plan_dataset

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "Dataset777_Brain"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    for index in range(5):
        phantom = brain_phantom((4, index), size="tiny", channels=2)
        part = "Tr" if index < 4 else "Ts"
        for channel in range(2):
            nib.save(
                nib.Nifti1Image(phantom.image[..., channel], phantom.affine),
                root / f"images{part}" / f"b{index}_{channel:04d}.nii.gz",
            )
        if part == "Tr":
            nib.save(nib.Nifti1Image(phantom.label, phantom.affine), root / "labelsTr" / f"b{index}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "FLAIR", "1": "T1w"},
                "numTraining": 4,
                "labels": {"background": 0, "edema": 1, "core": 2, "enhancing": 3},
                "file_ending": ".nii.gz",
            }
        )
    )
    plan_dataset(root, tmp_path / "plan", rules="nnunet")
    from voxpipe.pipelines.data.datalists import load_datalist
    from voxpipe.pipelines.data.splits import make_split, save_split

    split = save_split(make_split(load_datalist(root), folds=2, seed=0), tmp_path / "two_folds.json")
    record = train_folds(
        tmp_path / "plan",
        overrides={"split_file": str(split), "max_epochs": 1, "val_interval": 1, "progress": False},
    )
    cv = json.loads(record.read_text())
    assert all(
        Path(f["validation_dir"], f"{c}_probabilities.npz").is_file()
        for f in cv["folds"].values()
        for c in f["cases"]
    )
    selection = select_runs([record.parent], tmp_path / "selected")
    [output] = infer_with_bundle(
        Path(selection["bundle"]), [root / "imagesTs"], output_dir=tmp_path / "pred", progress=False
    )
    assert output.name == "b4.nii.gz"  # named by the case, not by its channel-0 file
    source = nib.load(root / "imagesTs" / "b4_0000.nii.gz")
    assert nib.load(output).shape == source.shape and np.allclose(nib.load(output).affine, source.affine)


def test_promise_a_run_with_a_missing_fold_is_scored_with_a_warning_naming_it(oof_runs, tmp_path, caplog):
    record = json.loads((oof_runs[0] / "cv.json").read_text())
    del record["folds"]["1"]
    (oof_runs[0] / "cv.json").write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        selection = select_runs(oof_runs[:1], tmp_path / "s", write_bundle=False)
    assert "folds [1] of 2 are not done" in caplog.text and "2 out-of-fold cases" in caplog.text
    assert selection["runs"][0]["missing_folds"] == [1] and len(selection["cases"]) == 2


@pytest.mark.parametrize("damage", ["truncated", "not-a-record", "corrupt-npz", "pickled-npz", "no-array"])
def test_promise_damaged_run_files_exit_2_naming_the_file(oof_runs, tmp_path, capsys, damage):
    from voxpipe.cli import main

    run = oof_runs[0]
    record = run / "cv.json"
    npz = run / "fold_0" / "validation" / "case_0_probabilities.npz"
    if damage == "truncated":
        record.write_text(record.read_text()[:40])
        named = "cv.json"
    elif damage == "not-a-record":
        record.write_text("[1, 2]")
        named = "cv.json"
    elif damage == "corrupt-npz":
        npz.write_bytes(npz.read_bytes()[:100])
        named = npz.name
    elif damage == "pickled-npz":
        np.savez(npz, probabilities=np.array([{"a": 1}], dtype=object))
        named = npz.name
    else:
        np.savez(npz, other=np.zeros(3))
        named = npz.name
    assert main(["select", str(run), "-o", str(tmp_path / "s"), "--no-bundle"]) == 2
    error = capsys.readouterr().err
    assert named in error and "internal error" not in error, error
