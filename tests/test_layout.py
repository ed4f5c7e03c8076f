"""The package layout holds: imports point one way, pipelines/ is one folder per capability, each
package says what lives in it, and importing voxpipe changes no global state."""

from __future__ import annotations

import ast
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

import voxpipe

PACKAGE = Path(voxpipe.__file__).parent
BUILDING_BLOCKS = ("transforms", "networks", "metrics", "phantoms")
# Lowest first: a pipelines subpackage may import only those listed for it (and itself).
PIPELINE_LAYERS = {
    "bundles": set(),
    "data": set(),
    "training": {"data"},
    "inference": {"bundles", "training"},
    "evaluation": {"bundles", "data", "inference", "training"},
    "deploy": {"bundles", "inference"},
    "annotation": {"bundles", "data", "inference", "training"},
    "planning": {"bundles", "data"},
}


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    """Every module an ``import``/``from`` statement in ``path`` names, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("block", BUILDING_BLOCKS)
def test_building_blocks_never_import_pipelines_or_cli(block):
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in _modules(PACKAGE / block)
        for name in _imported(path)
        if re.match(r"voxpipe\.(pipelines|cli)\b", name)
    ]
    assert offenders == []


def test_nothing_outside_cli_imports_cli():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in _modules(PACKAGE)
        if "cli" not in path.relative_to(PACKAGE).parts
        for name in _imported(path)
        if re.match(r"voxpipe\.cli\b", name)
    ]
    assert offenders == []


@pytest.mark.parametrize("subpackage", sorted(PIPELINE_LAYERS))
def test_pipeline_subpackages_import_downwards_only(subpackage):
    allowed = PIPELINE_LAYERS[subpackage] | {subpackage}
    offenders = []
    for path in _modules(PACKAGE / "pipelines" / subpackage):
        for name in _imported(path):
            match = re.match(r"voxpipe\.pipelines\.(\w+)", name)
            if match and match.group(1) not in allowed:
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert offenders == []


def test_pipelines_is_one_folder_per_capability():
    loose = sorted(p.name for p in (PACKAGE / "pipelines").glob("*.py"))
    assert loose == ["__init__.py", "demo.py"]
    assert {p.name for p in (PACKAGE / "pipelines").iterdir() if (p / "__init__.py").is_file()} == set(
        PIPELINE_LAYERS
    )


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init} has no docstring"
        first, second = doc.splitlines()[:2]
        assert first.strip() and re.search(r"\bimports?\b", second), (
            f"{init}: second line should say what it may import"
        )


def test_importing_voxpipe_changes_no_global_state():
    """No import hook, no warnings filter: importing the library leaves the interpreter as it was."""
    probe = (
        "import sys, warnings; hooks, filters = list(sys.meta_path), list(warnings.filters); import voxpipe; "
        "import voxpipe.pipelines.data; print(sys.meta_path == hooks, warnings.filters == filters)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True"], done.stderr


@pytest.mark.parametrize(
    "old",
    ["voxpipe.pipelines.train.build_trainer", "voxpipe.pipelines.data.msd_datalist", "voxpipe.synthetic"],
)
def test_the_unreleased_0_1_paths_are_gone(old):
    assert pydoc.locate(old) is None
