"""The documentation site builds with no warning (MkDocs strict: dead internal links are errors), its CLI
reference is the parsers' own help, and its pages render in a real browser (headless Chromium)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_site_builds_strictly_and_the_cli_reference_is_the_parsers_help(site):
    from voxpipe.cli.main import build_parser

    page = (site / "reference" / "cli" / "index.html").read_text()
    for verb in ("infer", "evaluate-detections", "bundle", "serve", "annotate", "plan", "select"):
        assert f"voxpipe {verb}" in page, verb
    parser = build_parser()
    infer = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "infer" in a.choices)
    assert all(o in page for o in infer.choices["infer"]._option_string_actions if o.startswith("--"))
    assert (site / "reference" / "api" / "index.html").read_text().count("load_volume") >= 1
    assert "LUNA16" in (site / "benchmarks" / "index.html").read_text()  # benchmarks/README.md included


def _screenshot(url: str, path: Path) -> np.ndarray:
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={path.parent / 'profile'}",
            "--window-size=1280,900",
            f"--screenshot={path}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert path.is_file(), done.stderr[-2000:]
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["index.html", "capabilities/bundles/index.html"])
def test_pages_render_in_headless_chromium(site, tmp_path, page):
    if CHROMIUM is None:
        from helpers import absent

        absent(
            "Chromium is not installed (Debian: apt-get install chromium)",
            required_by="VOXPIPE_REQUIRE_CHROMIUM",
        )
    pixels = _screenshot((site / page).as_uri(), tmp_path / "shot.png")
    assert pixels.shape == (900, 1280)
    assert pixels.std() > 20  # text, navigation and a header bar: not a blank or error page
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'p2'}",
            "--dump-dom",
            (site / page).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Bundles and safe mode" in dom and "voxpipe" in dom  # the rendered navigation
    if os.environ.get("VOXPIPE_SCREENSHOTS"):
        shutil.copy(
            tmp_path / "shot.png", Path(os.environ["VOXPIPE_SCREENSHOTS"]) / f"{page.replace('/', '_')}.png"
        )
