"""TorchScript/ONNX export of every registered network, with parity and a manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from helpers import SMALL, require

from voxpipe.cli import main
from voxpipe.errors import VoxpipeError
from voxpipe.networks import build_network, list_networks, network_spec
from voxpipe.networks.export import export_network, export_registered


def test_small_settings_cover_the_registry():
    assert set(SMALL) == set(list_networks())


@pytest.mark.parametrize("name", sorted(list_networks()))
def test_every_network_exports_with_parity(tmp_path, name):
    onnxruntime = require("onnxruntime")
    manifest = export_registered(
        name, output_dir=tmp_path, network_kwargs=SMALL[name], label_names=["a", "b", "c"]
    )
    assert [f["format"] for f in manifest["files"]] == ["torchscript", "onnx"]
    for item in manifest["files"]:
        assert item["max_abs_diff"] <= 1e-4
        assert item["sha256"] == hashlib.sha256((tmp_path / item["file"]).read_bytes()).hexdigest()
    assert manifest["files"][1]["checked_with"] == "onnxruntime"
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["network"] == name and manifest["versions"]["torch"].startswith(
        torch.__version__.split("+")[0]
    )
    spec = network_spec(name)
    if name == "segresnet":  # convolutional networks without shape-dependent Python accept other sizes
        assert all(f["dynamic_shape"] for f in manifest["files"])
    # The exported ONNX file, run independently, gives the manifest's output shape.
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    shape = manifest["input"]["shape"]
    out = session.run(None, {"image": np.zeros(shape, np.float32)})[0]
    assert list(out.shape) == manifest["output"]["shape"]
    assert manifest["task"] == spec.task


def test_parity_failure_writes_nothing(tmp_path):
    class Drifts(torch.nn.Module):
        """Adds a different random offset on every call: no export can match it."""

        def forward(self, x):
            return x + torch.rand(1).item()

    with pytest.raises(VoxpipeError, match="differs from the network"):
        export_network(
            Drifts(), output_dir=tmp_path, name="drifts", input_shape=(1, 1, 8, 8, 8), formats=["torchscript"]
        )
    assert not list(tmp_path.iterdir())


def test_export_cli_from_a_trained_bundle_checkpoint(tmp_path, liver_bundle, capsys):
    weights = tmp_path / "model.pt"
    torch.save(build_network("segresnet", out_channels=3, init_filters=8).state_dict(), weights)
    argv = [
        "export",
        str(liver_bundle),
        "-o",
        str(tmp_path / "out"),
        "--weights",
        str(weights),
        "--set",
        "network_def#init_filters=8",
        "--set",
        "patch_size=[32,32,16]",
    ]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kwargs"] == {"in_channels": 1, "out_channels": 3, "init_filters": 8}
    assert manifest["input"]["shape"] == [1, 1, 32, 32, 16]
    assert manifest["label_names"] == ["background", "liver", "tumour"]
    assert "max |diff|" in capsys.readouterr().out
    # Weights that do not fit the bundle's network are refused (strict), with exit code 2.
    torch.save(build_network("segresnet", out_channels=2, init_filters=8).state_dict(), weights)
    assert main(argv) == 2
