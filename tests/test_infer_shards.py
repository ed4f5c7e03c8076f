"""Sharded inference: shards K/N split the inputs; two torchrun ranks write what one process writes, case for case."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import OracleNet, label_image

from voxpipe.errors import InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.pipelines.inference.cases import parse_shard
from voxpipe.pipelines.inference.infer import infer_with_bundle
from voxpipe.transforms.io import write_volume

ORACLE = {
    "network_def": {"_target_": "helpers.OracleNet"},
    "patch_size": [32, 32, 16],
    "pixdim": [0.0, 0.0, 0.0],
}
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shard_inputs")
    for index in range(5):
        phantom = liver_phantom(60 + index, size="tiny")
        write_volume(label_image(phantom.label), phantom.affine, folder / f"case_{index}.nii.gz")
    weights = folder.parent / "oracle.pt"
    torch.save(OracleNet().state_dict(), weights)
    return folder, weights


def test_shards_are_parsed_strictly():
    assert parse_shard("2/8") == (2, 8) and parse_shard("1/1") == (1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "-1/3", "1/0"):
        with pytest.raises(InputError, match="K/N"):
            parse_shard(bad)


def test_shards_split_the_inputs_and_merge_their_statistics(liver_bundle, inputs, tmp_path):
    folder, weights = inputs
    written = [
        infer_with_bundle(
            liver_bundle,
            [folder],
            output_dir=tmp_path / "out",
            weights=weights,
            overrides=ORACLE,
            shard=(k, 2),
            progress=False,
        )
        for k in (1, 2)
    ]
    assert [p.name for p in written[0]] == ["case_0.nii.gz", "case_2.nii.gz", "case_4.nii.gz"]
    assert [p.name for p in written[1]] == ["case_1.nii.gz", "case_3.nii.gz"]
    merged = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert sorted(merged) == [f"case_{i}" for i in range(5)]
    assert sorted(json.loads((tmp_path / "out" / "statistics-shard-2-of-2.json").read_text())) == [
        "case_1",
        "case_3",
    ]


@pytest.mark.slow
def test_two_torchrun_ranks_write_what_one_process_writes(liver_bundle, inputs, tmp_path):
    folder, weights = inputs
    single = infer_with_bundle(
        liver_bundle,
        [folder],
        output_dir=tmp_path / "single",
        weights=weights,
        overrides=ORACLE,
        progress=False,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "voxpipe.cli",
        "infer",
        str(liver_bundle),
        str(folder),
        "-o",
        str(tmp_path / "ranks"),
        "--weights",
        str(weights),
        "--no-progress",
        "--set",
        f"network_def={json.dumps(ORACLE['network_def'])}",
        "--set",
        "patch_size=[32, 32, 16]",
        "--set",
        "pixdim=[0.0, 0.0, 0.0]",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "(shard 1/2)" in done.stdout and "(shard 2/2)" in done.stdout
    for path in single:
        mine, theirs = nib.load(path), nib.load(tmp_path / "ranks" / path.name)
        assert np.array_equal(np.asanyarray(mine.dataobj), np.asanyarray(theirs.dataobj)) and np.allclose(
            mine.affine, theirs.affine
        )
    with (
        (tmp_path / "single" / "statistics.csv").open() as a,
        (tmp_path / "ranks" / "statistics.csv").open() as b,
    ):
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))


def test_timings_cover_every_stage_and_change_nothing(liver_bundle, inputs, tmp_path):
    from voxpipe.pipelines.inference.timings import Timings

    folder, weights = inputs
    plain = infer_with_bundle(
        liver_bundle,
        [folder],
        output_dir=tmp_path / "plain",
        weights=weights,
        overrides=ORACLE,
        progress=False,
    )
    timings = Timings()
    timed = infer_with_bundle(
        liver_bundle,
        [folder],
        output_dir=tmp_path / "timed",
        weights=weights,
        overrides=ORACLE,
        progress=False,
        timings=timings,
    )
    assert timings.cases == 5
    assert {
        "load",
        "resample",
        "intensity",
        "network",
        "stitch",
        "invert",
        "post-process",
        "write",
        "statistics",
    } <= set(timings.seconds)
    assert all(v >= 0 for v in timings.seconds.values()) and timings.seconds["network"] > 0
    for a, b in zip(plain, timed, strict=True):
        assert np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj))
    written = json.loads(timings.write(tmp_path).read_text())
    assert written["cases"] == 5 and "network" in written["seconds"] and "total" in timings.table()


def test_timings_leave_monais_invertd_able_to_invert_the_preprocessing(liver_bundle, inputs, tmp_path):
    """A third-party chain: Invertd replays the inverse of the timed preprocessing transforms."""
    from voxpipe.pipelines.inference.timings import Timings

    folder, weights = inputs
    chain = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": False,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "voxpipe.transforms.io.SaveLabelLiked", "keys": "pred", "output_dir": "@output_dir"},
    ]
    overrides = {**ORACLE, "postprocessing#transforms": chain}
    plain = infer_with_bundle(
        liver_bundle,
        [folder],
        output_dir=tmp_path / "plain",
        weights=weights,
        overrides=overrides,
        progress=False,
        statistics=False,
    )
    timings = Timings()
    timed = infer_with_bundle(
        liver_bundle,
        [folder],
        output_dir=tmp_path / "timed",
        weights=weights,
        overrides=overrides,
        progress=False,
        statistics=False,
        timings=timings,
    )
    assert timings.cases == 5 and timings.seconds["invert"] > 0 and timings.seconds["resample"] > 0
    for a, b in zip(plain, timed, strict=True):
        assert np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj))


def test_timings_name_the_stage_that_raised_the_peak_memory():
    """In a fresh process (a test worker's peak is already high): 400 MB allocated inside one stage."""
    import subprocess
    import sys

    probe = (
        "import numpy as np\n"
        "from voxpipe.pipelines.inference.timings import Timings\n"
        "t = Timings()\n"
        "t.timed('small', lambda: np.ones(1000).sum())()\n"
        "t.timed('big', lambda: np.ones(50_000_000).sum())()\n"
        "print(t.peak_stage, round(t.peak_raised_mib.get('big', 0)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    stage, raised = done.stdout.split()
    assert stage == "big" and int(raised) > 300, done.stdout + done.stderr
