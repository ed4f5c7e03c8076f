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
    "runner",
    ["voxpipe.pipelines.bundles.run.run_bundle", "voxpipe.pipelines.inference.infer.infer_with_bundle"],
)
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
        (
            {"x": {"_target_": "LoadImaged", "keys": "image", "reader": "scripts.reader.Evil"}},
            "scripts/ package",
        ),
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
            "pretrained True: safe mode downloads nothing",
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


def test_promise_safe_refuses_a_reader_list_that_names_a_function(tmp_path, capsys):
    """LoadImaged(reader=[...]): MONAI resolves every item and calls it with the other keywords."""
    marker = tmp_path / "pwned"
    bundle = make_bundle(
        tmp_path / "b",
        {
            "loader": {
                "_target_": "LoadImaged",
                "keys": "image",
                "reader": ["os.system"],
                "command": f"touch {marker}",
            },
            "run": ["@loader"],
        },
    )
    assert run(bundle, safe=True) == 2 and not marker.exists()
    assert "loader#reader: reader 'os.system': _target_ 'os.system' is outside" in capsys.readouterr().err
    run(bundle, safe=False)
    assert marker.exists()  # the threat is real


@pytest.mark.parametrize(
    "reader",
    [
        ["os.system"],
        [["os.system"]],
        {"a": ["os.system"]},
        ("NibabelReader", "os.system"),
        "open",  # pydoc.locate finds builtins
        "builtins.open",
        "monai.utils.optional_import",
        "monai.transforms.Compose",  # a safe class, but not a reader
        "@evil",
        ["@evil"],
    ],
)
def test_promise_safe_checks_readers_and_writers_in_any_shape(reader):
    config = {"evil": "os.system", "x": {"_target_": "LoadImaged", "keys": "image", "reader": reader}}
    problems = [p for p in unsafe_entries(config, file="c.json") if "x#reader" in p]
    assert problems, reader
    writer = {"evil": "os.system", "x": {"_target_": "SaveImaged", "keys": "pred", "writer": reader}}
    assert [p for p in unsafe_entries(writer, file="c.json") if "x#writer" in p], reader


@pytest.mark.parametrize(
    "config",
    [
        {"x": {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader"}},
        {"x": {"_target_": "LoadImaged", "keys": "image", "reader": "itkreader"}},
        {"x": {"_target_": "LoadImaged", "keys": "image", "reader": ["ITKReader", "monai.data.NrrdReader"]}},
        {"x": {"_target_": "LoadImaged", "keys": "image", "reader": {"_target_": "PydicomReader"}}},
        {"r": "NibabelReader", "x": {"_target_": "LoadImaged", "keys": "image", "reader": "@r"}},
        {"x": {"_target_": "SaveImaged", "keys": "pred", "writer": "NibabelWriter"}},
        {"x": {"_target_": "SaveImaged", "keys": "pred", "output_dtype": "numpy.float32"}},
        {"x": {"_target_": "CastToTyped", "keys": "image", "dtype": "torch.float16"}},
        {
            "x": {
                "_target_": "DenseNet121",
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "pretrained": False,
            }
        },
        {"_meta_": {"url": "https://example.org/bundle.zip", "network": "monai.networks.nets.UNet"}},
        {"x": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3}},
        {"dataset_dir": "/data/Task09_Spleen", "image": "imagesTr/spleen_2.nii.gz"},
    ],
)
def test_promise_safe_allows_what_safe_bundles_write(config):
    assert unsafe_entries(config, file="c.json") == []


@pytest.mark.parametrize(
    "config,why",
    [
        (
            {"x": {"_target_": "HoVerNet", "pretrained_url": "http://127.0.0.1:9/w.pt"}},
            "x#pretrained_url: pretrained_url 'http://127.0.0.1:9/w.pt': safe mode downloads nothing",
        ),
        ({"x": {"_target_": "UNet", "weights_url": "file:///etc/passwd"}}, "weights_url"),
        ({"x": {"_target_": "UNet", "download": "yes"}}, "x#download"),
        ({"x": {"_target_": "UNet", "load_from_hub": True}}, "x#load_from_hub"),
        ({"u": "https://x/y", "x": {"_target_": "UNet", "url": "@u"}}, "x#url"),
        ({"x": {"_target_": "CheckpointLoader", "load_path": "https://x/model.pt"}}, "is a URL"),
        ({"x": {"_target_": "Lambda", "func": "os.system"}}, "the string 'os.system' names code"),
        (
            {"x": {"_target_": "Lambda", "func": "monai.bundle.run"}},
            "the string 'monai.bundle.run' names code",
        ),
    ],
)
def test_promise_safe_downloads_nothing_and_resolves_no_named_code(config, why):
    problems = unsafe_entries(config, file="c.json")
    assert any(why in p for p in problems), problems


BILLION_LAUGHS = "\n".join(
    ["a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["run: ['@i']"]
)


@pytest.mark.parametrize(
    "name,text,why",
    [
        ("inference.yaml", BILLION_LAUGHS, "expands to more than 1,000,000 values"),
        ("inference.json", "[" * 5000 + "]" * 5000, "nested too deeply to parse"),
        (
            "inference.json",
            json.dumps({"run": [[[[[[[[[[1]]]]]]]]]]}).replace("1", "[" * 70 + "]" * 70),
            "levels deep",
        ),
        ("inference.yaml", "a: &a [*a]\nrun: ['@a']\n", "refers to itself"),
        ("inference.yaml", "run: [\n", "YAML syntax error at line"),
        ("inference.json", '{"run": [}', "JSON syntax error at line 1"),
    ],
)
@pytest.mark.parametrize("safe", [True, False])
def test_promise_config_parsing_is_bounded_and_names_the_file(tmp_path, capsys, name, text, why, safe):
    """An alias bomb, deep nesting or a self-referencing anchor: exit 2 at once, naming the config file."""
    import time

    bundle = make_bundle(tmp_path / "b", {})
    (bundle / "configs" / "inference.json").unlink()
    (bundle / "configs" / name).write_text(text)
    start = time.perf_counter()
    assert run(bundle, "--config", "inference", safe=safe) == 2
    assert time.perf_counter() - start < 10
    error = capsys.readouterr().err
    assert name in error and why in error, error


def test_promise_a_bundle_zip_member_outside_its_folder_is_refused_naming_it(tmp_path, capsys):
    import zipfile

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("b/configs/metadata.json", (ZOO / "configs" / "metadata.json").read_text())
        zipped.writestr("b/configs/inference.json", json.dumps({"run": []}))
        zipped.writestr("b/../../escaped.txt", "x")
    assert run(archive, "--config", "inference", safe=True) == 2
    error = capsys.readouterr().err
    assert "evil.zip" in error and "'b/../../escaped.txt' would be written outside" in error
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_bundle_zip_is_unpacked_into_a_folder_removed_on_refusal_and_at_exit(tmp_path):
    """``voxpipe bundle run x.zip`` unpacks into a temporary folder: gone when the zip is refused at
    once, and when the process that ran it exits (each run used to leave its copy in /tmp)."""
    import subprocess
    import zipfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    metadata = json.loads((ZOO / "configs" / "metadata.json").read_text())
    metadata["checksums"] = {"files": {"configs/inference.json": "0" * 64}}
    for archive, meta in ((good, {k: v for k, v in metadata.items() if k != "checksums"}), (bad, metadata)):
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("b/configs/metadata.json", json.dumps(meta))
            zipped.writestr("b/configs/inference.json", json.dumps({"run": []}))
    script = (
        "import sys; from voxpipe.pipelines.bundles.export import open_bundle_zip as o\n"
        "print(o(sys.argv[1]), flush=True)\n"
        "try:\n    o(sys.argv[2])\nexcept Exception as e:\n    print(type(e).__name__)\n"
        "import os; print(len(os.listdir(sys.argv[3])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(good), str(bad), str(temp)],
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    folder, refused, during = done.stdout.split()
    assert Path(folder).parent.parent == temp and refused == "BundleError"
    assert during == "1"  # the good zip's folder while the process runs; the refused one's is gone
    assert not list(temp.iterdir())  # and at exit
