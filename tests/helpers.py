"""Test helpers importable from bundle configs (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


class OracleNet(torch.nn.Module):
    """A 'network' that maps normalised intensity to classes voxel by voxel.

    On a noise-free phantom whose intensity encodes its label (see ``label_image``), this predicts
    the label exactly on whatever grid it is given. Being pointwise, sliding-window blending cannot
    change its answer, so any difference between its written output and the label comes from the
    geometry chain (orientation, resampling, inversion, writing): exactly what the tests check.
    """

    def __init__(self, centres: tuple[float, ...] = (1 / 3, 2 / 3, 1.0), sharpness: float = 1000.0) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres).view(1, -1, 1, 1, 1))
        self.sharpness = float(
            sharpness
        )  # not a buffer: the state dict stays the same; lower = softer probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) intensities in [0, 1] → (B, C, X, Y, Z) logits."""
        return -self.sharpness * (x - self.centres) ** 2


def label_image(label):
    """HU image whose value encodes the label: 0 → 0 HU, 1 → 100 HU, 2 → 200 HU.

    With the bundle's [-100, 200] HU window these become 0.333, 0.667 and 1.0, OracleNet's centres.
    """
    return (100 * label).astype("int16")


# Small versions of each registered network, so tests parametrized over the registry stay quick on 2 CPU cores.
SMALL = {
    "unet3d": {"channels": (8, 16, 32), "strides": (2, 2)},
    "segresnet": {"init_filters": 8},
    "segresnet_ds": {"init_filters": 8},
    "dynunet": {"filters": [8, 16, 32, 64, 128]},
    "attention_unet": {"channels": (8, 16, 32), "strides": (2, 2)},
    "swin_unetr": {"feature_size": 12, "depths": (1, 1, 1, 1)},
    "unetr": {"img_size": (32, 32, 32), "hidden_size": 96, "mlp_dim": 192, "num_heads": 4, "feature_size": 8},
    "densenet121": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    "densenet169": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    "densenet201": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2)},
    "resnet": {},
}


class PauseAt:
    """Training handler for the kill-and-resume test: at ``iteration``, write ``marker`` and wait to be killed."""

    def __init__(self, iteration: int, marker: str) -> None:
        self.iteration = iteration
        self.marker = marker

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine) -> None:
        import pathlib
        import time

        pathlib.Path(self.marker).write_text(f"epoch {engine.state.epoch} iteration {engine.state.iteration}")
        time.sleep(120)  # the test sends SIGKILL now


ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str | None:
    """The Orthanc executable (Debian's package puts it in /usr/sbin), or None."""
    import shutil
    from pathlib import Path

    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


class OrthancServer:
    """A fresh Orthanc on free localhost ports with a generated configuration (tests and benchmarks/serve_latency.py).

    ``modalities`` maps a name to ``(AE title, port)`` of peers on 127.0.0.1 Orthanc may send to. The
    DICOMweb plugin is loaded when installed (:attr:`dicomweb`).
    """

    def __init__(self, folder, *, modalities: dict[str, tuple[str, int]], binary: str | None = None) -> None:
        import json
        import subprocess
        import time
        from pathlib import Path

        import requests

        binary = binary or orthanc_binary()
        if binary is None:
            raise FileNotFoundError("Orthanc is not installed")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.dicomweb = Path(ORTHANC_DICOMWEB_PLUGIN).is_file()
        config = {
            "Name": "voxpipe-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in modalities.items()},
            "DicomCheckCalledAet": True,
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log_path = folder / "orthanc.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
            )
        self.url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not start: {self.log_path.read_text()[-2000:]}")

    def upload(self, paths) -> None:
        import requests

        for path in paths:
            requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=60).raise_for_status()

    def series(self, modality: str) -> list[dict]:
        import requests

        found = requests.get(f"{self.url}/series", params={"expand": ""}, timeout=10).json()
        return [s for s in found if s["MainDicomTags"].get("Modality") == modality]

    def send(self, series_id: str, modality: str) -> None:
        """Orthanc C-STOREs a series to one of its modalities (REST ``/modalities/{name}/store``)."""
        import requests

        answer = requests.post(
            f"{self.url}/modalities/{modality}/store",
            json={"Resources": [series_id], "Synchronous": True},
            timeout=600,
        )
        answer.raise_for_status()

    def download(self, series: dict, folder) -> list:
        from pathlib import Path

        import requests

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for instance in series["Instances"]:
            path = folder / f"{instance}.dcm"
            path.write_bytes(requests.get(f"{self.url}/instances/{instance}/file", timeout=60).content)
            paths.append(path)
        return paths

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except Exception:
                self.process.kill()


def require(module: str):
    """Import a reference library a test compares against (a dev dependency).

    On a user's machine without it the test skips; under CI (``VOXPIPE_REQUIRE_REFERENCES=1``, set by
    ``.ci/run``) its absence fails the test, so a broken dev install cannot pass silently.
    """
    import importlib
    import os

    import pytest

    try:
        return importlib.import_module(module)
    except ImportError as error:
        if os.environ.get("VOXPIPE_REQUIRE_REFERENCES") == "1":
            pytest.fail(f"{module} is a dev dependency the tests need (pip install -e '.[dev]'): {error}")
        pytest.skip(f"{module} is not installed ({error})", allow_module_level=True)


def absent(what: str, *, required_by: str) -> None:
    """Skip a test whose real data or tool is missing on a user's machine; under CI (``required_by``,
    e.g. ``VOXPIPE_REQUIRE_REAL_DATA=1``, set by ``.ci/run``) fail instead, so it cannot pass by skipping."""
    import os

    import pytest

    if os.environ.get(required_by) == "1":
        pytest.fail(f"{what} ({required_by}=1: required here)")
    pytest.skip(what)


def engine_counts(built) -> tuple[int, int, int]:
    """(builds, weight loads, cases) of the engines the ``engines`` fixture recorded."""
    return (
        len(built),
        sum(e.stats.weight_loads for e in built),
        sum(e.stats.cases for e in built),
    )
