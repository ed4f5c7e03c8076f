"""The package layout holds: imports point one way, pipelines/ is one folder per capability, each
package says what lives in it, and the 0.1 dotted paths that copied bundles use keep working with a
deprecation warning that names the new path."""

from __future__ import annotations

import ast
import os
import pydoc
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL

import voxpipe
from voxpipe._moved import MOVED_MODULES, MOVED_NAMES, VoxpipeDeprecationWarning

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

# Every voxpipe _target_ the 0.1 bundles shipped with, and where it lives now.
OLD_TARGETS = {
    "voxpipe.pipelines.bundle.run_engines": "voxpipe.pipelines.bundles.run.run_engines",
    "voxpipe.pipelines.data.msd_datalist": "voxpipe.pipelines.data.datalists.msd_datalist",
    "voxpipe.pipelines.data.cached_dataset": "voxpipe.pipelines.data.caching.cached_dataset",
    "voxpipe.pipelines.evaluate.batch_image_meta": "voxpipe.pipelines.evaluation.evaluate.batch_image_meta",
    "voxpipe.pipelines.fast_infer.FastSlidingWindowInferer": "voxpipe.pipelines.inference.sliding_window.FastSlidingWindowInferer",
    "voxpipe.pipelines.handlers.CaseProgress": "voxpipe.pipelines.training.handlers.CaseProgress",
    "voxpipe.pipelines.train.DeepSupervisionLoss": "voxpipe.pipelines.training.trainer.DeepSupervisionLoss",
    "voxpipe.pipelines.train.build_optimizer": "voxpipe.pipelines.training.trainer.build_optimizer",
    "voxpipe.pipelines.train.build_scheduler": "voxpipe.pipelines.training.trainer.build_scheduler",
    "voxpipe.pipelines.train.build_trainer": "voxpipe.pipelines.training.trainer.build_trainer",
    "voxpipe.pipelines.distributed.initialize": "voxpipe.pipelines.training.distributed.initialize",
    "voxpipe.pipelines.distributed.data_loader": "voxpipe.pipelines.training.distributed.data_loader",
    "voxpipe.pipelines.classify.RoiCropd": "voxpipe.pipelines.training.classification.RoiCropd",
    "voxpipe.pipelines.classify.classification_datalist": "voxpipe.pipelines.training.classification.classification_datalist",
    "voxpipe.pipelines.classify.classification_metrics": "voxpipe.pipelines.training.classification.classification_metrics",
    "voxpipe.pipelines.classify.classification_loss": "voxpipe.pipelines.training.classification.classification_loss",
    "voxpipe.pipelines.classify.balanced_sample_weights": "voxpipe.pipelines.training.classification.balanced_sample_weights",
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


@pytest.mark.parametrize("old,new", sorted(OLD_TARGETS.items()))
def test_old_bundle_targets_resolve_to_the_same_object_with_a_warning(old, new):
    with pytest.warns(VoxpipeDeprecationWarning, match=re.escape(f"moved to {new}")):
        found = pydoc.locate(old)  # what MONAI's ConfigParser uses for a dotted _target_
    assert found is not None and found is pydoc.locate(new)


def test_every_moved_module_and_name_still_imports():
    for old, new in MOVED_MODULES.items():
        if old in MOVED_NAMES:
            continue
        module = __import__(old, fromlist=["_"])
        public = [n for n in vars(__import__(new, fromlist=["_"])) if not n.startswith("_")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VoxpipeDeprecationWarning)
            assert all(getattr(module, n) is getattr(sys.modules[new], n) for n in public), old
    for old, names in MOVED_NAMES.items():
        for name, new in names.items():
            with pytest.warns(
                VoxpipeDeprecationWarning, match=re.escape(f"{old}.{name} moved to {new}.{name}")
            ):
                assert pydoc.locate(f"{old}.{name}") is getattr(__import__(new, fromlist=["_"]), name)


def test_unknown_names_under_an_old_path_are_still_errors():
    assert pydoc.locate("voxpipe.pipelines.train.no_such_function") is None
    assert pydoc.locate("voxpipe.pipelines.data.no_such_function") is None
    with pytest.raises(ImportError):
        from voxpipe.pipelines.bundle import no_such_function  # noqa: F401


def _as_copied_from_0_1(bundle: Path, into: Path) -> Path:
    """A copy of a shipped bundle whose configs still name every component by its 0.1 dotted path."""
    copy = Path(shutil.copytree(bundle, into))
    for config in (copy / "configs").glob("*.yaml"):
        text = config.read_text()
        for old, new in OLD_TARGETS.items():
            text = text.replace(new, old)
        config.write_text(text)
    return copy


@pytest.mark.slow
def test_a_bundle_copied_with_the_old_paths_still_trains_with_a_warning(
    liver_bundle, tiny_liver_dataset, tmp_path
):
    """`voxpipe train` and MONAI's own runner both run it; voxpipe's stderr names each new path."""
    copy = _as_copied_from_0_1(liver_bundle, tmp_path / "copied_bundle")
    train_yaml = (copy / "configs" / "train.yaml").read_text()
    assert (
        "voxpipe.pipelines.train.build_trainer" in train_yaml
        and "voxpipe.pipelines.training" not in train_yaml
    )
    sets = [
        f"dataset_dir={tiny_liver_dataset}",
        "max_epochs=1",
        "val_interval=1",
        "cache=none",
        *(f"{k}={v}" for k, v in TINY_MODEL.items()),
    ]
    voxpipe_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxpipe.cli",
            "train",
            str(copy),
            *(a for s in sets for a in ("--set", s)),
            "--set",
            f"output_dir={tmp_path / 'voxpipe_run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert voxpipe_run.returncode == 0, voxpipe_run.stderr[-3000:]
    assert (tmp_path / "voxpipe_run" / "models" / "model.pt").is_file()
    assert "VoxpipeDeprecationWarning" in voxpipe_run.stderr
    for new in (
        "voxpipe.pipelines.training.trainer.build_trainer",
        "voxpipe.pipelines.data.datalists.msd_datalist",
    ):
        assert f"moved to {new}" in voxpipe_run.stderr

    monai_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(copy / "configs" / "train.yaml"),
            "--meta_file",
            str(copy / "configs" / "metadata.json"),
            "--bundle_root",
            str(copy),
            "--output_dir",
            str(tmp_path / "monai_run"),
            *(a for s in sets for a in ("--" + s.split("=")[0], s.split("=", 1)[1])),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"},
    )
    assert monai_run.returncode == 0, monai_run.stderr[-3000:]
    assert (tmp_path / "monai_run" / "models" / "model.pt").is_file()
    assert "moved to voxpipe.pipelines.training.trainer.build_trainer" in monai_run.stderr


def test_repository_uses_no_old_path():
    """Shipped bundles, docs, benchmarks and tests name the new paths (except the table of old ones, and
    documentation lines that speak of the 0.1 paths)."""
    old = re.compile(
        r"\b(" + "|".join(re.escape(m) for m in sorted(MOVED_MODULES, key=len, reverse=True)) + r")\b"
    )
    split = re.compile(
        r"\bvoxpipe\.pipelines\.data\.(" + "|".join(MOVED_NAMES["voxpipe.pipelines.data"]) + r")\b"
    )
    exempt = {PACKAGE / "_moved.py", PACKAGE / "pipelines" / "data" / "__init__.py", Path(__file__).resolve()}
    files = [
        p
        for folder in ("voxpipe", "configs", "benchmarks", "tests")
        for p in (REPO / folder).rglob("*")
        if p.suffix in (".py", ".yaml", ".json", ".md")
        and p.resolve() not in exempt
        and "__pycache__" not in p.parts
    ]
    files.append(REPO / "README.md")
    offenders = [
        f"{p.relative_to(REPO)}:{n}: {m.group(0)}"
        for p in files
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "0.1" not in line
        for m in (*old.finditer(line), *split.finditer(line))
    ]
    assert offenders == []
