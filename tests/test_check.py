"""`voxpipe data check`: a clean phantom dataset passes; every injected fault is reported at once."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from helpers import absent

from voxpipe.cli import main
from voxpipe.phantoms.ct import write_msd_dataset
from voxpipe.pipelines.data.check import check_dataset


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("check") / "Task03_Phantom"
    write_msd_dataset(root, task="liver", n_train=12, n_test=0, seed=3, size="tiny")
    return root


def _edit(path, change):
    image = nib.load(str(path))
    array, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(array, affine), str(path))


def test_clean_phantom_dataset_has_no_problems(clean_dataset, tmp_path, capsys):
    report = check_dataset(clean_dataset)
    assert report.n_cases == 12 and report.problems == []
    assert (
        main(["data", "check", str(clean_dataset), "--json", str(tmp_path / "r.json"), "--no-progress"]) == 0
    )
    assert "no problems" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["n_errors"] == 0


def test_broken_copy_reports_every_injected_fault(clean_dataset, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(clean_dataset, root)
    img, lab = root / "imagesTr", root / "labelsTr"
    case = [f"liver_{i:03d}.nii.gz" for i in range(12)]
    (img / case[0]).write_bytes(b"\x1f\x8b truncated")  # unreadable
    _edit(lab / case[1], lambda a, m: (a[:-1], m))  # shape mismatch
    _edit(lab / case[2], lambda a, m: (a, m @ np.diag([1.1, 1, 1, 1])))  # spacing mismatch
    _edit(lab / case[3], lambda a, m: (a, m + np.pad(np.array([[0, 0, 0, 5.0]]), ((0, 3), (0, 0)))))  # origin
    _edit(lab / case[4], lambda a, m: (a, m @ np.diag([-1, 1, 1, 1]) + np.diag([0, 0, 0, 0])))  # direction
    _edit(lab / case[5], lambda a, m: (np.where(a == 1, 7, a).astype(np.uint8), m))  # unexpected label value
    _edit(lab / case[6], lambda a, m: (a.astype(np.float32) * 0.5, m))  # non-integral label
    _edit(
        img / case[7],
        lambda a, m: (np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a).astype(np.float32), m),
    )
    _edit(lab / case[8], lambda a, m: (np.zeros_like(a), m))  # empty label (warning)
    _edit(
        img / case[9], lambda a, m: (((a.astype(np.float32) + 1024) / 4000).astype(np.float32), m)
    )  # not HU
    (lab / case[10]).unlink()  # listed label missing
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["training"].append(dict(manifest["training"][11]))  # the same case listed twice
    (root / "dataset.json").write_text(json.dumps(manifest))

    report = check_dataset(root)
    found = {(p.case, p.code) for p in report.problems}
    expected = {
        ("liver_000", "unreadable"),
        ("liver_001", "shape-mismatch"),
        ("liver_002", "spacing-mismatch"),
        ("liver_003", "origin-mismatch"),
        ("liver_004", "direction-mismatch"),
        ("liver_005", "unexpected-label"),
        ("liver_006", "non-integral-label"),
        ("liver_007", "nan-inf"),
        ("liver_008", "empty-label"),
        ("liver_009", "hu-range"),
        ("liver_010", "missing-file"),
        ("liver_011", "duplicate-case"),
        ("liver_011", "duplicate-image"),
    }
    assert expected <= found, expected - found
    assert all(p.case in {c[0] for c in expected} for p in report.problems)  # nothing reported on clean cases
    assert [p.severity for p in report.problems if p.code == "empty-label"] == ["warning"]
    message = next(p.message for p in report.problems if p.code == "spacing-mismatch")
    assert "label spacing" in message and "image spacing" in message
    assert main(["data", "check", str(root), "--json", str(tmp_path / "r.json"), "--no-progress"]) == 2
    table = capsys.readouterr().out
    assert "liver_004" in table and "12 errors, 1 warnings" in table
    assert len(json.loads((tmp_path / "r.json").read_text())["problems"]) == len(report.problems)


def test_folder_layout_reports_missing_pairs(tmp_path, clean_dataset):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    shutil.copy(clean_dataset / "imagesTr" / "liver_000.nii.gz", tmp_path / "images" / "a_0000.nii.gz")
    shutil.copy(clean_dataset / "labelsTr" / "liver_000.nii.gz", tmp_path / "labels" / "a.nii.gz")
    shutil.copy(clean_dataset / "imagesTr" / "liver_001.nii.gz", tmp_path / "images" / "b.nii.gz")
    shutil.copy(clean_dataset / "labelsTr" / "liver_002.nii.gz", tmp_path / "labels" / "c.nii.gz")
    report = check_dataset(tmp_path, modality="CT")
    assert {(p.case, p.code) for p in report.problems} == {("b", "missing-pair"), ("c", "missing-pair")}


@pytest.mark.realdata
def test_real_ct_pairs_pass_the_check(real_data, tmp_path):
    pairs = {
        "lung2": ("pyradiomics/lung2_image.nrrd", "pyradiomics/lung2_label.nrrd"),
        "ts_ct_sm": ("totalsegmentator/example_ct_sm.nii.gz", "totalsegmentator/example_seg.nii.gz"),
    }
    for case, (image, label) in pairs.items():
        if not (real_data / image).is_file() or not (real_data / label).is_file():
            absent(f"{image} or {label} is absent", required_by="VOXPIPE_REQUIRE_REAL_DATA")
        for folder, source in (("images", image), ("labels", label)):
            target = tmp_path / folder / (case + (".nrrd" if source.endswith(".nrrd") else ".nii.gz"))
            target.parent.mkdir(exist_ok=True)
            target.symlink_to(real_data / source)
    report = check_dataset(tmp_path, modality="CT")
    assert report.n_cases == 2 and report.problems == [], report.table()
