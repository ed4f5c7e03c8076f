"""The lung-tumour bundle (3D U-Net, MSD Task06 labels): MONAI properties, configs that agree,
tiny-data training, inference onto the input grid."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from voxpipe.phantoms.ct import write_msd_dataset
from voxpipe.pipelines.bundles.config import find_config, shipped_bundle
from voxpipe.pipelines.bundles.run import run_bundle
from voxpipe.pipelines.inference.infer import infer_with_bundle

SMALL_UNET = {
    "patch_size": [32, 32, 32],
    "network_def#channels": [8, 16, 32],
    "network_def#strides": [2, 2],
    "progress": False,
}


@pytest.fixture(scope="module")
def lung_bundle():
    return shipped_bundle("lung_tumor_ct_unet")


@pytest.fixture(scope="module")
def tiny_lung(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lung_bundle")
    write_msd_dataset(root, task="lung", n_train=4, n_test=2, seed=11, size="tiny")
    return root


@pytest.mark.parametrize(
    "config,workflow_type", [("train", "train"), ("inference", "infer"), ("evaluate", "infer")]
)
def test_lung_configs_declare_monai_properties(lung_bundle, tiny_lung, config, workflow_type):
    workflow = ConfigWorkflow(
        config_file=str(find_config(lung_bundle, config)),
        meta_file=str(lung_bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        dataset_dir=str(tiny_lung),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_lung_configs_agree(lung_bundle):
    train = ConfigParser.load_config_file(find_config(lung_bundle, "train"))
    for other in ("inference", "evaluate"):
        config = ConfigParser.load_config_file(find_config(lung_bundle, other))
        for key in ("pixdim", "hu_window", "patch_size", "num_classes"):
            assert train[key] == config[key], (other, key)
        assert {k: v for k, v in train["network_def"].items() if k not in ("weights", "freeze")} == config[
            "network_def"
        ]
    assert train["network_def"]["name"] == "unet3d" and train["num_classes"] == 2
    deployed = ConfigParser.load_config_file(find_config(lung_bundle, "inference"))["inferer"]
    window = (
        "roi_size",
        "sw_batch_size",
        "overlap",
        "mode",
    )  # inference adds body crop and reduced precision
    assert {k: train["validate"]["inferer"][k] for k in window} == {k: deployed[k] for k in window}


@pytest.mark.slow
def test_lung_bundle_trains_and_infers_on_tiny_phantoms(lung_bundle, tiny_lung, tmp_path):
    run = tmp_path / "run"
    run_bundle(
        lung_bundle,
        overrides={
            "dataset_dir": str(tiny_lung),
            "output_dir": str(run),
            "max_epochs": 2,
            "val_interval": 1,
            **SMALL_UNET,
        },
    )
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_tumour" in rows[0]
    images = sorted((tiny_lung / "imagesTs").glob("*.nii.gz"))
    written = infer_with_bundle(
        lung_bundle,
        images,
        output_dir=tmp_path / "predictions",
        weights=run / "models" / "model_final.pt",
        overrides=SMALL_UNET,
    )
    for image, label in zip(images, written, strict=True):
        source, predicted = nib.load(image), nib.load(label)
        assert predicted.shape == source.shape and np.allclose(predicted.affine, source.affine)
        assert set(np.unique(np.asarray(predicted.dataobj))) <= {0, 1}
    assert (tmp_path / "predictions" / "statistics.csv").is_file()


@pytest.mark.slow
def test_monai_runner_trains_the_lung_bundle(lung_bundle, tiny_lung, tmp_path):
    """`python -m monai.bundle run` (MONAI's own CLI) trains it with one dataset_dir override."""
    import os
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(lung_bundle / "configs" / "train.yaml"),
        "--meta_file",
        str(lung_bundle / "configs" / "metadata.json"),
        "--bundle_root",
        str(lung_bundle),
        "--dataset_dir",
        str(tiny_lung),
        "--output_dir",
        str(tmp_path),
        "--max_epochs",
        "1",
        "--patch_size",
        "[32,32,32]",
        "--network_def#channels",
        "[8,16,32]",
        "--network_def#strides",
        "[2,2]",
        "--progress",
        "False",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "models" / "model_final.pt").is_file()
