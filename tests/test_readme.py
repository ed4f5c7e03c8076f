"""The README stays short and every command in it runs as written (on tiny phantoms)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _block(heading: str, language: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_the_readme_is_at_most_10_kb():
    assert len(README.encode()) <= 10 * 1024


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = _block("## A taste of the command line", "bash")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pred" / "statistics.csv").is_file() and (
        tmp_path / "scores" / "summary.json"
    ).is_file()
    assert (tmp_path / "plans" / "liver" / "plan.json").is_file()
    code = _block("## A taste of the Python API", "python")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "pred_api").glob("*.nii.gz"))
