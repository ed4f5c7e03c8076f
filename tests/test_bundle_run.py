"""`voxpipe bundle run`: a Model-Zoo-style bundle runs unmodified and offline; missing weights name
their key; safe mode refuses code before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.networks.nets import UNet

from voxpipe.cli import main
from voxpipe.pipelines.bundles.config import weights_keys
from voxpipe.pipelines.bundles.safety import target_problem, unsafe_entries

ZOO = Path(__file__).parent / "data" / "zoo_style_bundle"


@pytest.fixture
def zoo_bundle(tmp_path):
    """A copy of the fixture bundle (it writes into its own folder, as Zoo bundles do)."""
    return Path(shutil.copytree(ZOO, tmp_path / "zoo_style_bundle"))


@pytest.fixture(scope="module")
def zoo_weights(tmp_path_factory):
    torch.manual_seed(0)
    network = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
        norm="batch",
    )
    path = tmp_path_factory.mktemp("zoo_weights") / "model.pt"
    torch.save(network.state_dict(), path)
    return path


def test_zoo_style_bundle_runs_unmodified_and_offline(
    zoo_bundle, zoo_weights, tiny_liver_dataset, tmp_path, capsys
):
    output = tmp_path / "out"
    args = [
        "bundle",
        "run",
        str(zoo_bundle),
        "--set",
        f"dataset_dir={tiny_liver_dataset}",
        "--set",
        f"output_dir={output}",
    ]
    assert (
        main(args) == 2
    )  # no weights shipped (large_files.yml lists them): a clear error, nothing downloaded
    error = capsys.readouterr().err
    assert "handlers#0#load_path: expected the network weights file" in error and "models/model.pt" in error
    assert not output.exists()

    assert main([*args, "--weights", str(zoo_weights)]) == 0
    images = sorted((tiny_liver_dataset / "imagesTs").glob("*.nii.gz"))
    for image in images:
        written = output / image.name.replace(".nii.gz", "_seg.nii.gz")
        assert nib.load(written).shape[:3] == nib.load(image).shape  # Invertd put it back on the input grid


def test_weights_keys_follow_references_and_expressions():
    assert weights_keys(
        {"checkpoint": "m.pt", "handlers": [{"_target_": "CheckpointLoader", "load_path": "@checkpoint"}]}
    ) == ["checkpoint"]
    zoo = json.loads((ZOO / "configs" / "inference.json").read_text())
    assert weights_keys(zoo) == ["handlers#0#load_path"]


def test_safe_mode_lists_every_code_entry_of_a_zoo_bundle(zoo_bundle, zoo_weights, capsys):
    assert main(["bundle", "run", str(zoo_bundle), "--weights", str(zoo_weights), "--safe"]) == 2
    error = capsys.readouterr().err
    # Checked as it will run: --weights replaced the load_path expression, so that one is not refused.
    assert "safe mode refused 10 entries" in error
    for key in (
        "imports#0",
        "imports#1",
        "output_dir",
        "datalist",
        "device",
        "network",
        "dataset#data",
        "initialize#0",
        "initialize#1",
        "run#0",
    ):
        assert f"inference.json: {key}: expression" in error, key
    assert "handlers#0#load_path" not in error


def test_safe_mode_blocks_a_shell_command_that_plain_mode_would_run(zoo_bundle, zoo_weights, tmp_path):
    marker = tmp_path / "pwned"
    config = zoo_bundle / "configs" / "inference.json"
    content = json.loads(config.read_text())
    content["initialize"] = [f"$__import__('os').system('touch {marker}')"]
    config.write_text(json.dumps(content))
    safe = [
        "bundle",
        "run",
        str(zoo_bundle),
        "--weights",
        str(zoo_weights),
        "--safe",
        "--set",
        "dataset_dir=/nonexistent",
    ]
    assert main(safe) == 2 and not marker.exists()
    main(
        ["bundle", "run", str(zoo_bundle), "--weights", str(zoo_weights), "--set", "dataset_dir=/nonexistent"]
    )
    assert marker.exists()  # without --safe a bundle is code: this is the threat


@pytest.mark.parametrize(
    "target,allowed",
    [
        ("Compose", True),
        ("monai.transforms.Compose", True),
        ("voxpipe.networks.build_network", True),
        ("torch.optim.AdamW", True),
        ("os.system", False),
        ("subprocess.run", False),
        ("builtins.eval", False),
        ("torch.hub.load", False),
        ("monai.bundle.download", False),
        ("NotAComponent", False),
    ],
)
def test_target_allow_list(target, allowed):
    assert (target_problem(target) is None) == allowed


def test_our_shipped_bundles_pass_safe_mode():
    for bundle in (
        "liver_ct_segresnet",
        "lung_tumor_ct_unet",
        "lung_nodule_ct_densenet",
        "lung_nodule_ct_retinanet",
    ):
        for config in (Path(__file__).parents[1] / "configs" / bundle / "configs").glob("*.yaml"):
            from monai.bundle import ConfigParser

            assert unsafe_entries(ConfigParser.load_config_file(config), file=config.name) == [], config


@pytest.mark.slow
def test_exported_zip_runs_with_voxpipe_and_loads_with_monai(liver_bundle, tiny_liver_dataset, tmp_path):
    from monai.bundle import download, load

    from voxpipe.networks import build_network

    torch.manual_seed(0)
    weights = tmp_path / "trained.pt"
    torch.save(build_network("segresnet", out_channels=3, init_filters=8).state_dict(), weights)
    archive = tmp_path / "liver_ct_segresnet.zip"
    assert main(["bundle", "export", str(liver_bundle), "-o", str(archive), "--weights", str(weights)]) == 0
    import zipfile

    names = zipfile.ZipFile(archive).namelist()
    assert (
        "liver_ct_segresnet/models/model.pt" in names and "liver_ct_segresnet/configs/inference.yaml" in names
    )
    metadata = json.loads(zipfile.ZipFile(archive).read("liver_ct_segresnet/configs/metadata.json"))
    assert "models/model.pt" in metadata["checksums"]["files"]

    # MONAI's own loader: download from a file:// URL (no network), then load the weights by bundle name.
    download(
        name="liver_ct_segresnet", bundle_dir=str(tmp_path / "monai"), url=archive.as_uri(), progress=False
    )
    state = load(name="liver_ct_segresnet", bundle_dir=str(tmp_path / "monai"), device="cpu")
    assert all(torch.equal(state[k], v) for k, v in torch.load(weights, weights_only=True).items())

    # voxpipe runs the zip directly; the packaged models/model.pt is the default checkpoint.
    output = tmp_path / "predictions"
    assert (
        main(
            [
                "bundle",
                "run",
                str(archive),
                "--set",
                f"dataset_dir={tiny_liver_dataset}",
                "--set",
                f"output_dir={output}",
                "--set",
                "network_def#init_filters=8",
                "--set",
                "patch_size=[32,32,16]",
                "--safe",
            ]
        )
        == 0
    )
    assert len(list(output.glob("*.nii.gz"))) == len(list((tiny_liver_dataset / "imagesTs").glob("*.nii.gz")))

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            target.writestr(item, data + b" " if item.endswith("inference.yaml") else data)
    assert main(["bundle", "run", str(tampered)]) == 2
