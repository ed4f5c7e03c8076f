"""The CLI: help, version, one-line errors with exit code 2, and the small commands end to end."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from voxpipe import __version__
from voxpipe.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voxpipe.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_commands():
    """The installed console script runs (one process; every verb's help is rendered in-process below)."""
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("demo", "synth", "train", "infer", "evaluate", "serve", "annotate", "plan", "select"):
        assert command in done.stdout


def _every_parser(parser, name="voxpipe"):
    """``(command line, parser)`` for the parser and every sub-command below it, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, sub in action.choices.items():
                yield from _every_parser(sub, f"{name} {verb}")


def test_every_command_and_sub_command_renders_its_help(capsys):
    """Promise: `voxpipe ... --help` works for every verb (a stray % in a help string used to crash it)."""
    commands = list(_every_parser(build_parser()))
    assert {"voxpipe bundle", "voxpipe bundle run", "voxpipe data check", "voxpipe networks load"} <= {
        c for c, _ in commands
    }
    shown = {}
    for command, _parser in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command.split()[1:], "--help"])
        assert exit_info.value.code == 0, command
        shown[command] = capsys.readouterr().out
        assert shown[command].startswith(f"usage: {command}"), command
    assert "% macros" in " ".join(shown["voxpipe bundle"].split())


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out


def test_bad_path_is_one_line_exit_2_without_traceback(tmp_path):
    done = run_cli(
        "evaluate", str(tmp_path / "nope"), str(tmp_path / "refs"), "--labels", "liver=1", "-o", str(tmp_path)
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("voxpipe: error")]
    assert len(errors) == 1 and "refs" in errors[0] and "no such folder" in errors[0]


def test_error_classes_say_what_they_are_and_all_user_problems_exit_2(tmp_path, monkeypatch, capsys):
    import importlib

    from voxpipe import errors

    cli_main = importlib.import_module("voxpipe.cli.main")

    assert not issubclass(errors.BundleError, errors.InputError)
    assert not issubclass(errors.OutputError, errors.InputError)
    assert issubclass(errors.GeometryError, errors.InputError)
    for kind in (errors.InputError, errors.BundleError, errors.OutputError, errors.GeometryError):
        assert issubclass(kind, errors.UserError)

        def fail(args, kind=kind):
            raise kind(f"{str(tmp_path)!r}: expected something, found {kind.__name__}")

        monkeypatch.setattr(cli_main, "build_parser", _parser_calling(fail))
        assert cli_main.main(["x"]) == 2
        assert kind.__name__ in capsys.readouterr().err

    def bug(args):
        raise errors.VoxpipeError("an internal inconsistency")

    monkeypatch.setattr(cli_main, "build_parser", _parser_calling(bug))
    assert cli_main.main(["x"]) == 1


def _parser_calling(function):
    def build():
        parser = argparse.ArgumentParser()
        parser.add_argument("verb")
        parser.set_defaults(func=function, debug=False, verbose=0, quiet=False)
        return parser

    return build


def test_bad_bundle_and_missing_weights_exit_2(tmp_path, liver_bundle):
    assert run_cli("train", str(tmp_path)).returncode == 2
    assert (
        main(
            [
                "synth",
                "liver",
                "-o",
                str(tmp_path / "ds"),
                "--n-train",
                "1",
                "--n-test",
                "0",
                "--size",
                "tiny",
            ]
        )
        == 0
    )
    done = run_cli(
        "infer",
        str(liver_bundle),
        str(tmp_path / "ds" / "imagesTr"),
        "-o",
        str(tmp_path / "out"),
        "--weights",
        str(tmp_path / "missing.pt"),
    )
    assert done.returncode == 2 and "missing.pt" in done.stderr and "hint" in done.stderr
    written = list((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []
    assert not [p for p in written if p.is_file()]  # refused before anything was written


def test_weights_for_other_network_settings_give_a_short_error_with_a_hint(tmp_path, liver_bundle):
    import torch

    from voxpipe.networks import build_network

    weights = tmp_path / "small.pt"
    torch.save(build_network("segresnet", out_channels=3, init_filters=8).state_dict(), weights)
    assert (
        main(
            [
                "synth",
                "liver",
                "-o",
                str(tmp_path / "ds"),
                "--n-train",
                "1",
                "--n-test",
                "0",
                "--size",
                "tiny",
            ]
        )
        == 0
    )
    done = run_cli(
        "infer",
        str(liver_bundle),
        str(tmp_path / "ds" / "imagesTr"),
        "-o",
        str(tmp_path / "out"),
        "--weights",
        str(weights),
    )  # the bundle's network has init_filters=16
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) <= 3, done.stderr[-2000:]
    assert "size mismatch" in done.stderr and "network_def#init_filters" in done.stderr


def test_debug_shows_the_traceback(tmp_path):
    done = run_cli("--debug", "train", str(tmp_path))
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_synth_and_evaluate_from_the_cli(tmp_path, capsys):
    assert (
        main(
            ["synth", "lung", "-o", str(tmp_path / "ds"), "--n-train", "2", "--n-test", "0", "--size", "tiny"]
        )
        == 0
    )
    dataset = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert dataset["numTraining"] == 2
    labels = str(tmp_path / "ds" / "labelsTr")
    # References scored against themselves: Dice 1 wherever a tumour exists.
    code = main(
        [
            "evaluate",
            labels,
            labels,
            "--dataset",
            str(tmp_path / "ds" / "dataset.json"),
            "-o",
            str(tmp_path / "ev"),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    import nibabel as nib
    import numpy as np

    tumour_value = int(next(k for k, v in dataset["labels"].items() if v == "tumour"))
    cases_with_tumour = sum(
        bool((np.asarray(nib.load(p).dataobj) == tumour_value).any())
        for p in sorted((tmp_path / "ds" / "labelsTr").glob("*.nii.gz"))
    )
    assert cases_with_tumour > 0  # the phantoms carry tumours, so the figure below is a real Dice
    assert summary["metrics"]["tumour"]["dice"]["mean"] == 1.0


def test_infer_options_reach_the_bundle_and_unknown_ones_are_refused(tmp_path, liver_bundle, capsys):
    from pathlib import Path

    import torch

    from voxpipe.networks import build_network

    weights = tmp_path / "small.pt"
    torch.save(build_network("segresnet", out_channels=3, init_filters=8).state_dict(), weights)
    assert (
        main(
            [
                "synth",
                "liver",
                "-o",
                str(tmp_path / "ds"),
                "--n-train",
                "1",
                "--n-test",
                "0",
                "--size",
                "tiny",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                str(liver_bundle),
                str(tmp_path / "ds" / "imagesTr"),
                "-o",
                str(out),
                "--weights",
                str(weights),
                "--set",
                "network_def#init_filters=8",
                "--format",
                "nrrd",
                "--precision",
                "fp32",
                "--save-probabilities",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.suffix for p in out.iterdir() if not p.name.startswith("statistics")) == [".npz", ".nrrd"]
    zoo = Path(__file__).parent / "data" / "zoo_style_bundle"
    assert (
        main(
            [
                "infer",
                str(zoo),
                str(tmp_path / "ds" / "imagesTr"),
                "-o",
                str(out),
                "--weights",
                str(weights),
                "--tta",
            ]
        )
        == 2
    )
    assert "expected the keys ['tta']" in capsys.readouterr().err


def test_building_the_parser_imports_neither_torch_nor_monai():
    """`voxpipe --help` answers at once: no verb's parser may import the heavy libraries."""
    import subprocess
    import sys

    probe = (
        "import sys; from voxpipe.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
