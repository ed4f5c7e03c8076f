"""Third-party bundles run as MONAI's runner runs them: small bundles of our own in the structures of
the Model Zoo bundles that voxpipe used to refuse (load_pretrain switches, scripts/ packages, merged
configs, other run ids, MONAI's override syntax, metadata that does not meet the schema)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import UNet

from voxpipe.cli import main
from voxpipe.pipelines.bundles.config import parse_overrides, parse_runner_arguments
from voxpipe.pipelines.bundles.validate import validate_bundle

ZOO = Path(__file__).parent / "data" / "zoo_style_bundle"
UNET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": (8, 16, 32),
    "strides": (2, 2),
    "num_res_units": 1,
    "norm": "batch",
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("zoo_weights") / "model.pt"
    torch.save(UNet(**UNET).state_dict(), path)
    return path


def variant(
    folder: Path,
    edit: Callable[[dict], dict | None] | None = None,
    *,
    files: dict[str, str] | None = None,
    configs: dict[str, dict] | None = None,
) -> Path:
    """A copy of the Zoo-style fixture with ``edit`` applied to its inference.json, plus files and configs."""
    bundle = Path(shutil.copytree(ZOO, folder))
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    if edit is not None:
        config = edit(config) or config
    config_file.write_text(json.dumps(config))
    for name, content in (configs or {}).items():
        (bundle / "configs" / name).write_text(json.dumps(content))
    for name, text in (files or {}).items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_text(text)
    return bundle


def outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_seg.nii.gz"))


def data_args(dataset: Path, out: Path) -> list[str]:
    return ["--set", f"dataset_dir={dataset}", "--set", f"output_dir={out}"]


def with_load_pretrain(config: dict) -> None:
    config["load_pretrain"] = True
    config["handlers"][0]["_disabled_"] = "$not @load_pretrain"


def test_promise_load_pretrain_false_runs_without_weights_as_monai_does(tmp_path, tiny_liver_dataset, capsys):
    bundle = variant(tmp_path / "b", with_load_pretrain)
    out = tmp_path / "out"
    assert main(["bundle", "run", str(bundle), *data_args(tiny_liver_dataset, out)]) == 2
    assert "handlers#0#load_path: expected the network weights file" in capsys.readouterr().err
    assert (
        main(
            [
                "bundle",
                "run",
                str(bundle),
                *data_args(tiny_liver_dataset, out),
                "--set",
                "load_pretrain=False",
            ]
        )
        == 0
    )
    assert len(outputs(out)) == 2
    # MONAI's runner syntax for the same switch
    assert (
        main(
            [
                "bundle",
                "run",
                str(bundle),
                "--dataset_dir",
                str(tiny_liver_dataset),
                "--output_dir",
                str(tmp_path / "o2"),
                "--load_pretrain",
                "False",
            ]
        )
        == 0
    )
    assert len(outputs(tmp_path / "o2")) == 2


SCRIPTS_NET = """import pathlib
import torch
from monai.networks.nets import UNet

pathlib.Path(__file__).with_name("imported.marker").touch()  # shows when the module was imported


class TinyNet(torch.nn.Module):
    def __init__(self, out_channels, width=8):
        super().__init__()
        self.unet = UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(width, 2 * width, 4 * width),
                         strides=(2, 2), num_res_units=1, norm="batch")

    def forward(self, x):
        return self.unet(x)
"""


def test_promise_a_bundle_with_scripts_runs_and_validates_without_importing_them(
    tmp_path, tiny_liver_dataset, capsys
):
    def edit(config: dict) -> None:
        config["network_def"] = {"_target_": "scripts.net.TinyNet", "out_channels": 2}

    bundle = variant(tmp_path / "b", edit, files={"scripts/__init__.py": "", "scripts/net.py": SCRIPTS_NET})
    spec = importlib.util.spec_from_file_location("tiny_net_for_weights", bundle / "scripts" / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (bundle / "scripts" / "imported.marker").unlink()
    weights = tmp_path / "tiny.pt"
    torch.save(module.TinyNet(2).state_dict(), weights)

    assert [p for p in validate_bundle(bundle) if p.severity == "error"] == []
    wrong = variant(
        tmp_path / "wrong",
        lambda c: c.update(network_def={"_target_": "scripts.net.TinyNet", "out_channel": 2}),
        files={"scripts/__init__.py": "", "scripts/net.py": SCRIPTS_NET},
    )
    problems = [str(p) for p in validate_bundle(wrong)]
    assert any(
        "'scripts.net.TinyNet' takes no argument 'out_channel'" in p and "out_channels" in p for p in problems
    ), problems
    missing = variant(
        tmp_path / "missing",
        lambda c: c.update(network_def={"_target_": "scripts.net.NoSuchNet"}),
        files={"scripts/__init__.py": "", "scripts/net.py": SCRIPTS_NET},
    )
    assert any("does not exist in the bundle's scripts/net.py" in str(p) for p in validate_bundle(missing))
    assert not (
        bundle / "scripts" / "imported.marker"
    ).exists()  # validation parsed the scripts, never ran them

    out = tmp_path / "out"
    assert (
        main(["bundle", "run", str(bundle), *data_args(tiny_liver_dataset, out), "--weights", str(weights)])
        == 0
    )
    assert len(outputs(out)) == 2 and (bundle / "scripts" / "imported.marker").exists()


EVALUATE_FRAGMENT = {  # refers to ids that only inference.json defines, as the Zoo's evaluate.json does with train.json
    "output_dir": "$@bundle_root + '/evaluated'",
    "handlers#1#iteration_log": True,
    "run": ["$@evaluator.run()", "$print('evaluated', len(@datalist))"],
}


def test_promise_merged_configs_are_validated_and_run_as_one(tmp_path, tiny_liver_dataset, weights, capsys):
    bundle = variant(tmp_path / "b", configs={"evaluate.json": EVALUATE_FRAGMENT})
    assert [
        str(p) for p in validate_bundle(bundle) if p.severity == "error"
    ] == []  # the fragment is checked on its base
    alone = [str(p) for p in validate_bundle(bundle, configs=["evaluate"])]
    assert any("'@evaluator' points to no config id" in p for p in alone)  # alone it really is incomplete
    out = tmp_path / "out"
    args = [
        "bundle",
        "run",
        str(bundle),
        "--config",
        "inference",
        "--config",
        "evaluate",
        *data_args(tiny_liver_dataset, out),
        "--weights",
        str(weights),
    ]
    assert main(args) == 0
    assert "evaluated 2" in capsys.readouterr().out and len(outputs(out)) == 2
    assert main([*args[:3], "--config", "inference,evaluate", *args[7:]]) == 0  # the comma form


def test_promise_metadata_and_property_findings_warn_in_run_and_fail_only_strict_validate(
    tmp_path, tiny_liver_dataset, weights, caplog
):
    bundle = variant(tmp_path / "b")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    out = tmp_path / "out"
    assert (
        main(["bundle", "run", str(bundle), *data_args(tiny_liver_dataset, out), "--weights", str(weights)])
        == 0
    )
    assert "'channel_def' is a required property" in caplog.text and len(outputs(out)) == 2
    assert main(["bundle", "validate", str(bundle)]) == 0
    assert main(["bundle", "validate", str(bundle), "--strict"]) == 2


def test_promise_validation_checks_the_configuration_after_overrides(
    tmp_path, tiny_liver_dataset, weights, capsys
):
    bundle = variant(tmp_path / "b", lambda c: c["network_def"].update(img_size=[32, 32, 16]))
    out = tmp_path / "out"
    assert (
        main(["bundle", "run", str(bundle), *data_args(tiny_liver_dataset, out), "--weights", str(weights)])
        == 2
    )
    assert "network_def#img_size: 'UNet' takes no argument 'img_size'" in capsys.readouterr().err
    replacement = json.dumps(
        {"_target_": "UNet", **{k: list(v) if isinstance(v, tuple) else v for k, v in UNET.items()}}
    )
    assert (
        main(
            [
                "bundle",
                "run",
                str(bundle),
                *data_args(tiny_liver_dataset, out),
                "--weights",
                str(weights),
                "--set",
                f"network_def={replacement}",
            ]
        )
        == 0
    )
    assert len(outputs(out)) == 2
    assert validate_bundle(bundle, configs=["inference"], overrides={"network_def#img_size": None}) != []
    assert [
        p
        for p in validate_bundle(
            bundle, configs=["inference"], overrides={"network_def": json.loads(replacement)}
        )
        if p.severity == "error"
    ] == []


def test_promise_lambda_defaults_are_read_as_monai_reads_references(tmp_path):
    good = variant(
        tmp_path / "good", lambda c: c.update(output_classes=2, post="$lambda x, s=@output_classes: x[:s]")
    )
    assert [p for p in validate_bundle(good) if p.severity == "error"] == []
    bad = variant(tmp_path / "bad", lambda c: c.update(post="$lambda x, s=@output_classes: x[:s]"))
    assert [p.message for p in validate_bundle(bad) if p.severity == "error"] == [
        "reference '@output_classes' points to no config id"
    ]


def rename_run(config: dict) -> None:
    config["evaluating"] = config.pop("run")


def test_promise_other_run_ids_and_monai_override_syntax(tmp_path, tiny_liver_dataset, weights, capsys):
    bundle = variant(tmp_path / "b", rename_run)
    out = tmp_path / "out"
    base = ["bundle", "run", str(bundle), *data_args(tiny_liver_dataset, out), "--weights", str(weights)]
    assert main(base) == 2
    assert "expected a config id 'run' to run, found none" in capsys.readouterr().err
    assert main([*base, "--run-id", "evaluating"]) == 0 and len(outputs(out)) == 2
    assert main([*base, "--run_id", "evaluating"]) == 0  # MONAI's runner spelling
    # A reference as a value (YAML would choke on '@'), and a key that is also ConfigWorkflow's keyword.
    assert main([*base, "--set", "run=@evaluating", "--set", "workflow_type=infer"]) == 0


def test_override_values_follow_monai_and_stay_backward_compatible(tmp_path):
    assert parse_overrides(
        [
            "a=@inference",
            "b=%configs/x.json#net",
            "c=$@bundle_root + '/m.pt'",
            "d=[64, 64, 32]",
            "e=False",
            "f=true",
            "g=1e-3",
            "h={'_target_': 'UNet'}",
            "i=segresnet",
            "j=nan",
        ]
    ) == {
        "a": "@inference",
        "b": "%configs/x.json#net",
        "c": "$@bundle_root + '/m.pt'",
        "d": [64, 64, 32],
        "e": False,
        "f": True,
        "g": 1e-3,
        "h": {"_target_": "UNet"},
        "i": "segresnet",
        "j": "nan",
    }
    assert parse_runner_arguments(
        ["--dataset_dir", "/data", "--load_pretrain=False", "--network_def#img_size", "[96, 96, 96]"]
    ) == {"dataset_dir": "/data", "load_pretrain": False, "network_def#img_size": [96, 96, 96]}


def test_promise_monai_property_check_failures_do_not_stop_a_run(
    tmp_path, tiny_liver_dataset, weights, monkeypatch
):
    """MONAI's check_properties fails on some layouts (classification_template: a dict where it wants an id)."""

    def broken(self):
        raise AttributeError("'dict' object has no attribute 'startswith'")

    monkeypatch.setattr(ConfigWorkflow, "check_properties", broken)
    out = tmp_path / "out"
    assert (
        main(
            [
                "bundle",
                "run",
                str(variant(tmp_path / "b")),
                *data_args(tiny_liver_dataset, out),
                "--weights",
                str(weights),
            ]
        )
        == 0
    )
    assert len(outputs(out)) == 2


def test_promise_paths_with_hash_reach_the_bundle_intact(tmp_path):
    """MONAI's parser turns '#' into '::' in strings; voxpipe passes such paths as Path objects."""
    from monai.bundle import ConfigParser

    from voxpipe.pipelines.bundles.config import protect_paths

    folder = tmp_path / "Patient #12"
    folder.mkdir()
    values = protect_paths(
        {
            "dataset_dir": str(folder),
            "datalist": [{"image": str(folder / "ct #3.nii.gz")}],
            "relative": "./run #2",
            "ref": "@network_def#init_filters",
            "text": "case #1",
            "n": 3,
        }
    )
    # References, plain text and numbers are left to MONAI (a reference's '#' is its id separator).
    assert values["ref"] == "@network_def#init_filters" and values["text"] == "case #1" and values["n"] == 3
    parser = ConfigParser(values)
    assert str(parser.get_parsed_content("dataset_dir")) == str(folder)
    assert str(parser.get_parsed_content("datalist")[0]["image"]) == str(folder / "ct #3.nii.gz")
    assert str(parser.get_parsed_content("relative")) == "run #2"  # Path("./run #2")
    # A config id that names a path protects a bare relative value too; other ids keep their text.
    assert protect_paths("run #2", key="output_dir") == Path("run #2")
    assert protect_paths("run #2", key="train#handlers#0#save_dir") == Path("run #2")
    assert protect_paths("case #1", key="description") == "case #1"


def test_promise_a_syntax_error_stops_the_run_with_its_line(tmp_path, capsys):
    bundle = variant(tmp_path / "b")
    (bundle / "configs" / "inference.json").write_text('{"run": [1,\n')
    assert main(["bundle", "run", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "inference.json': JSON syntax error at line 2, column 1" in err and "internal error" not in err
    assert (
        "required bundle property" not in err
    )  # not every property reported missing because the file did not parse
