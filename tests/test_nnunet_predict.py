"""voxpipe's nnU-Net path against nnunetv2 2.8.1's own nnUNetPredictor on generated model folders.

The oracle runs in a child process over the packages ``make oracle`` installs into ``.oracle/nnunet``
(or ``$VOXPIPE_NNUNET_ORACLE``): nnunetv2 and its dependencies, installed without the ones that
would replace the CPU torch. Random-init networks: their logits are near-tied, the hardest case for
"identical labels".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from voxpipe.networks.nnunet import network_from_plans
from voxpipe.pipelines.inference.nnunet.model import NnUNetModel

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("VOXPIPE_NNUNET_ORACLE", REPO / ".oracle" / "nnunet"))


def _oracle_site() -> Path:
    if not (ORACLE / "skimage").is_dir():
        if os.environ.get("VOXPIPE_REQUIRE_REFERENCES") == "1":
            pytest.fail(f"the nnU-Net oracle is not installed in {ORACLE} (make oracle)")
        pytest.skip(f"the nnU-Net oracle is not installed in {ORACLE} (make oracle)")
    return ORACLE


def _architecture(dims, stages, kernels, strides, features, kind="PlainConvUNet"):
    from test_nnunet_networks import plain

    architecture = plain(dims, stages=stages, kernels=kernels, strides=strides, features=features)
    arch = architecture["arch_kwargs"]
    arch["n_conv_per_stage_decoder"] = [1] * (stages - 1)
    del arch["n_conv_per_stage"]
    arch["n_blocks_per_stage" if kind == "ResidualEncoderUNet" else "n_conv_per_stage"] = [1] * stages
    architecture["network_class_name"] = f"dynamic_network_architectures.architectures.unet.{kind}"
    return architecture


def make_model(
    root: Path,
    *,
    spacing,
    patch,
    schemes,
    labels,
    folds=(0,),
    kind="PlainConvUNet",
    transpose=(0, 1, 2),
    properties=None,
    seed=0,
    use_mask=None,
    reader="SimpleITKIO",
    channel_names=None,
    configuration_name=None,
    previous_stage=None,
    features=(4, 8, 16),
):
    """A model folder of the real layout with random-init weights (the same keys nnU-Net saves);
    a 2-value ``patch`` and ``spacing`` make a ``2d`` configuration; ``previous_stage`` a cascade
    stage (the first stage's foreground labels as extra input channels)."""
    channels = len(schemes)
    dims = len(patch)
    name = configuration_name or ("3d_fullres" if dims == 3 else "2d")
    architecture = _architecture(
        dims, 3, [[3] * dims] * 3, [[1] * dims, [2] * dims, [2] * dims], list(features), kind
    )
    configuration = {
        "data_identifier": f"nnUNetPlans_{name}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [64, 64, 64],
        "spacing": list(spacing),
        "normalization_schemes": list(schemes),
        "use_mask_for_norm": list(use_mask or [False] * channels),
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "architecture": architecture,
        "batch_dice": False,
    }
    if previous_stage:
        configuration["previous_stage"] = previous_stage
    plans = {
        "dataset_name": "Dataset900_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": reader,
        "transpose_forward": list(transpose),
        "transpose_backward": [int(i) for i in np.argsort(transpose)],
        "configurations": {name: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": properties
        or {
            str(c): {
                "max": 3000.0,
                "mean": 80.0,
                "median": 60.0,
                "min": -1000.0,
                "percentile_00_5": -900.0,
                "percentile_99_5": 1200.0,
                "std": 250.0,
            }
            for c in range(channels)
        },
    }
    dataset = {
        "channel_names": {str(c): s for c, s in enumerate(channel_names or ["CT"] * channels)},
        "labels": labels,
        "numTraining": 10,
        "file_ending": ".nii.gz",
    }
    folder = root / f"nnUNetTrainer__nnUNetPlans__{name}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    regions = any(isinstance(v, list) for v in labels.values())
    heads = sum(1 for k, v in labels.items() if k != "background") if regions else len(labels)
    foreground = {
        int(v) for value in labels.values() for v in (value if isinstance(value, list) else [value])
    }
    inputs = channels + (len(foreground - {0}) if previous_stage else 0)
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = network_from_plans(plans, configuration, input_channels=inputs, num_classes=heads)
        (folder / f"fold_{fold}").mkdir()
        torch.save(
            {
                "network_weights": network.state_dict(),
                "trainer_name": "nnUNetTrainer",
                "init_args": {
                    "plans": plans,
                    "configuration": name,
                    "fold": fold,
                    "dataset_json": dataset,
                },
                "inference_allowed_mirroring_axes": tuple(range(dims)),
                "current_epoch": 1000,
            },
            folder / f"fold_{fold}" / "checkpoint_final.pth",
        )
    return folder


def liver_model(tmp_path: Path, *, folds=(0,)):
    """A small CT model of three labels (background, liver, tumour) at 2 mm."""
    return make_model(
        tmp_path / "model",
        spacing=[2.0, 2.0, 2.0],
        patch=[16, 16, 16],
        schemes=["CTNormalization"],
        labels={"background": 0, "liver": 1, "tumour": 2},
        folds=folds,
    )


def make_image(path: Path, *, shape, spacing, direction=None, seed=0, zero_border=True):
    rng = np.random.default_rng(seed)
    z, y, x = shape
    grid = np.indices(shape).astype(np.float32)
    body = ((grid[1] - y / 2) ** 2 / (y / 2.5) ** 2 + (grid[2] - x / 2) ** 2 / (x / 2.5) ** 2) < 1
    array = np.where(
        body, 40 + 300 * np.sin(grid[0] / 3) * np.cos(grid[2] / 5) + rng.normal(0, 30, shape), -1000
    )
    if zero_border:
        array[:, :2] = 0  # outside the reconstruction: crop to non-zero has work to do
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin((12.5, -30.0, 7.0))
    if direction is not None:
        image.SetDirection([float(v) for v in direction])
    sitk.WriteImage(image, str(path))
    return path


def run_oracle(folder, images, out, *extra):
    site = _oracle_site()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "oracles" / "nnunet_predict.py"),
            str(folder),
            str(out),
            *map(str, images),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)["segmentation"]


def oracle_logits(out):
    """The fold-averaged float16 logits nnU-Net computed on its preprocessed grid (run_oracle's file)."""
    return np.load(out)["logits"]


CASES = {
    # name: (model options, image options)
    "isotropic CT, two folds, LPS-like direction": (
        {
            "spacing": [2.0, 2.0, 2.0],
            "patch": [16, 24, 24],
            "schemes": ["CTNormalization"],
            "folds": (0, 1),
            "labels": {"background": 0, "liver": 1, "tumour": 2},
        },
        {"shape": (30, 40, 36), "spacing": (1.6, 1.4, 2.5), "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)},
    ),
    "anisotropic: separate z": (
        {
            "spacing": [5.0, 1.5, 1.5],
            "patch": [8, 32, 32],
            "schemes": ["CTNormalization"],
            "labels": {"background": 0, "organ": 1},
        },
        {"shape": (12, 48, 40), "spacing": (1.1, 1.2, 6.0)},
    ),
    "z-score with mask, transposed": (
        {
            "spacing": [1.5, 2.0, 2.5],
            "patch": [16, 16, 16],
            "schemes": ["ZScoreNormalization"],
            "use_mask": [True],
            "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
            "transpose": (2, 0, 1),
        },
        {"shape": (20, 30, 26), "spacing": (2.2, 1.3, 1.9)},
    ),
    "ResEnc, mirroring": (
        {
            "spacing": [2.0, 2.0, 2.0],
            "patch": [16, 16, 16],
            "schemes": ["CTNormalization"],
            "kind": "ResidualEncoderUNet",
            "labels": {"background": 0, "liver": 1},
            "mirroring": True,
        },
        {"shape": (22, 26, 30), "spacing": (1.5, 1.8, 2.4)},
    ),
    "2d, mirroring": (
        {
            "spacing": [1.5, 1.5],
            "patch": [24, 24],
            "schemes": ["CTNormalization"],
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "mirroring": True,
        },
        {"shape": (7, 34, 30), "spacing": (1.2, 1.3, 3.0)},
    ),
    "2-channel MR, z-score, NibabelIO": (
        {
            "spacing": [2.0, 2.0, 2.0],
            "patch": [16, 16, 16],
            "schemes": ["ZScoreNormalization", "ZScoreNormalization"],
            "channel_names": ["T2", "ADC"],
            "labels": {"background": 0, "zone": 1},
            "reader": "NibabelIO",
        },
        {"shape": (20, 26, 22), "spacing": (1.4, 1.6, 2.6), "direction": (0, -1, 0, -1, 0, 0, 0, 0, 1)},
    ),
    "reoriented: NibabelIOWithReorient, separate z": (
        {
            "spacing": [4.0, 1.5, 1.5],
            "patch": [8, 24, 24],
            "schemes": ["CTNormalization"],
            "labels": {"background": 0, "organ": 1, "other": 2},
            "reader": "NibabelIOWithReorient",
        },
        {"shape": (10, 36, 30), "spacing": (1.3, 1.1, 5.0), "direction": (-1, 0, 0, 0, 0, 1, 0, -1, 0)},
    ),
    "regions": (
        {
            "spacing": [2.0, 2.0, 2.0],
            "patch": [16, 16, 16],
            "schemes": ["CTNormalization"],
            "labels": {"background": 0, "whole": [1, 2], "core": 2},
        },
        {"shape": (24, 30, 28), "spacing": (1.7, 1.7, 2.2)},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_labels_equal_nnunets_predictor(tmp_path, name):
    model_options, image_options = CASES[name]
    model_options = dict(model_options)
    mirroring = model_options.pop("mirroring", False)
    folder = make_model(tmp_path, **model_options)
    channels = len(model_options["schemes"])
    images = [make_image(tmp_path / f"case_{c:04d}.nii.gz", **image_options, seed=c) for c in range(channels)]
    image = images[0]
    if "regions" in name:
        dataset = json.loads((folder / "dataset.json").read_text())
        dataset["regions_class_order"] = [1, 2]
        (folder / "dataset.json").write_text(json.dumps(dataset))
    expected = run_oracle(folder, images, tmp_path / "oracle.npz", *(["--mirroring"] if mirroring else []))
    predictor = NnUNetModel(folder, mirroring=mirroring)
    found, case = predictor.predict(images)
    assert found.shape == expected.shape
    differ = int((found != expected).sum())
    assert differ == 0, f"{differ} of {found.size} voxels differ; classes {np.unique(expected).tolist()}"
    # the numbers behind the labels: logits on the preprocessed grid, and their probabilities
    from voxpipe.pipelines.inference.nnunet.readers import read_case

    reader = json.loads((folder / "plans.json").read_text())["image_reader_writer"]
    logits = predictor.logits(predictor.preprocess(read_case(images, reader=reader))).numpy()
    theirs = oracle_logits(tmp_path / "oracle.npz")
    assert logits.shape == theirs.shape and logits.dtype == theirs.dtype == np.float16
    nonlinear = torch.sigmoid if "regions" in name else lambda x: torch.softmax(x, 0)
    ours_p, theirs_p = (nonlinear(torch.from_numpy(x).float()) for x in (logits, theirs))
    assert float((ours_p - theirs_p).abs().max()) <= 1e-4
    assert np.array_equal(logits, theirs)  # in fact to the bit
    written = predictor.write(found, case, tmp_path / "out.nii.gz")
    source, label = sitk.ReadImage(str(image)), sitk.ReadImage(str(written))
    assert label.GetSpacing() == source.GetSpacing() and label.GetDirection() == source.GetDirection()
    assert label.GetOrigin() == source.GetOrigin()


def test_voxpipe_infer_runs_a_model_folder_case_by_case_with_failures_resume_and_statistics(tmp_path):
    from voxpipe.cli import main

    folder = liver_model(tmp_path, folds=(0, 1))
    inputs = tmp_path / "in"
    inputs.mkdir()
    make_image(inputs / "a_0000.nii.gz", shape=(20, 24, 22), spacing=(1.5, 1.5, 2.0))
    make_image(inputs / "b_0000.nii.gz", shape=(18, 20, 20), spacing=(2.0, 1.5, 2.5), seed=1)
    (inputs / "broken_0000.nii.gz").write_bytes((inputs / "a_0000.nii.gz").read_bytes()[:200])
    assert main(["infer", str(folder), str(inputs), "-o", str(tmp_path / "out")]) == 2  # one case failed
    written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert written == ["a.nii.gz", "b.nii.gz"]  # nnU-Net's names: the channel suffix dropped
    statistics = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert set(statistics) == {"a", "b"} and "liver" in statistics["a"]
    # nnUNetv2_predict's default: mirroring over the checkpoint's axes (--disable-tta turns it off)
    direct, _ = NnUNetModel(folder, mirroring=True).predict([inputs / "a_0000.nii.gz"])
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "a.nii.gz")))
    assert np.array_equal(label, direct)
    (inputs / "broken_0000.nii.gz").unlink()
    before = (tmp_path / "out" / "a.nii.gz").stat().st_mtime_ns
    assert (
        main(["infer", str(folder), str(inputs), "-o", str(tmp_path / "out"), "--resume", "--folds", "1"])
        == 0
    )
    assert (tmp_path / "out" / "a.nii.gz").stat().st_mtime_ns == before  # resumed: not run again


@pytest.mark.slow
def test_an_imported_bundle_runs_under_monais_runner_with_equal_labels(tmp_path):
    from voxpipe.cli import main

    folder = liver_model(tmp_path, folds=(0, 1))
    image = make_image(tmp_path / "ct.nii.gz", shape=(20, 24, 22), spacing=(1.5, 1.5, 2.0))
    bundle = tmp_path / "bundle"
    assert main(["bundle", "import-nnunet", str(folder), "-o", str(bundle)]) == 0
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(bundle / "configs" / "inference.json"),
            "--meta_file",
            str(bundle / "configs" / "metadata.json"),
            "--bundle_root",
            str(bundle),
            "--datalist",
            f"['{image}']",
            "--output_dir",
            str(tmp_path / "monai"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    command = [
        "infer",
        str(folder),
        str(image),
        "-o",
        str(tmp_path / "voxpipe"),
        "--no-statistics",
        "--disable-tta",
    ]
    assert main(command) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "voxpipe" / "ct.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "monai" / "ct.nii.gz")))
    assert np.array_equal(ours, theirs) and len(np.unique(ours)) > 1
    assert (
        main(
            [
                "bundle",
                "run",
                str(bundle),
                "--safe",
                "--set",
                f"datalist=['{image}']",
                "--set",
                f"output_dir={tmp_path / 'safe'}",
            ]
        )
        == 0
    )
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "safe" / "ct.nii.gz"))), ours)


@pytest.mark.slow
def test_a_dicom_series_is_segmented_and_written_back_as_dicom_seg(tmp_path):
    from test_deploy import write_series

    from voxpipe.cli import main
    from voxpipe.transforms.dicom_seg import read_seg, seg_to_label_map
    from voxpipe.transforms.io import load_volume, save_nifti

    folder = liver_model(tmp_path)
    _, files = write_series(tmp_path / "series")
    series = files[0].parent
    out = tmp_path / "out"
    assert main(["infer", str(folder), str(series), "-o", str(out), "--dicom-seg", "--disable-tta"]) == 0
    label = load_volume(out / "series.nii.gz", label=True)
    source = load_volume(series)
    assert label.array.shape == source.array.shape and np.allclose(label.affine, source.affine, atol=1e-4)
    # the same as the model on the series written as NIfTI by voxpipe's loader
    save_nifti(np.asarray(source.array), source.affine, tmp_path / "series_0000.nii.gz")
    direct, _ = NnUNetModel(folder).predict([tmp_path / "series_0000.nii.gz"])
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "series.nii.gz"))), direct)
    seg = read_seg(out / "series.dcm")
    assert np.array_equal(seg_to_label_map(seg, label.array.shape, label.affine), label.array)
    assert not list(out.glob(".voxpipe-series.*"))  # the scratch copy is gone
    with pytest.raises(Exception, match="expected DICOM series folders"):
        from voxpipe.pipelines.inference.nnunet.run import infer_with_nnunet

        infer_with_nnunet(
            folder, [tmp_path / "series_0000.nii.gz"], output_dir=tmp_path / "o2", dicom_seg=True
        )


def test_the_fast_path_skips_windows_without_body_and_bundle_options_are_refused(tmp_path, capsys):
    from voxpipe.cli import main

    folder = liver_model(tmp_path)
    array = np.full((24, 40, 40), -1000, np.int16)  # air, with a body in one corner
    array[:10, :14, :14] = 60
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "ct_0000.nii.gz"))
    predictor = NnUNetModel(folder, fast=True)
    found, _ = predictor.predict([tmp_path / "ct_0000.nii.gz"])
    reference, _ = NnUNetModel(folder).predict([tmp_path / "ct_0000.nii.gz"])
    assert predictor.skipped > 0
    assert not found[16:, 24:, 24:].any()  # reached by no window that was run: background
    assert reference[16:, 24:, 24:].any()  # (the random network finds something in air)
    out = tmp_path / "out"
    command = ["infer", str(folder), str(tmp_path / "ct_0000.nii.gz"), "-o", str(out), "--approximate"]
    assert main([*command, "--disable-tta"]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz"))), found)
    code = main(
        ["infer", str(folder), str(tmp_path / "ct_0000.nii.gz"), "-o", str(out), "--precision", "bf16"]
    )
    assert code == 2 and "runs without --precision" in capsys.readouterr().err


def test_the_cuda_arithmetic_equals_nnunets_on_a_gpu_run_here_on_the_cpu(tmp_path):
    """On CUDA voxpipe runs nnU-Net's windows under fp16 autocast and keeps the window arithmetic in
    float16, as nnU-Net's predictor does there. The same torch code, on the CPU with fp16 autocast,
    against nnU-Net's own predictor with its CUDA-only autocast turned on for the CPU."""
    from voxpipe.pipelines.inference.nnunet.readers import read_case

    folder = make_model(
        tmp_path / "model",
        spacing=[2.0, 2.0, 2.0],
        patch=[16, 16, 16],
        schemes=["CTNormalization"],
        labels={"background": 0, "liver": 1, "tumour": 2},
        folds=(0, 1),
    )
    # four overlapping windows (2 x 2 x 1), each 8 mirrored passes per fold: small, since CPU fp16 is slow
    images = [make_image(tmp_path / "ct_0000.nii.gz", shape=(22, 20, 16), spacing=(1.8, 2.0, 2.0), seed=4)]
    expected = run_oracle(folder, images, tmp_path / "oracle.npz", "--mirroring", "--gpu-arithmetic")
    model = NnUNetModel(folder, mirroring=True, device="cpu")
    model.precision = "fp16"  # what a CUDA device chooses (nnunet.model._precision), here on the CPU
    logits = model.logits(model.preprocess(read_case(images)))
    assert logits.dtype == torch.float16
    assert torch.equal(logits, torch.from_numpy(oracle_logits(tmp_path / "oracle.npz")))
    found, _ = model.predict(images)
    np.testing.assert_array_equal(found, expected)


def test_device_names_reach_the_nnunet_path_and_a_missing_gpu_is_the_users_problem(tmp_path, capsys):
    from voxpipe.cli import main
    from voxpipe.pipelines.inference.nnunet.model import _precision

    assert _precision(torch.device("cuda"), fast=False) == "fp16"  # nnU-Net's autocast on a GPU
    assert _precision(torch.device("mps"), fast=True) == "fp32"
    folder = liver_model(tmp_path)
    image = make_image(tmp_path / "ct_0000.nii.gz", shape=(12, 20, 20), spacing=(2.0, 2.0, 2.0))
    out = tmp_path / "out"
    assert main(["infer", str(folder), str(image), "-o", str(out), "--device", "cpu"]) == 0
    assert (out / "ct.nii.gz").is_file()
    if not torch.cuda.is_available():
        code = main(["infer", str(folder), str(image), "-o", str(tmp_path / "gpu"), "--device", "cuda:0"])
        assert code == 2 and "expected an available CUDA device" in capsys.readouterr().err
        assert not (tmp_path / "gpu" / "ct.nii.gz").exists()
    with pytest.raises(SystemExit):
        main(["infer", str(folder), str(image), "-o", str(out), "--device", "gpu"])
    assert "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cascade_runs_its_first_stage_and_equals_nnunets_cascade(tmp_path):
    labels = {"background": 0, "liver": 1, "tumour": 2}
    common = {"patch": [16, 16, 16], "schemes": ["CTNormalization"], "labels": labels}
    low = make_model(tmp_path / "a", spacing=[3.0, 3.0, 3.0], configuration_name="3d_lowres", **common)
    full = make_model(
        tmp_path / "b",
        spacing=[1.8, 1.8, 1.8],
        configuration_name="3d_cascade_fullres",
        previous_stage="3d_lowres",
        seed=5,
        **common,
    )
    plans = json.loads((low / "plans.json").read_text())  # one plans file with both configurations
    plans["configurations"].update(json.loads((full / "plans.json").read_text())["configurations"])
    models = tmp_path / "models"
    models.mkdir()
    for folder in (low, full):
        (folder / "plans.json").write_text(json.dumps(plans))
        folder.rename(models / folder.name)
    image = make_image(tmp_path / "case_0000.nii.gz", shape=(26, 30, 28), spacing=(1.5, 1.6, 2.0))
    expected = run_oracle(models / full.name, [image], tmp_path / "oracle.npz")
    predictor = NnUNetModel(models / full.name)
    found, _ = predictor.predict([image])
    assert predictor.previous is not None and predictor.previous.folder.configuration_name == "3d_lowres"
    assert int((found != expected).sum()) == 0 and len(np.unique(found)) > 1
    first, _ = NnUNetModel(models / low.name).predict([image])
    assert not np.array_equal(found, first)  # the second stage did something of its own
    (models / low.name).rename(tmp_path / "gone")
    with pytest.raises(Exception, match="3d_lowres' model folder beside"):
        NnUNetModel(models / full.name)


def test_save_probabilities_writes_nnunets_npz_and_pkl_with_its_values(tmp_path):
    import pickle

    from voxpipe.cli import main

    folder = make_model(
        tmp_path / "model",
        spacing=[2.0, 2.0, 2.0],
        patch=[16, 16, 16],
        schemes=["CTNormalization"],
        labels={"background": 0, "liver": 1, "tumour": 2},
        transpose=(2, 0, 1),
    )
    image = make_image(tmp_path / "ct_0000.nii.gz", shape=(14, 22, 18), spacing=(1.6, 2.2, 2.5), seed=6)
    expected = run_oracle(folder, [image], tmp_path / "oracle.npz", "--mirroring", "--probabilities")
    theirs = np.load(tmp_path / "oracle.npz")["probabilities"]
    out = tmp_path / "out"
    assert (
        main(["infer", str(folder), str(image), "-o", str(out), "--save-probabilities", "--no-statistics"])
        == 0
    )
    ours = np.load(out / "ct.npz")["probabilities"]
    assert ours.shape == theirs.shape == (3, 14, 22, 18) and ours.dtype == np.float32
    assert np.array_equal(ours, theirs)  # nnU-Net's own values, float32, bit for bit
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz"))), expected)
    properties = pickle.loads((out / "ct.pkl").read_bytes())
    # nnU-Net's properties: the shape after its transpose_forward (2, 0, 1), the spacing as read
    assert properties["shape_before_cropping"] == (18, 14, 22) and np.allclose(
        properties["spacing"], [2.5, 2.2, 1.6]
    )
