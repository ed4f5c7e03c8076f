"""Datalists for every layout, seeded grouped splits, MSD download against local archives, caching."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from voxpipe.cli import main
from voxpipe.errors import InputError
from voxpipe.pipelines.data.caching import cached_dataset, estimate_cache_bytes
from voxpipe.pipelines.data.datalists import detect_layout, load_datalist, msd_datalist, split_datalist
from voxpipe.pipelines.data.download import download_msd
from voxpipe.pipelines.data.splits import make_split, save_split
from voxpipe.transforms.io import read_geometry


def _copy_pairs(dataset, pairs):
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dataset / source, target)


def test_layouts_are_detected_and_listed(tiny_liver_dataset, tmp_path):
    msd = load_datalist(tiny_liver_dataset)
    assert detect_layout(tiny_liver_dataset) == "msd" and [e["case"] for e in msd] == [
        f"liver_{i:03d}" for i in range(4)
    ]
    lits = tmp_path / "lits"
    _copy_pairs(
        tiny_liver_dataset,
        [
            ("imagesTr/liver_000.nii.gz", lits / "batch1" / "volume-10.nii.gz"),
            ("labelsTr/liver_000.nii.gz", lits / "batch1" / "segmentation-10.nii.gz"),
            ("imagesTr/liver_001.nii.gz", lits / "batch2" / "volume-2.nii.gz"),
            ("labelsTr/liver_001.nii.gz", lits / "batch2" / "segmentation-2.nii.gz"),
        ],
    )
    entries = load_datalist(lits)
    assert detect_layout(lits) == "lits" and [e["case"] for e in entries] == ["volume-2", "volume-10"]
    assert entries[1]["label"].endswith("segmentation-10.nii.gz")
    folder = tmp_path / "folder"
    _copy_pairs(
        tiny_liver_dataset,
        [
            ("imagesTr/liver_000.nii.gz", folder / "images" / "p1_0000.nii.gz"),
            ("labelsTr/liver_000.nii.gz", folder / "labels" / "p1.nii.gz"),
        ],
    )
    assert load_datalist(folder) == [
        {
            "image": str(folder / "images" / "p1_0000.nii.gz"),
            "case": "p1",
            "label": str(folder / "labels" / "p1.nii.gz"),
        }
    ]
    table = tmp_path / "cases.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "patient"])
        writer.writerow(["folder/images/p1_0000.nii.gz", "folder/labels/p1.nii.gz", "P1"])
    assert load_datalist(table) == [
        {
            "image": str(folder / "images" / "p1_0000.nii.gz"),
            "label": str(folder / "labels" / "p1.nii.gz"),
            "case": "p1_0000",
            "patient": "P1",
        }
    ]
    with pytest.raises(InputError, match="expected a dataset"):
        detect_layout(tmp_path / "folder" / "images")


def _entries(n, patients=None):
    return [
        {"image": f"/x/{i}.nii.gz", "case": f"c{i:02d}", **({"patient": patients[i]} if patients else {})}
        for i in range(n)
    ]


def test_ratio_split_is_seeded_disjoint_and_grouped_by_patient():
    patients = [f"P{i // 3}" for i in range(30)]  # ten patients, three scans each
    split = make_split(_entries(30, patients), val=0.2, test=0.2, seed=4)
    assert split == make_split(_entries(30, patients), val=0.2, test=0.2, seed=4)
    assert split != make_split(_entries(30, patients), val=0.2, test=0.2, seed=5)
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert sum(map(len, parts)) == 30 and set.union(*parts) == {f"c{i:02d}" for i in range(30)}
    assert (len(split["val"]), len(split["test"])) == (6, 6)
    owner = {case: part for part, cases in zip("tvs", parts, strict=True) for case in cases}
    for p in range(10):  # every patient's scans in one part
        assert len({owner[f"c{i:02d}"] for i in range(30) if patients[i] == f"P{p}"}) == 1


def test_kfold_split_covers_each_case_once_and_training_reads_it(tiny_liver_dataset, tmp_path):
    split = make_split(_entries(11), folds=3, test=0.1, seed=0)
    validated = [c for fold in split["folds"] for c in fold["val"]]
    assert sorted(validated + split["test"]) == [f"c{i:02d}" for i in range(11)] and len(
        set(validated)
    ) == len(validated)
    for fold in split["folds"]:
        assert not set(fold["train"]) & set(fold["val"]) and not set(fold["train"]) & set(split["test"])
    path = tmp_path / "split.json"
    assert main(["data", "split", str(tiny_liver_dataset), "-o", str(path), "--folds", "2"]) == 0
    saved = json.loads(path.read_text())
    val = split_datalist(tiny_liver_dataset, path, part="val", fold=1)
    assert [e["case"] for e in val] == saved["folds"][1]["val"]
    assert msd_datalist(tiny_liver_dataset, part="train", split_file=path, fold=1) == split_datalist(
        tiny_liver_dataset, path, part="train", fold=1
    )
    with pytest.raises(InputError, match="expected fold in 0..1"):
        split_datalist(tiny_liver_dataset, path, part="val")
    save_split({"train": ["nope"], "val": [], "test": []}, tmp_path / "bad.json")
    with pytest.raises(InputError, match="not in the dataset"):
        split_datalist(tiny_liver_dataset, tmp_path / "bad.json")


def _tar(path, members):
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_extracts_and_refuses_bad_archives(tmp_path):
    good = tmp_path / "Task03_Liver.tar"
    md5 = _tar(good, {"Task03_Liver/dataset.json": b"{}", "Task03_Liver/imagesTr/liver_0.nii.gz": b"x"})
    root = tmp_path / "data"
    target = download_msd("Task03_Liver", root, url=good.as_uri(), md5=md5, progress=False)
    assert (target / "imagesTr" / "liver_0.nii.gz").read_bytes() == b"x"
    assert sorted(p.name for p in root.iterdir()) == ["Task03_Liver"]  # archive and staging removed
    assert (
        download_msd("Task03_Liver", root, url="file:///nowhere.tar", progress=False) == target
    )  # already there

    with pytest.raises(InputError, match="download of Task06_Lung.*failed.*md5"):
        download_msd("Task06_Lung", tmp_path / "d2", url=good.as_uri(), md5="0" * 32, progress=False)
    assert not (tmp_path / "d2" / "Task06_Lung").exists()

    evil = tmp_path / "evil.tar"
    md5 = _tar(evil, {"Task06_Lung/dataset.json": b"{}", "../escaped.txt": b"pwned"})
    with pytest.raises(InputError, match="unsafe archive"):
        download_msd("Task06_Lung", tmp_path / "d3", url=evil.as_uri(), md5=md5, progress=False)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "d3" / "Task06_Lung").exists()

    wrong = tmp_path / "wrong.tar"
    md5 = _tar(wrong, {"Other/dataset.json": b"{}"})
    assert (
        main(
            [
                "data",
                "download",
                "Task06_Lung",
                "-o",
                str(tmp_path / "d4"),
                "--url",
                wrong.as_uri(),
                "--md5",
                md5,
                "--no-progress",
            ]
        )
        == 2
    )
    with pytest.raises(InputError, match="expected one of"):
        download_msd("Task99_Nothing", tmp_path)


def test_cache_estimate_and_refusal(tiny_liver_dataset, tmp_path):
    entries = load_datalist(tiny_liver_dataset)
    voxels = sum(np.prod(read_geometry(e["image"])[0]) for e in entries)
    assert estimate_cache_bytes(entries) == int(voxels * 4 * 2)
    spacing = np.linalg.norm(read_geometry(entries[0]["image"])[1][:3, :3], axis=0)
    halved = estimate_cache_bytes(entries[:1], pixdim=spacing * 2)
    assert halved == pytest.approx(estimate_cache_bytes(entries[:1]) / 8, rel=1e-6)
    assert estimate_cache_bytes(entries[:1], pixdim=[0, 0, 0]) == estimate_cache_bytes(
        entries[:1]
    )  # native spacing
    with pytest.raises(InputError, match=r"needs about .* GB but limit_gb=1e-06 .*cache='disk'"):
        cached_dataset(entries, lambda d: d, cache="memory", limit_gb=1e-6)
    dataset = cached_dataset(entries, lambda d: d, cache="disk", cache_dir=tmp_path / "cache")
    assert len(dataset) == 4 and dataset[0]["case"] == "liver_000"
    with pytest.raises(InputError, match="cache_dir"):
        cached_dataset(entries, lambda d: d, cache="disk")
