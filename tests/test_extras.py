"""The core install works without the extras, and a command that needs a missing extra names it."""

from __future__ import annotations

import subprocess
import sys

import pytest

EXTRA_MODULES = (
    "highdicom",
    "pynetdicom",
    "dicomweb_client",
    "tensorboard",
    "onnx",
    "onnxruntime",
    "requests",
)


def _without_extras(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child in which importing any extra's package fails, as in a core-only install."""
    block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in EXTRA_MODULES)
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_promise_the_core_imports_and_runs_without_any_extra(tmp_path):
    done = _without_extras(
        "import voxpipe.cli.main, voxpipe.pipelines.inference.infer, voxpipe.pipelines.training.trainer\n"
        "import voxpipe.pipelines.evaluation.evaluate, voxpipe.pipelines.bundles.run, voxpipe.transforms.dicom\n"
        "from voxpipe.cli import main\n"
        f"sys.exit(main(['synth', 'liver', '-o', {str(tmp_path / 'd')!r}, '--n-train', '1', '--n-test', '0', "
        "'--size', 'tiny']))\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "d" / "dataset.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,extra",
    [
        (
            ["serve", "configs/liver_ct_segresnet", "--send-to", "PACS@127.0.0.1:4242", "--workdir", "{tmp}"],
            "serve",
        ),
        (["export", "unet3d", "-o", "{tmp}/e", "--format", "onnx"], "export"),
    ],
)
def test_promise_a_missing_extra_is_named_in_one_line(tmp_path, argv, extra):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = _without_extras(f"from voxpipe.cli import main\nsys.exit(main({argv!r}))\n")
    errors = [line for line in done.stderr.splitlines() if line.startswith("voxpipe: error")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert f"voxpipe[{extra}]" in done.stderr and "Traceback" not in done.stderr
