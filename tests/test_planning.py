"""voxpipe plan: nnU-Net v2's planner rules (equal to nnunetv2 2.8.1's own output), the measured rules,
the planning fingerprint, and a planned bundle that trains with MONAI's runner and infers on the input grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from planning_cases import PHANTOM_DATASETS, fingerprint_cases, write_phantom_dataset

from voxpipe.errors import InputError
from voxpipe.pipelines.planning import topology as rules
from voxpipe.pipelines.planning.fingerprint import planning_fingerprint
from voxpipe.pipelines.planning.plan import nnunet_plan, normalisation
from voxpipe.pipelines.planning.planner import plan_dataset

EXPECTED = json.loads((Path(__file__).parent / "data" / "nnunet_plans_expected.json").read_text())


def _fingerprint(case: dict) -> dict:
    """A planning fingerprint (voxpipe's format) from a hand-made case in nnU-Net's (z, y, x)."""
    labels = {str(v): k for k, v in case["labels"].items()}
    return {
        "dataset": "handmade",
        "n_cases": len(case["spacings"]),
        "channel_names": list(case["channel_names"].values()),
        "labels": labels,
        "cases": [
            {"spacing": s, "shape_after_crop": shape, "ras_axes": [0, 1, 2]}
            for s, shape in zip(case["spacings"], case["shapes"], strict=True)
        ],
        "median_relative_size_after_cropping": case["median_relative_size_after_cropping"],
        "foreground_intensity": [
            {"channel": c, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
            for c in case["channel_names"].values()
        ],
    }


def _assert_equal_to_nnunet(plan: dict, expected: dict) -> None:
    ours = plan["nnunet_order"]
    assert ours["transpose_forward"] == expected["transpose_forward"]
    np.testing.assert_allclose(ours["spacing"], expected["spacing"], rtol=1e-12)
    assert list(ours["patch_size"]) == expected["patch_size"]
    assert plan["batch_size"] == expected["batch_size"]
    assert [list(k) for k in ours["pool_op_kernel_sizes"]] == expected["pool_op_kernel_sizes"]
    assert [list(k) for k in ours["conv_kernel_sizes"]] == expected["conv_kernel_sizes"]
    assert plan["features_per_stage"] == expected["features_per_stage"]
    np.testing.assert_allclose(ours["median_image_size_in_voxels"], expected["median_image_size_in_voxels"])
    assert plan["lowres"]["worthwhile"] == (expected["lowres"] is not None)
    if expected["lowres"]:
        forward = expected["transpose_forward"]
        low_zyx = np.empty(3)
        low_zyx[forward] = expected["lowres"]["spacing"]
        np.testing.assert_allclose(plan["lowres"]["target_spacing"], low_zyx[::-1], rtol=1e-12)


@pytest.mark.parametrize("name", list(fingerprint_cases()))
def test_nnunet_rules_equal_nnunetv2_on_handmade_fingerprints(name):
    case = fingerprint_cases()[name]
    fingerprint = _fingerprint(case)
    plan = nnunet_plan(fingerprint, gpu_memory_gb=case["gpu_memory_gb"])
    expected = EXPECTED["fingerprints"][name]
    _assert_equal_to_nnunet(plan, expected)
    assert [n["scheme"] for n in normalisation(fingerprint)] == expected["normalization_schemes"]
    assert [n["use_mask_for_norm"] for n in normalisation(fingerprint)] == expected["use_mask_for_norm"]
    # voxpipe's (x, y, z): nnU-Net's transposed (z, y, x) put back in storage order, then reversed.
    backward = plan["nnunet_order"]["transpose_backward"]
    zyx = [expected["patch_size"][backward[j]] for j in range(3)]
    assert plan["patch_size"] == zyx[::-1]
    assert plan["target_spacing"] == pytest.approx([expected["spacing"][backward[j]] for j in range(3)][::-1])


@pytest.mark.parametrize("name", list(PHANTOM_DATASETS))
def test_fingerprint_and_plan_equal_nnunetv2_on_phantom_datasets(name, tmp_path):
    folder = write_phantom_dataset(name, tmp_path)
    expected = EXPECTED["datasets"][name]
    fingerprint = planning_fingerprint(folder)
    assert fingerprint["layout"] == "nnunet"
    np.testing.assert_allclose([c["spacing"] for c in fingerprint["cases"]], expected["spacings"], rtol=1e-12)
    assert [c["shape_after_crop"] for c in fingerprint["cases"]] == expected["shapes_after_crop"]
    assert fingerprint["median_relative_size_after_cropping"] == pytest.approx(
        expected["median_relative_size_after_cropping"]
    )
    _assert_equal_to_nnunet(nnunet_plan(fingerprint), expected)


def test_topology_rules_on_small_examples():
    iso = rules.topology([1.0, 1.0, 1.0], [128, 128, 128])
    assert (
        iso.patch_size == (128, 128, 128) and iso.pools_per_axis == [5, 5, 5] and len(iso.pool_kernels) == 6
    )
    aniso = rules.topology(
        [5.0, 0.8, 0.8], [20, 192, 160]
    )  # 5 mm slices: pool in-plane first, 1 × 3 × 3 kernels
    assert aniso.pool_kernels[1] == (1, 2, 2) and aniso.conv_kernels[0] == (1, 3, 3)
    assert all(s % d == 0 for s, d in zip(aniso.patch_size, aniso.divisor, strict=True))
    assert list(rules.pad_to_multiple([97.5, 64, 65], [16, 16, 16])) == [112, 64, 80]
    # A single poolable axis pools only while it is >= 3 x the minimal edge: 40 → 20 → 10, and 10 < 12 stops.
    assert rules.topology([1.0, 1.0, 1.0], [8, 8, 40]).pools_per_axis == [1, 1, 2]
    spacing, why = rules.target_spacing(
        np.array([[5.0, 0.8, 0.8]] * 4 + [[1.0, 0.8, 0.8]]), np.array([[40, 512, 512]] * 5)
    )
    assert (
        why["anisotropic_spacing"] and why["anisotropic_voxels"] and spacing[0] == pytest.approx(2.6)
    )  # 10th pct of (1, 5, 5, 5, 5)


def test_nnunet_memory_target_changes_patch_and_batch():
    case = fingerprint_cases()["isotropic_1mm"]
    small, large = (nnunet_plan(_fingerprint(case), gpu_memory_gb=gb) for gb in (4.0, 40.0))
    assert np.prod(small["patch_size"]) < np.prod(large["patch_size"])
    with pytest.raises(InputError, match="gpu-memory"):
        nnunet_plan(_fingerprint(case), gpu_memory_gb=1e-9)


def test_plan_follows_ras_when_storage_axes_are_permuted(tmp_path):
    """A sagittally stored dataset: storage axis i runs along world y, j along z, k along x."""

    root = tmp_path / "sagittal"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.array(
        [[0, 0, 0.8, 0], [0.8, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, 1]], dtype=float
    )  # i→y 0.8, j→z 4, k→x 0.8
    rng = np.random.default_rng(0)
    for index in range(3):
        image = rng.normal(0, 1, (64, 16, 64)).astype(np.float32) + 5
        label = np.zeros((64, 16, 64), np.uint8)
        label[20:40, 4:10, 20:40] = 1
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{index}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{index}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "organ": 1},
                "numTraining": 3,
                "file_ending": ".nii.gz",
            }
        )
    )
    fingerprint = planning_fingerprint(root)
    assert fingerprint["cases"][0]["ras_axes"] == [1, 2, 0]
    plan = nnunet_plan(fingerprint)
    assert plan["target_spacing"] == pytest.approx([0.8, 0.8, 4.0])  # world x, y, z
    assert plan["patch_size"][2] < plan["patch_size"][0]  # the coarse axis is world z
    assert normalisation(fingerprint)[0]["scheme"] == "ZScoreNormalization"


def test_bad_datasets_are_refused_with_the_file_named(tmp_path):
    root = tmp_path / "regions"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), root / "imagesTr" / "a_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4)), root / "labelsTr" / "a.nii.gz")
    info = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "whole": [1, 2], "core": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"case 'a': expected channels \[0, 1\]"):
        planning_fingerprint(root)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 9), np.float32), np.eye(4)), root / "imagesTr" / "a_0001.nii.gz")
    with pytest.raises(InputError, match="region-based"):
        planning_fingerprint(root)
    info["labels"] = {"background": 0, "core": 1}
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="a_0001.nii.gz.*expected the grid of"):
        planning_fingerprint(root)
    with pytest.raises(InputError, match="--rules"):
        plan_dataset(root, tmp_path / "out", rules="nnunet2")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_multichannel_dataset_is_planned_with_per_channel_normalisation(tmp_path):
    root = tmp_path / "prostate"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([0.6, 0.6, 3.6, 1.0])
    rng = np.random.default_rng(1)
    for index in range(3):
        label = np.zeros((48, 48, 12), np.uint8)
        label[16:32, 16:32, 4:8] = 1
        for channel in range(2):
            image = np.zeros((48, 48, 12), np.float32)
            image[4:44, 4:44, :] = rng.normal(
                100 * (channel + 1), 10, (40, 40, 12)
            )  # zero outside: cropping matters
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"p{index}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"p{index}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T2", "1": "ADC"},
                "labels": {"background": 0, "prostate": 1},
                "numTraining": 3,
                "file_ending": ".nii.gz",
            }
        )
    )
    plan = plan_dataset(root, tmp_path / "bundle", rules="nnunet")
    assert (
        plan["channels"] == ["T2", "ADC"]
        and [n["scheme"] for n in plan["normalisation"]] == ["ZScoreNormalization"] * 2
    )
    fingerprint = json.loads((tmp_path / "bundle" / "fingerprint.json").read_text())
    assert fingerprint["cases"][0]["shape_after_crop"] == [12, 40, 40]
    assert plan["normalisation"][0]["use_mask_for_norm"]  # (40 * 40) / (48 * 48) = 69 % kept < 75 %
    import yaml

    train = yaml.safe_load((tmp_path / "bundle" / "configs" / "train.yaml").read_text())
    assert train["network_def"]["in_channels"] == 2 and "hu_window" not in train
    steps = [t["_target_"] for t in train["preprocessing_transforms"]]
    assert "NormalizeIntensityd" in steps and "ScaleIntensityRanged" not in steps
    assert train["preprocessing_transforms"][0]["channels"] == 2  # LoadVolumed takes both channel files


@pytest.mark.slow
def test_planned_bundle_trains_with_monai_runner_and_infers_on_the_input_grid(tiny_liver_dataset, tmp_path):
    bundle = tmp_path / "planned"
    plan = plan_dataset(tiny_liver_dataset, bundle)  # voxpipe rules: measured on this CPU
    written = json.loads((bundle / "plan.json").read_text())
    assert written["memory"]["peak_bytes_at_plan"] <= written["memory"]["budget_bytes"]
    assert written["timing"]["step_seconds"] > 0 and len(written["memory"]["measurements"]) >= 2
    assert "| Target spacing |" in (bundle / "plan.md").read_text()
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "train.yaml"),
        "--meta_file",
        str(bundle / "configs" / "metadata.json"),
        "--bundle_root",
        str(bundle),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--progress",
        "False",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = tmp_path / "run" / "models" / "model.pt"
    assert weights.is_file()
    from voxpipe.pipelines.inference.infer import infer_with_bundle

    image = sorted((tiny_liver_dataset / "imagesTs").glob("*.nii.gz"))[0]
    [prediction] = infer_with_bundle(
        bundle, [image], output_dir=tmp_path / "pred", weights=weights, progress=False
    )
    source, predicted = nib.load(image), nib.load(prediction)
    assert predicted.shape == source.shape and np.allclose(predicted.affine, source.affine)
    assert set(np.unique(np.asanyarray(predicted.dataobj))) <= {0, 1, 2}
    assert (
        plan["network_spec"]["name"] == "dynunet" and plan["network_spec"]["strides"] == plan["pool_kernels"]
    )


def test_nnunet_dataset_key_lists_files_explicitly(tmp_path):
    """nnU-Net v2's optional ``dataset`` key in dataset.json: file lists instead of imagesTr/labelsTr."""
    from voxpipe.pipelines.data.datalists import load_datalist

    root = tmp_path / "listed"
    (root / "somewhere").mkdir(parents=True)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    for index in range(3):
        image = np.zeros((32, 32, 12), np.float32)
        image[4:28, 4:28, 2:10] = 100.0
        label = (image > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, affine), root / "somewhere" / f"img{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "somewhere" / f"seg{index}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "organ": 1},
                "numTraining": 3,
                "file_ending": ".nii.gz",
                "dataset": {
                    f"c{i}": {"images": [f"somewhere/img{i}.nii.gz"], "label": f"somewhere/seg{i}.nii.gz"}
                    for i in range(3)
                },
            }
        )
    )
    entries = load_datalist(root)
    assert [e["case"] for e in entries] == ["c0", "c1", "c2"] and entries[0]["image"].endswith("img0.nii.gz")
    fingerprint = planning_fingerprint(root)
    assert fingerprint["layout"] == "nnunet" and fingerprint["cases"][0]["shape_after_crop"] == [
        8,
        24,
        24,
    ]  # cropped, (z, y, x)


@pytest.mark.realdata
def test_fingerprint_and_plan_equal_nnunetv2_on_real_scans(real_data, tmp_path):
    """Six real CT/MR scans (0.63 × 0.63 × 5 mm to 3 mm isotropic, one a DICOM series) in nnU-Net's layout."""
    from planning_cases import write_real_dataset

    expected = EXPECTED["real"]
    fingerprint = planning_fingerprint(write_real_dataset(real_data, tmp_path / "Dataset950_real"))
    np.testing.assert_allclose([c["spacing"] for c in fingerprint["cases"]], expected["spacings"], rtol=1e-12)
    assert [c["shape_after_crop"] for c in fingerprint["cases"]] == expected["shapes_after_crop"]
    _assert_equal_to_nnunet(nnunet_plan(fingerprint), expected)


def _small_dataset(root, n_cases=3, *, label_value=1.0, label_affine=None, empty=False):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for index in range(n_cases):
        image = rng.normal(0, 100, (24, 24, 12)).astype(np.float32)
        label = np.zeros((24, 24, 12), np.float32)
        if not empty:
            label[8:16, 8:16, 4:8] = label_value
        nib.save(
            nib.Nifti1Image(image, np.diag([1.0, 1.0, 2.0, 1.0])), root / "imagesTr" / f"c{index}_0000.nii.gz"
        )
        affine = np.diag([1.0, 1.0, 2.0, 1.0]) if label_affine is None else label_affine
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{index}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "organ": 1},
                "numTraining": n_cases,
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


@pytest.mark.parametrize(
    "options,why",
    [
        ({"empty": True}, r"all 3 label maps are empty"),
        ({"label_value": 0.5}, r"c0.nii.gz: non-integral-label"),
        (
            {"label_affine": np.diag([1.0, 1.0, 2.0, 1.0]) + np.array([[0, 0, 0, 7.0]] + [[0] * 4] * 3)},
            r"c0.nii.gz: origin-mismatch",
        ),
        ({"n_cases": 1}, r"at least 2 patients; found 1"),
    ],
)
def test_promise_plan_refuses_what_data_check_refuses(tmp_path, options, why):
    """All-empty labels (a CT window of [0, 0]), fractional labels, a label on another grid, one patient."""
    root = _small_dataset(tmp_path / "Dataset001_x", **options)
    with pytest.raises(InputError, match=why):
        plan_dataset(root, tmp_path / "out", rules="nnunet")
    assert not (tmp_path / "out").exists()
