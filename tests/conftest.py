"""Shared fixtures: tiny phantom datasets, the shipped bundle, and the optional real-data folder."""

from __future__ import annotations

import os

# Under pytest-xdist each worker gets its share of the cores (and so do the processes tests start):
# two workers each running PyTorch's OpenMP pool over every core oversubscribe them and slow down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from voxpipe.phantoms.ct import write_msd_dataset  # noqa: E402
from voxpipe.pipelines.bundles.config import shipped_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The test files that take longest on two cores (``--durations=0``, 2026-12-03: 106 s down to 31 s),
# longest first. They are collected first, so the two xdist workers (``--dist loadfile`` hands out
# files in collection order) start with them and end together, instead of one worker starting a
# long file when the other has nothing left. The other files keep their order, after these.
LONGEST_FIRST = (
    "test_detection.py",
    "test_nnunet_real.py",
    "test_classify.py",
    "test_select.py",
    "test_deploy.py",
    "test_readme.py",
    "test_nnunet_predict.py",
    "test_resume.py",
    "test_planning.py",
    "test_export.py",
    "test_registry.py",
    "test_cli.py",
    "test_bundle_networks.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def real_data_dir() -> Path | None:
    """../shared/data beside the checkout, or $VOXPIPE_REAL_DATA; None when absent (a user's clone)."""
    candidates = [os.environ.get("VOXPIPE_REAL_DATA"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    folder = real_data_dir()
    if folder is None:
        from helpers import absent

        absent(
            "real data (../shared/data or $VOXPIPE_REAL_DATA) is not available",
            required_by="VOXPIPE_REQUIRE_REAL_DATA",
        )
    return folder


@pytest.fixture(scope="session")
def liver_bundle() -> Path:
    return shipped_bundle("liver_ct_segresnet")


@pytest.fixture(scope="session")
def tiny_liver_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four training and two test tiny liver phantoms (MSD layout), made once per session."""
    root = tmp_path_factory.mktemp("tiny_liver")
    write_msd_dataset(root, task="liver", n_train=4, n_test=2, seed=7, size="tiny")
    return root


# Overrides that make the liver bundle fast enough for unit tests on tiny phantoms.
TINY_MODEL = {"patch_size": [32, 32, 16], "network_def#init_filters": 8, "progress": False}


@pytest.fixture
def engines(monkeypatch):
    """Every InferenceEngine built during the test, in order (their ``stats`` count weight loads and
    cases): how tests see that a run built its network once."""
    from voxpipe.pipelines.inference.engine import InferenceEngine

    built: list = []
    original = InferenceEngine.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(InferenceEngine, "__init__", recording)
    return built
