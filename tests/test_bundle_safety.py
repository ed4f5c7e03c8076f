"""Safe mode holds against a hostile bundle: every bypass found so far, and the rule behind the fixes
(components of known kinds only, no code, no loader switched to unsafe, no bundle code), checked on
the configuration as it will run. Each attack is shown to work without --safe, so the test can fail."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voxpipe.cli import main
from voxpipe.errors import BundleError
from voxpipe.pipelines.bundles.safety import check_safe, target_problem, unsafe_entries

ZOO = Path(__file__).parent / "data" / "zoo_style_bundle"


class _Payload:
    """Unpickling this runs a command that creates ``marker``: what a hostile weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def make_bundle(folder: Path, config: dict, *, files: dict[str, str] | None = None) -> Path:
    """A bundle folder with the fixture's metadata.json, this ``configs/inference.json`` and extra files."""
    (folder / "configs").mkdir(parents=True)
    shutil.copy(ZOO / "configs" / "metadata.json", folder / "configs" / "metadata.json")
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def run(bundle: Path, *extra: str, safe: bool) -> int:
    return main(["bundle", "run", str(bundle), *extra, *(["--safe"] if safe else [])])


def test_promise_safe_refuses_torch_load_with_weights_only_false(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(marker), evil)
    bundle = make_bundle(
        tmp_path / "b",
        {
            "loader": {"_target_": "torch.load", "f": str(evil), "weights_only": False},
            "run": ["@loader"],
        },
    )
    assert run(bundle, safe=True) == 2 and not marker.exists()
    error = capsys.readouterr().err
    assert "loader#_target_: _target_ 'torch.load' is a function, not a component" in error
    assert "loader#weights_only: weights_only: false lets torch.load unpickle code" in error
    run(bundle, safe=False)
    assert marker.exists()  # the threat is real


def test_promise_safe_refuses_numpy_load_with_allow_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npy"
    with open(evil, "wb") as handle:
        np.lib.format.write_array(handle, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    bundle = make_bundle(
        tmp_path / "b",
        {"data": {"_target_": "numpy.load", "file": str(evil), "allow_pickle": True}, "run": ["@data"]},
    )
    assert run(bundle, safe=True) == 2 and not marker.exists()
    error = capsys.readouterr().err
    assert "_target_ 'numpy.load' is outside the allowed packages" in error and "allow_pickle: true" in error
    run(bundle, safe=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "runner", ["voxpipe.pipelines.bundle.run_bundle", "voxpipe.pipelines.bundles.run.run_bundle"]
)  # 0.1 and new path
def test_promise_safe_refuses_bundle_runners_that_would_run_another_bundle(tmp_path, capsys, runner):
    marker = tmp_path / "pwned"
    inner = make_bundle(
        tmp_path / "inner", {"run": [f"$__import__('pathlib').Path({str(marker)!r}).touch()"]}
    )
    outer = make_bundle(
        tmp_path / "outer",
        {"nested": {"_target_": runner, "bundle_dir": str(inner), "config": "inference"}, "run": ["@nested"]},
    )
    assert run(outer, safe=True) == 2 and not marker.exists()
    assert "nested#_target_" in capsys.readouterr().err


def test_promise_safe_checks_overrides_as_they_will_run(tmp_path, capsys):
    """`--set checkpoint=$...` is code too; a `$` entry overridden with a plain value no longer runs and passes."""
    marker = tmp_path / "pwned"
    bundle = make_bundle(tmp_path / "b", {"checkpoint": "$'model' + '.pt'", "run": []})
    attack = f"checkpoint=$__import__('pathlib').Path({str(marker)!r}).touch()"
    assert run(bundle, "--set", attack, safe=True) == 2 and not marker.exists()
    assert "checkpoint: expression" in capsys.readouterr().err
    assert (
        run(bundle, "--set", f"checkpoint={tmp_path / 'model.pt'}", safe=True) == 0
    )  # what runs is a plain path
    assert (
        run(bundle, "--checkpoint", f"$__import__('pathlib').Path({str(marker)!r}).touch()", safe=True) == 2
    )
    assert not marker.exists()  # MONAI's runner syntax (--key value) goes through the same check


def test_promise_safe_refuses_the_bundles_own_scripts_and_keeps_sys_path(tmp_path, capsys):
    marker = tmp_path / "pwned"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Net:\n    def __init__(self):\n        pass\n"
    bundle = make_bundle(
        tmp_path / "b",
        {"net": {"_target_": "scripts.net.Net"}, "run": ["@net"]},
        files={"scripts/__init__.py": "", "scripts/net.py": code},
    )
    assert run(bundle, safe=True) == 2 and not marker.exists()
    assert "bundle's own scripts/ package" in capsys.readouterr().err
    # MONAI's runner puts the bundle folder on sys.path at run(); safe mode does not (a module there
    # could shadow a package imported later).
    harmless = make_bundle(tmp_path / "c", {"run": []}, files={"shadow_probe.py": code})
    assert run(harmless, safe=True) == 0
    assert (
        str(harmless.resolve()) not in sys.path and "shadow_probe" not in sys.modules and not marker.exists()
    )
    assert run(bundle, safe=False) == 0 and marker.exists()  # without --safe it is imported, as MONAI does
    assert str(bundle.resolve()) not in sys.path  # ... and sys.path is restored afterwards
    sys.modules.pop("scripts", None), sys.modules.pop("scripts.net", None)


@pytest.mark.parametrize(
    "config,why",
    [
        (
            {"evil": "torch.load", "x": {"_target_": "@evil", "f": "m.pt"}},
            "_target_ 'torch.load' is a function",
        ),
        ({"x": {"_target_": "@nowhere", "f": "m.pt"}}, "does not name a component literally"),
        (
            {
                "off": False,
                "x": {
                    "_target_": "monai.data.PersistentDataset",
                    "data": [],
                    "cache_dir": ".",
                    "weights_only": "@off",
                },
            },
            "weights_only: false",
        ),
        ({"x": {"_target_": "LoadImaged", "keys": "image", "reader": "scripts.reader.Evil"}}, "dotted path"),
        ({"x": {"_target_": "UNet", "_mode_": "debug"}}, "_mode_ 'debug'"),
        (
            {
                "x": {
                    "_target_": "monai.apps.DecathlonDataset",
                    "root_dir": ".",
                    "task": "Task09_Spleen",
                    "section": "training",
                }
            },
            "in monai.apps",
        ),
        ({"x": {"_target_": "monai.data.LMDBDataset", "data": []}}, "LMDBDataset"),
        (
            {
                "x": {
                    "_target_": "DenseNet121",
                    "spatial_dims": 3,
                    "in_channels": 1,
                    "out_channels": 2,
                    "pretrained": True,
                }
            },
            "pretrained: true downloads",
        ),
        ({"x": {"_target_": "torch.jit.load", "f": "m.ts"}}, "in torch.jit"),
        ({"x": {"_target_": "monai.bundle.ConfigWorkflow", "config_file": "c.json"}}, "in monai.bundle"),
        ({"$import os": 1}, "a '$' key runs Python"),
    ],
)
def test_promise_safe_refuses_my_own_bypasses(config, why):
    problems = unsafe_entries(config, file="c.json")
    assert any(why in p for p in problems), problems


@pytest.mark.parametrize(
    "target,allowed",
    [
        ("Compose", True),
        ("monai.transforms.Compose", True),
        ("LoadImaged", True),
        ("UNet", True),
        ("torch.optim.AdamW", True),
        ("torch.optim.lr_scheduler.CosineAnnealingLR", True),
        ("SupervisedEvaluator", True),
        ("SlidingWindowInferer", True),
        ("CheckpointLoader", True),
        ("StatsHandler", True),
        ("DiceMetric", True),
        ("DiceCELoss", True),
        ("monai.data.DataLoader", True),
        ("monai.data.Dataset", True),
        ("voxpipe.networks.build_network", True),
        ("voxpipe.pipelines.bundles.run.run_engines", True),
        ("voxpipe.pipelines.bundle.run_engines", True),  # the 0.1 path of the same function
        ("torch.load", False),
        ("numpy.load", False),
        ("pickle.loads", False),
        ("builtins.eval", False),
        ("builtins.exec", False),
        ("builtins.open", False),
        ("importlib.import_module", False),
        ("subprocess.run", False),
        ("os.system", False),
        ("shutil.rmtree", False),
        ("torch.hub.load", False),
        ("monai.bundle.run", False),
        ("monai.bundle.download", False),
        ("monai.utils.module.instantiate", False),
        ("voxpipe.pipelines.inference.infer.infer_with_bundle", False),
        ("torch.save", False),
        ("monai.transforms.utils.allow_missing_keys_mode", False),
        ("NotAComponent", False),
        ("eval", False),
        ("scripts.net.Net", False),
    ],
)
def test_promise_safe_builds_only_components_of_known_kinds(target, allowed):
    assert (target_problem(target) is None) == allowed, target_problem(target)


def test_promise_safe_expands_macros_from_other_files_and_overrides(tmp_path):
    (tmp_path / "other.json").write_text(
        json.dumps({"net": {"_target_": "builtins.exec", "source": "print(1)"}})
    )
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"network": f"%{tmp_path / 'other.json'}#net", "plain": 1}))
    with pytest.raises(BundleError, match="network#_target_: _target_ 'builtins.exec'"):
        check_safe([config])
    with pytest.raises(BundleError, match="plain#_target_: _target_ 'os.system'"):
        check_safe(
            [tmp_path / "other.json"],
            overrides={"net": {"_target_": "UNet"}, "plain": {"_target_": "os.system"}},
        )


def test_promise_safe_runs_our_bundles_unchanged():
    from monai.bundle import ConfigParser

    for config in sorted((Path(__file__).parents[1] / "configs").glob("*/configs/*.yaml")):
        assert unsafe_entries(ConfigParser.load_config_file(config), file=config.name) == [], config


def test_payload_is_what_we_think(tmp_path):
    """The helper really is a pickle that runs code (else the tests above would prove nothing)."""
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    os.remove(marker)
