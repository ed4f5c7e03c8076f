"""TotalSegmentator 2.18.0 itself as the oracle of voxpipe's TotalSegmentator path: phantoms, the
child process that runs it offline, and the voxel-for-voxel comparison.

``make oracle`` installs TotalSegmentator (without its dependencies) into ``.oracle/totalseg`` beside
nnunetv2's packages in ``.oracle/nnunet`` (or ``$VOXPIPE_TOTALSEG_ORACLE``); under CI
(``VOXPIPE_REQUIRE_REFERENCES=1``) its absence fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NNUNET_SITE = Path(os.environ.get("VOXPIPE_NNUNET_ORACLE", REPO / ".oracle" / "nnunet"))
SITE = Path(os.environ.get("VOXPIPE_TOTALSEG_ORACLE", REPO / ".oracle" / "totalseg"))

#: The scans every task is compared on: (orientation axcodes, spacing x y z mm, shape).
CASES = {
    "RAS": ("RAS", (1.6, 1.4, 2.5), (40, 36, 30)),
    "LPS": ("LPS", (1.4, 1.6, 2.0), (36, 40, 32)),
    "LAS": ("LAS", (1.2, 1.2, 3.0), (44, 40, 24)),
    "anisotropic": ("RAS", (0.8, 0.8, 5.0), (64, 60, 14)),
}
#: Cases for single options: ``tall`` has the 57+ slices at 1.5 mm that the split in three needs.
EXTRA_CASES = {"tall": ("LPS", (1.5, 1.5, 1.5), (30, 28, 66))}


def oracle_site() -> list[Path]:
    """The oracle's package folders, or a skip (a failure under CI)."""
    if not (SITE / "totalsegmentator").is_dir() or not (NNUNET_SITE / "skimage").is_dir():
        message = f"the TotalSegmentator oracle is not installed in {SITE} (make oracle)"
        if os.environ.get("VOXPIPE_REQUIRE_REFERENCES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return [NNUNET_SITE, SITE]


def phantom_array(shape, *, seed: int = 0, spine: bool = False) -> np.ndarray:
    """A CT-like volume (x, y, z) in HU: air around a body ellipse holding lungs, fat, soft tissue,
    contrast and bone of varying size along z, with noise. ``spine``: the bone column is cut by a
    soft-tissue disc every fifth slice, so that it holds several vertebral bodies."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(shape).astype(float)
    sx, sy, sz = shape
    body = ((x - sx / 2) / (sx / 2.3)) ** 2 + ((y - sy / 2) / (sy / 2.5)) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0)
    lungs = body & (
        ((x - sx * 0.32) / (sx / 7)) ** 2 + ((y - sy / 2) / (sy / 5)) ** 2 < 1 + 0.3 * np.sin(z / 3)
    )
    lungs |= body & (
        ((x - sx * 0.68) / (sx / 7)) ** 2 + ((y - sy / 2) / (sy / 5)) ** 2 < 1 + 0.3 * np.cos(z / 4)
    )
    hu[lungs] = -820.0
    fat = body & ~(((x - sx / 2) / (sx / 2.6)) ** 2 + ((y - sy / 2) / (sy / 2.9)) ** 2 < 1)
    hu[fat] = -100.0
    organ = body & (((x - sx * 0.5) / (sx / 8)) ** 2 + ((y - sy * 0.7) / (sy / 9)) ** 2 < 1.2 + np.sin(z / 5))
    hu[organ] = 160.0
    bone = body & (((x - sx * 0.5) / 2.5) ** 2 + ((y - sy * 0.25) / 2.5) ** 2 < 1 + 0.5 * np.cos(z / 2))
    if spine:
        bone &= np.floor(z) % 5 != 4
    hu[bone] = 700.0
    vessel = body & (((x - sx * 0.45) / 1.8) ** 2 + ((y - sy * 0.5) / 1.8) ** 2 < 1)
    hu[vessel] = 300.0
    return (hu + rng.normal(0, 25, shape)).round()


def case_affine(orientation: str, spacing, shape) -> np.ndarray:
    """An affine of the given axis codes (RAS, LPS, LAS...) and spacing, origin near the centre."""
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff

    ornt = axcodes2ornt(tuple(orientation))
    affine = np.diag([*spacing, 1.0])
    turn = inv_ornt_aff(ornt, shape)  # voxels of this orientation to RAS voxels
    affine = affine @ turn
    affine[:3, 3] += np.array([12.5, -30.0, 7.0])
    return affine


def write_case(folder: Path, name: str, *, seed: int = 0, spine: bool = False) -> Path:
    orientation, spacing, shape = {**CASES, **EXTRA_CASES}[name]
    path = folder / f"{name}.nii.gz"
    array = phantom_array(shape, seed=seed, spine=spine)
    nib.save(nib.Nifti1Image(array.astype(np.int16), case_affine(orientation, spacing, shape)), path)
    return path


def run_oracle(
    jobs: list[dict], weights: Path, home: Path, scratch: Path, *, device: str = "cpu"
) -> list[dict]:
    """TotalSegmentator on each job (one child process, offline, on ``device``: ``cpu`` or ``gpu``);
    each job's outcome."""
    from totalseg_weights import write_config

    site = oracle_site()
    write_config(home)
    jobs_file, results = scratch / "jobs.json", scratch / "results.json"
    jobs_file.write_text(json.dumps([{**job, "device": device} for job in jobs]))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*map(str, site), str(REPO)]),
        "TOTALSEG_HOME_DIR": str(home),
        "TOTALSEG_WEIGHTS_PATH": str(weights),
        "HOME": str(home),
        "nnUNet_raw": str(weights),
        "nnUNet_preprocessed": str(weights),
        "nnUNet_results": str(weights),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "oracles" / "totalseg_run.py"), str(jobs_file), str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results.read_text())


def differing(ours: nib.Nifti1Image, theirs: nib.Nifti1Image) -> int:
    """Voxels whose labels differ, compared in world space: ``theirs`` is brought onto ``ours``' voxel
    grid by the index permutation and flips of the two affines (both are the same grid of points)."""
    a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
    to_theirs = np.linalg.inv(theirs.affine) @ ours.affine
    turn = np.round(to_theirs[:3, :3]).astype(int)
    assert np.allclose(to_theirs[:3, :3], turn, atol=1e-3), "the two maps are not on one grid"
    assert np.allclose(to_theirs[:3, 3], np.round(to_theirs[:3, 3]), atol=1e-3)
    index = np.indices(a.shape).reshape(3, -1)
    mapped = turn @ index + np.round(to_theirs[:3, 3]).astype(int)[:, None]
    assert np.all(mapped >= 0) and np.all(mapped < np.array(b.shape)[:, None]), (
        "grids do not cover each other"
    )
    return int((a.reshape(-1) != b[tuple(mapped)]).sum())


def voxpipe_infer(task: str, image: Path, out: Path, weights: Path, *flags: str) -> int:
    """``voxpipe infer TASK IMAGE -o OUT --ml`` on the weights folder, on the CPU: the exit code."""
    from voxpipe.cli import main

    return main(
        [
            "infer",
            task,
            str(image),
            "-o",
            str(out),
            "--ml",
            "--weights-dir",
            str(weights),
            "--device",
            "cpu",
            *flags,
        ]
    )
