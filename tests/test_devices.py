"""voxpipe infer --devices: one process per device over one case list, outputs and statistics in one
folder, a bad case failing alone (run here with two CPU processes)."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import SimpleITK as sitk
from test_nnunet_predict import liver_model, make_image

from voxpipe.cli import main
from voxpipe.cli.devices import parse_devices, without_option


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_two_processes_share_the_cases_and_write_what_one_run_writes(tmp_path, capsys):
    folder = liver_model(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in range(3):
        make_image(inputs / f"case{seed}_0000.nii.gz", shape=(12, 24, 24), spacing=(2.0, 2.0, 2.0), seed=seed)
    (inputs / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    single, both = tmp_path / "single", tmp_path / "both"
    assert main(["infer", str(folder), str(inputs), "-o", str(single), "--disable-tta"]) == 2
    code = main(["infer", str(folder), str(inputs), "-o", str(both), "--disable-tta", "--devices", "cpu,cpu"])
    assert code == 2  # the broken case fails in its process; the others were written
    assert "exited with 2" in capsys.readouterr().err
    for seed in range(3):
        assert np.array_equal(_read(both / f"case{seed}.nii.gz"), _read(single / f"case{seed}.nii.gz"))
    assert not (both / "broken.nii.gz").exists()
    with open(both / "statistics.csv") as handle:
        cases = {row["case"] for row in csv.DictReader(handle)}
    assert cases == {"case0", "case1", "case2"}


def test_devices_are_parsed_and_refused_beside_shard_or_device(tmp_path, capsys):
    assert parse_devices("0,1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu, cuda:3") == ["cpu", "cuda:3"]
    with pytest.raises(argparse.ArgumentTypeError, match="two or more"):
        parse_devices("0")
    assert without_option(["a", "--devices", "0,1", "--devices=2,3", "b"], "--devices") == ["a", "b"]
    folder = liver_model(tmp_path)
    image = make_image(tmp_path / "x_0000.nii.gz", shape=(12, 24, 24), spacing=(2.0, 2.0, 2.0))
    code = main(
        ["infer", str(folder), str(image), "-o", str(tmp_path / "o"), "--devices", "0,1", "--shard", "1/2"]
    )
    assert code == 2 and "takes neither --shard nor --device" in capsys.readouterr().err
