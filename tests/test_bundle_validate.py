"""`voxpipe bundle validate`: every injected fault of a broken bundle copy is reported in one run,
with its file and key path; the shipped bundles and the Zoo-style fixture pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voxpipe.cli import main
from voxpipe.pipelines.bundles.validate import validate_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "bundle",
    [
        "configs/liver_ct_segresnet",
        "configs/lung_tumor_ct_unet",
        "configs/lung_nodule_ct_densenet",
        "tests/data/zoo_style_bundle",
    ],
)
def test_shipped_and_fixture_bundles_pass(bundle):
    assert [str(p) for p in validate_bundle(REPO / bundle)] == []


def test_detection_bundle_has_no_errors_and_says_which_monai_properties_it_lacks():
    """Its inference runs voxpipe's detection loop, not a MONAI engine: MONAI's runner runs it, property readers are warned."""
    problems = validate_bundle(REPO / "configs" / "lung_nodule_ct_retinanet")
    assert [str(p) for p in problems if p.severity == "error"] == []
    assert {p.key for p in problems} <= {"dataset", "evaluator", "inferer", "train#inferer"}


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_broken_copy_gets_every_fault_reported_at_once(tmp_path, capsys):
    bundle = Path(shutil.copytree(REPO / "configs" / "liver_ct_segresnet", tmp_path / "broken"))
    configs = bundle / "configs"
    _replace(configs / "train.yaml", 'lr: "@learning_rate"', 'lr: "@learning_rat"')  # 1 dangling reference
    _replace(
        configs / "train.yaml", "_target_: monai.losses.DiceCELoss", "_target_: monai.losses.DiceCELos"
    )  # 2 no such class
    _replace(
        configs / "train.yaml",
        '    max_epochs: "@max_epochs"\n    train_data_loader',
        '    max_epoch: "@max_epochs"\n    train_data_loader',
    )  # 3 bad kwarg, 4 property gone
    _replace(
        configs / "train.yaml", "_target_: voxpipe.transforms.presets.compose", "_target_: Compos"
    )  # 5 unknown short name
    fast = "  _target_: voxpipe.pipelines.inference.sliding_window.FastSlidingWindowInferer"
    _replace(configs / "inference.yaml", f"inferer:\n{fast}", f"inferrer:\n{fast}")
    _replace(configs / "evaluate.yaml", "num_classes: 3\n", "num_classes: [3\n")  # 8 YAML syntax
    metadata = json.loads((configs / "metadata.json").read_text())
    del metadata["version"]  # 9 schema: required
    metadata["network_data_format"]["inputs"]["image"]["num_channels"] = "one"  # 10 schema: type
    (configs / "metadata.json").write_text(json.dumps(metadata))

    assert main(["bundle", "validate", str(bundle)]) == 2
    out = capsys.readouterr()
    expected = [
        "train.yaml: optimizer#lr: reference '@learning_rat' points to no config id (hint: did you mean 'learning_rate'?)",
        "train.yaml: loss#loss#_target_: 'monai.losses.DiceCELos' does not exist in module 'monai.losses' (hint: did you mean 'DiceCELoss'?)",
        "train.yaml: train#trainer#max_epoch: 'voxpipe.pipelines.training.trainer.build_trainer' takes no argument 'max_epoch' "
        "(hint: did you mean 'max_epochs'?)",
        "train.yaml: train#trainer#max_epochs: required bundle property 'max_epochs' is missing",
        "train.yaml: train#preprocessing#_target_: 'Compos' is neither a MONAI component nor a module path (hint: did you mean 'Compose'?)",
        "inference.yaml: inferer: required bundle property 'inferer' is missing",
        "inference.yaml: evaluator#inferer: reference '@inferer' points to no config id (hint: did you mean 'inferrer'?)",
        "evaluate.yaml: YAML syntax error at line ",
        "metadata.json: (top level): 'version' is a required property",
        "metadata.json: network_data_format#inputs#image#num_channels: 'one' is not of type 'integer'",
    ]
    for line in expected:
        assert line in out.out, line
    assert "problems in" in out.err


def test_bundle_run_validates_first(tmp_path, capsys):
    bundle = Path(shutil.copytree(REPO / "configs" / "liver_ct_segresnet", tmp_path / "broken"))
    _replace(bundle / "configs" / "inference.yaml", "  sw_batch_size: 4\n", "  sw_batch_sise: 4\n")
    assert main(["bundle", "run", str(bundle), "--set", "dataset_dir=/nowhere"]) == 2
    err = capsys.readouterr().err
    assert (
        "inference.yaml: inferer#sw_batch_sise: 'voxpipe.pipelines.inference.sliding_window.FastSlidingWindowInferer' "
        "takes no argument 'sw_batch_sise'"
    ) in err
    assert "did you mean 'sw_batch_size'?" in err
