"""The OpenVINO runtimes of the windows (voxpipe infer --runtime): the same labels as PyTorch's in
float32, a cache that a second load reads instead of converting, int8 calibrated on the first case and
recorded, and a conversion that fails falls back to PyTorch with one warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_nnunet_predict import liver_model, make_image

from voxpipe.errors import InputError
from voxpipe.pipelines.inference import runtimes
from voxpipe.pipelines.inference.nnunet.model import NnUNetModel
from voxpipe.pipelines.inference.runtimes import OpenVINONetwork, check_runtime, compile_network, spread


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXPIPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


def _case(tmp_path):
    return make_image(tmp_path / "ct_0000.nii.gz", shape=(20, 36, 36), spacing=(2.0, 2.0, 2.0))


def test_openvino_float32_gives_pytorchs_labels_and_a_second_load_reads_the_cache(
    tmp_path, cache, monkeypatch
):
    folder = liver_model(tmp_path)
    image = _case(tmp_path)
    reference, _ = NnUNetModel(folder).predict([image])
    model = NnUNetModel(folder, runtime="openvino")
    found, _ = model.predict([image])
    assert isinstance(model._compiled[0], OpenVINONetwork)
    assert np.mean(found == reference) > 0.999  # float32 both: ~1e-6 apart, near-tied random logits aside
    assert len(list(cache.glob("*/model.xml"))) == 1

    import openvino

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    again, _ = NnUNetModel(folder, runtime="openvino").predict([image])
    assert np.array_equal(again, found)


def test_openvino_runs_the_same_logits_as_pytorch_on_a_window(cache):
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 3, 1)
    )
    windows = torch.randn(2, 1, 8, 12, 10)
    compiled = compile_network(network.eval(), [1, 1, 8, 12, 10], "openvino")
    assert isinstance(compiled, OpenVINONetwork)
    with torch.no_grad():
        expected = network(windows)
    found = compiled(windows)
    assert found.shape == expected.shape
    assert torch.allclose(found, expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="windows"):
        compiled(torch.randn(1, 1, 8, 8, 8))


def test_int8_is_calibrated_on_the_first_case_and_says_so(tmp_path, cache, caplog):
    folder = liver_model(tmp_path)
    image = _case(tmp_path)
    with caplog.at_level(logging.WARNING):
        found, _ = NnUNetModel(folder, runtime="openvino-int8").predict([image])
    assert found.shape == (20, 36, 36)
    (record,) = [json.loads(p.read_text()) for p in cache.glob("*/voxpipe.json")]
    assert record["runtime"] == "openvino-int8" and record["calibrated_on"] == str(image)
    assert 0 < record["calibration_windows"] <= runtimes.CALIBRATION_WINDOWS
    assert any(
        "int8: calibrated on" in r.getMessage() and str(image) in r.getMessage() for r in caplog.records
    )


def test_a_failed_conversion_runs_pytorch_with_one_warning(tmp_path, cache, monkeypatch, caplog):
    import openvino

    def broken(*args, **kwargs):
        raise RuntimeError("Exception from src/core: illegal instruction\nsecond line")

    monkeypatch.setattr(openvino, "convert_model", broken)
    folder = liver_model(tmp_path, folds=(0, 1))
    image = _case(tmp_path)
    with caplog.at_level(logging.WARNING):
        found, _ = NnUNetModel(folder, runtime="openvino").predict([image])
    reference, _ = NnUNetModel(folder).predict([image])
    assert np.array_equal(found, reference)  # both folds in PyTorch, each with its own weights
    warnings = [r.getMessage() for r in caplog.records if "could not compile" in r.getMessage()]
    assert warnings == [
        "openvino could not compile the network (Exception from src/core: illegal instruction); the windows run in PyTorch"
    ]


def test_a_crash_in_openvinos_child_check_runs_pytorch_with_one_warning(tmp_path, cache, monkeypatch, caplog):
    """OpenVINO has died of signals on some CPUs: the model is compiled and run on a window in a child
    first; a child killed by SIGSEGV leaves this process running the windows in PyTorch."""
    monkeypatch.setattr(runtimes, "CHILD_CHECK", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    folder = liver_model(tmp_path)
    image = _case(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = NnUNetModel(folder, runtime="openvino")
        found, _ = model.predict([image])
    assert not isinstance(model._compiled[0], OpenVINONetwork)
    reference, _ = NnUNetModel(folder).predict([image])
    assert np.array_equal(found, reference)
    warnings = [r.getMessage() for r in caplog.records if "could not compile" in r.getMessage()]
    assert warnings == [
        "openvino could not compile the network (OpenVINO's check in a child process died of SIGSEGV);"
        " the windows run in PyTorch"
    ]
    assert not list(cache.glob("*/checked.json"))  # nothing recorded: checked again next time


def test_the_child_check_runs_once_per_model_and_cpu(cache, monkeypatch):
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval()
    calls = []
    original = runtimes.subprocess.run
    monkeypatch.setattr(runtimes.subprocess, "run", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert isinstance(compile_network(network, [1, 1, 6, 6, 6], "openvino"), OpenVINONetwork)
    assert isinstance(compile_network(network, [1, 1, 6, 6, 6], "openvino"), OpenVINONetwork)
    assert len(calls) == 1 and len(json.loads(next(cache.glob("*/checked.json")).read_text())) == 1
    monkeypatch.setattr(runtimes, "_cpu", lambda: ["another CPU", "avx512f"])
    compile_network(network, [1, 1, 6, 6, 6], "openvino")
    assert len(calls) == 2  # another CPU: checked again
    monkeypatch.setattr(runtimes, "CHILD_CHECK", "import sys; sys.exit('RuntimeError: no such kernel')")
    monkeypatch.setattr(runtimes, "_cpu", lambda: ["a third CPU", ""])
    with pytest.raises(RuntimeError, match="child process failed: RuntimeError: no such kernel"):
        runtimes._openvino(network, [1, 1, 6, 6, 6], "openvino", None, "", None, None)


SIGNAL_STACK_SCRIPT = """
import ctypes, faulthandler, gc, os, signal, sys
import torch
from voxpipe.pipelines.inference.runtimes import _Stack, compile_network

faulthandler.enable()  # as pytest and `python -X faulthandler` do: the thread gets a signal stack
libc = ctypes.CDLL(None)

def stack():
    found = _Stack()
    libc.sigaltstack(None, ctypes.byref(found))
    return found.ss_sp, found.ss_size

before = stack()
networks = [torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval() for _ in range(2)]
first = compile_network(networks[0], [1, 1, 6, 6, 6], "openvino")
second = compile_network(networks[1], [1, 1, 6, 6, 6], "openvino")
first(torch.zeros(1, 1, 6, 6, 6)), second(torch.zeros(1, 1, 6, 6, 6))
del first, second
gc.collect()
seen = []
signal.signal(signal.SIGUSR1, lambda *args: seen.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
print(before == stack(), seen == [1])
"""


def test_openvino_leaves_the_threads_signal_stack_as_it_found_it(tmp_path):
    """Two networks compiled and freed in the order they were made: each OpenVINO Core's plugin swapped
    the thread's signal stack and put back a freed one, and the next signal with a Python handler (here
    SIGUSR1; in the test suite a DataLoader's SIGCHLD) killed the process with SIGSEGV."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_STACK_SCRIPT],
        env={**__import__("os").environ, "VOXPIPE_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["True", "True"]


def test_unknown_runtimes_and_gpus_are_refused():
    with pytest.raises(InputError, match="expected one of torch, openvino, openvino-int8, found 'tensorrt'"):
        check_runtime("tensorrt")
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 4) == [1, 2]
    assert spread(list(range(5)), 1) == [0]


def test_the_cache_folder_follows_the_environment(tmp_path):
    assert runtimes.cache_root({"VOXPIPE_CACHE": str(tmp_path)}) == tmp_path / "openvino"
    assert runtimes.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "voxpipe" / "openvino"


def test_a_bundles_inferer_runs_its_windows_in_openvino(cache):
    from monai.networks.nets import SegResNet

    from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer

    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8).eval()
    image = torch.randn(1, 1, 48, 40, 20)
    with torch.no_grad():
        plain = FastSlidingWindowInferer([32, 32, 16], precision="fp32", crop_body=False)(image, net)
        inferer = FastSlidingWindowInferer(
            [32, 32, 16], precision="fp32", crop_body=False, runtime="openvino"
        )
        found = inferer(image, net)
        again = inferer(image, net)  # converted once per inferer and network
    assert isinstance(inferer._converted[1], OpenVINONetwork)
    assert torch.allclose(found, plain, atol=1e-4)
    assert torch.equal(found, again)
    with pytest.raises(InputError, match="found 'onnx'"):
        FastSlidingWindowInferer([32, 32, 16], runtime="onnx")


def test_timings_count_the_openvino_windows_as_the_network(cache):
    """``--timings`` wraps the network to time it; OpenVINO converts the network inside the wrapper
    (the cache key of the plain network) and its calls are the *network* stage, not stitching."""
    from monai.networks.nets import SegResNet

    from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer
    from voxpipe.pipelines.inference.timings import Timings, _TimedInferer

    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8).eval()
    image = torch.randn(1, 1, 48, 40, 20)
    timings = Timings()
    inferer = FastSlidingWindowInferer([32, 32, 16], precision="fp32", crop_body=False, runtime="openvino")
    with torch.no_grad():
        _TimedInferer(inferer, timings)(image, net)
    assert timings.seconds.get("network", 0.0) > 0
    assert len(list(cache.iterdir())) == 1
    with torch.no_grad():  # the unwrapped network finds the same converted model
        FastSlidingWindowInferer([32, 32, 16], precision="fp32", crop_body=False, runtime="openvino")(
            image, net
        )
    assert len(list(cache.iterdir())) == 1


def test_many_classes_convert_the_network_without_its_head_which_runs_by_classes(tmp_path, cache):
    """A 40-class folder: OpenVINO converts the features only (a 118-class window's output is 1 GB
    at 128³), PyTorch's head makes the classes in chunks; logits as the whole network's in PyTorch."""
    from test_bounded_memory import many_class_case

    from voxpipe.pipelines.inference.nnunet.readers import read_case

    folder, image = many_class_case(tmp_path)
    model = NnUNetModel(folder, runtime="openvino")
    found = model.logits(model.preprocess(read_case([image])))
    assert isinstance(model._compiled[0], OpenVINONetwork) and model._compiled_heads is not None
    assert model._compiled[0].shape == [1, 1, 16, 16, 16]
    request_output = model._compiled[0].compiled.outputs[0].get_partial_shape()
    assert int(request_output[1].get_length()) < 40  # the features, not the 40 classes
    reference = NnUNetModel(folder)
    expected = reference.logits(reference.preprocess(read_case([image])))
    assert found.shape == expected.shape == (40, *found.shape[1:])
    assert torch.allclose(found.float(), expected.float(), atol=2e-2)  # float16 logits, float32 both sides
    mirrored = NnUNetModel(folder, runtime="openvino", mirroring=True)
    mirrored.logits(mirrored.preprocess(read_case([image])))
    assert mirrored._compiled_heads is None  # mirroring adds flipped windows' outputs: whole network
