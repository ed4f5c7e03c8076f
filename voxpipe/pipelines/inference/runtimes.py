"""Where the windows' network runs: PyTorch as it is, or OpenVINO (float32, or int8 quantised by NNCF).

``torch``: the network itself (the exact path). ``openvino``: the same weights converted to OpenVINO
and run in float32 (values within ~1e-3 of PyTorch's; 1.6× PyTorch on a 128³ window of nnU-Net's
default network, 2 AVX2 cores). ``openvino-int8``: NNCF's post-training quantisation of that model,
calibrated on windows of the first case it runs (3.8× PyTorch there; agreement with the exact path is
measured by ``benchmarks/routes.py``, not assumed).

Converting a 3D U-Net takes minutes (two for nnU-Net's default network, plus one for quantising), so
the converted model is kept in a cache folder keyed by the weights' SHA-256, the window's shape, the
route and OpenVINO's version: a later run loads it in seconds. An int8 model's cache records which
case calibrated it, and the log says so.

If OpenVINO fails to convert or compile a network, the windows run in PyTorch and one warning line
says why. OpenVINO has crashed outright on some AMD CPUs (a signal, not an exception), so a model is
first compiled and run on one window in a child process, once per model and CPU (the verdict is kept
beside the cached model): a child that dies leaves voxpipe running in PyTorch. One OpenVINO Core
serves the process, and the thread's signal stack is put back after OpenVINO's CPU plugin swaps it
(:func:`signal_stack_kept`). Why our own: neither MONAI nor nnU-Net runs a network through
OpenVINO; this is the glue (convert, fix the window's shape, cache, calibrate, check, fall back).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino", "openvino-int8")

#: windows NNCF calibrates an int8 model on (from the first case run)
CALIBRATION_WINDOWS = 4


def cache_root(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path:
    """``$VOXPIPE_CACHE/openvino``, else ``$XDG_CACHE_HOME/voxpipe/openvino``, else ``~/.cache/voxpipe/openvino``."""
    if environ.get("VOXPIPE_CACHE"):
        return Path(environ["VOXPIPE_CACHE"]) / "openvino"
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxpipe" / "openvino"


def check_runtime(runtime: str) -> str:
    """``runtime`` if voxpipe knows it and what it needs is installed.

    Raises:
        InputError: an unknown runtime, or OpenVINO/NNCF not installed.
    """
    if runtime not in RUNTIMES:
        raise InputError(f"runtime: expected one of {', '.join(RUNTIMES)}, found {runtime!r}")
    needs = {"openvino": ["openvino"], "openvino-int8": ["openvino", "nncf"]}.get(runtime, [])
    for module in needs:
        try:
            __import__(module)
        except ImportError:
            raise InputError(
                f"runtime {runtime!r}: the Python package {module!r} is not installed",
                hint="pip install 'voxpipe[openvino]' installs OpenVINO and NNCF at the tested versions",
            ) from None
    return runtime


def weights_key(network: torch.nn.Module, shape: Sequence[int], runtime: str) -> str:
    """The cache key of ``network``'s weights run on windows of ``shape`` by ``runtime``."""
    import openvino

    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    versions = [openvino.__version__]
    if runtime == "openvino-int8":
        import nncf

        versions.append(nncf.__version__)
    digest.update(json.dumps([list(map(int, shape)), runtime, versions]).encode())
    return digest.hexdigest()[:32]


class OpenVINONetwork:
    """A network compiled by OpenVINO for windows of one shape: ``(N, C_in, *window)`` float32 tensor
    → ``(N, C_out, *window)`` float32 tensor (each window on its own, as compiled).

    Args:
        compiled: OpenVINO's compiled model.
        shape: the one window shape ``(1, C_in, *window)`` it was compiled for.
        source: what it came from (for the log).
    """

    def __init__(self, compiled: Any, shape: Sequence[int], source: str) -> None:
        self.compiled, self.shape, self.source = compiled, [int(s) for s in shape], source
        self.request = compiled.create_infer_request()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if list(windows.shape[1:]) != self.shape[1:]:
            raise RuntimeError(
                f"OpenVINO model for windows {self.shape[1:]}, given {list(windows.shape[1:])}"
            )
        outputs = []
        for window in windows.detach().float().cpu():
            result = self.request.infer({0: window[None].contiguous().numpy()})
            outputs.append(torch.from_numpy(np.array(result[0])))  # the request reuses its buffer
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)).to(windows.device)


def compile_network(
    network: torch.nn.Module,
    shape: Sequence[int],
    runtime: str,
    *,
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
    calibrated_on: str = "",
    cache: Path | None = None,
    threads: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``network`` on windows of ``shape`` (``(1, C_in, *window)``) by ``runtime``; the network itself
    for ``"torch"`` or when OpenVINO fails (one warning line says why).

    Args:
        calibration: the int8 route's calibration windows, ``(1, C_in, *window)`` float32 arrays; only
            called when no cached int8 model exists.
        calibrated_on: what the calibration windows come from (recorded in the cache, logged).
        cache: the cache folder (default :func:`cache_root`).
        threads: OpenVINO's threads (default PyTorch's).
    """
    if runtime == "torch":
        return network
    check_runtime(runtime)
    try:
        return _openvino(network, shape, runtime, calibration, calibrated_on, cache, threads)
    except InputError:
        raise
    except Exception as error:  # OpenVINO's and NNCF's errors have no common base
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        logger.warning("%s could not compile the network (%s); the windows run in PyTorch", runtime, first)
        return network


def _openvino(
    network: torch.nn.Module,
    shape: Sequence[int],
    runtime: str,
    calibration: Callable[[], Iterable[np.ndarray]] | None,
    calibrated_on: str,
    cache: Path | None,
    threads: int | None,
) -> OpenVINONetwork:
    import openvino as ov

    core = _core(ov)
    folder = (cache or cache_root()) / weights_key(network, shape, runtime)
    path = folder / "model.xml"
    if path.exists():
        model = core.read_model(str(path))
        record = _read_json(folder / "voxpipe.json", dict)
        if runtime == "openvino-int8":
            logger.info("int8 model from %s (calibrated on %s)", folder, record.get("calibrated_on", "?"))
    else:
        example = torch.zeros([int(s) for s in shape])
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constant shapes: the window's is fixed
            # traced here without the tracer's check, which convert_model's own trace runs: a second
            # forward pass and several copies of the output (GBs for 118 classes at 128³)
            traced = torch.jit.trace(network.float().eval(), example, check_trace=False, strict=False)
            model = ov.convert_model(traced, example_input=example)
            del traced
        model.reshape({0: [int(s) for s in shape]})
        record: dict[str, Any] = {"runtime": runtime, "shape": [int(s) for s in shape]}
        if runtime == "openvino-int8":
            import nncf

            if calibration is None:
                raise RuntimeError("int8 needs calibration windows")
            check_in_child(ov, model, shape, None, threads)  # NNCF runs the float32 model here to calibrate
            windows = [np.asarray(w, dtype=np.float32) for w in calibration()]
            with signal_stack_kept():  # NNCF compiles with an OpenVINO Core of its own
                model = nncf.quantize(
                    model, nncf.Dataset(windows), subset_size=len(windows), fast_bias_correction=True
                )
            record["calibrated_on"] = calibrated_on
            record["calibration_windows"] = len(windows)
            logger.warning(
                "int8: calibrated on %d windows of %s; kept in %s for later runs of these weights",
                len(windows),
                calibrated_on or "the first case",
                folder,
            )
        _save(ov, model, folder, record)
    check_in_child(ov, model, shape, folder, threads)
    with signal_stack_kept():
        compiled = core.compile_model(model, "CPU", _config(threads))
    return OpenVINONetwork(compiled, shape, str(folder))


_CORE: list[Any] = []


def _core(ov: Any) -> Any:
    """One OpenVINO Core for the process: each Core makes its own CPU plugin, and the plugin swaps the
    thread's signal stack in when made and back when destroyed; two plugins destroyed in the order
    they were made leave the thread on the first one's freed stack (the next signal with a Python
    handler, a Ctrl-C or a DataLoader's SIGCHLD, then kills the process with SIGSEGV)."""
    if not _CORE:
        _CORE.append(ov.Core())
    return _CORE[0]


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """The calling thread's alternate signal stack (``sigaltstack``; Python's faulthandler sets one)
    as it was before the block, put back if the block changed it. OpenVINO's CPU plugin installs its
    own when made and, when destroyed, puts back the one it found, which may be gone by then (see
    :func:`_core`); with the thread's stack put back here, the plugin finds it not its own and leaves it.
    Why our own: neither OpenVINO nor Python guards this; Linux only (elsewhere a no-op)."""
    libc = _libc()
    before = _Stack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = _Stack()
        if libc.sigaltstack(None, ctypes.byref(now)) == 0 and (now.ss_sp, now.ss_size, now.ss_flags) != (
            before.ss_sp,
            before.ss_size,
            before.ss_flags,
        ):
            if before.ss_flags & 2:  # SS_DISABLE: there was none
                before.ss_sp, before.ss_size = None, 0
            libc.sigaltstack(ctypes.byref(before), None)


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _read_json(path: Path, kind: type) -> Any:
    """``path``'s JSON if it is a ``kind``, else an empty ``kind`` (a missing or damaged cache file)."""
    try:
        found = json.loads(path.read_text())
        return found if isinstance(found, kind) else kind()
    except (OSError, ValueError):
        return kind()


def _save(ov: Any, model: Any, folder: Path, record: dict[str, Any]) -> None:
    """The model's IR and record into ``folder``, written beside it and renamed (another process may
    be writing the same key; the first rename wins). A cache that cannot be written is not an error."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".part-"))
        ov.save_model(model, str(scratch / "model.xml"), compress_to_fp16=False)
        (scratch / "voxpipe.json").write_text(json.dumps(record, indent=1))
        try:
            scratch.rename(folder)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    except OSError as error:
        logger.warning("the OpenVINO model could not be cached in %s (%s)", folder, error)


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them when fewer)."""
    if len(items) <= count:
        return list(items)
    return (
        [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else [items[0]]
    )


def _config(threads: int | None) -> dict[str, Any]:
    return {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
    }


#: what the child process runs: read the model, compile it as voxpipe does, infer one window of zeros
CHILD_CHECK = """
import json, sys
import numpy as np
import openvino as ov
core = ov.Core()
compiled = core.compile_model(core.read_model(sys.argv[1]), "CPU", json.loads(sys.argv[2]))
compiled.create_infer_request().infer({0: np.zeros(json.loads(sys.argv[3]), dtype=np.float32)})
"""


def check_in_child(
    ov: Any, model: Any, shape: Sequence[int], folder: Path | None, threads: int | None
) -> None:
    """Compile ``model`` and run it on one window in a child process, unless ``folder`` (the cached
    model) records that this CPU and OpenVINO version passed already; a pass is recorded there.

    Raises:
        RuntimeError: the child died or failed (the message says how): compiling here could crash.
    """
    # the CPU as /proc/cpuinfo names it: asking OpenVINO's CPU plugin could be what crashes
    machine = hashlib.sha256(json.dumps([ov.__version__, _cpu()]).encode()).hexdigest()[:16]
    record = folder / "checked.json" if folder is not None else None
    passed = [str(item) for item in _read_json(record, list)] if record is not None else []
    if machine in passed:
        return
    with tempfile.TemporaryDirectory(prefix="voxpipe-openvino-") as scratch:
        path = folder / "model.xml" if folder is not None and (folder / "model.xml").is_file() else None
        if path is None:
            path = Path(scratch) / "model.xml"
            ov.save_model(model, str(path), compress_to_fp16=False)
        config = _config(threads)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD_CHECK,
                str(path),
                json.dumps(config),
                json.dumps([int(s) for s in shape]),
            ],
            capture_output=True,
            text=True,
        )
    if done.returncode:
        if done.returncode < 0:
            try:
                how = f"died of {signal.Signals(-done.returncode).name}"
            except ValueError:
                how = f"died of signal {-done.returncode}"
        else:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            how = f"failed: {last[:160]}"
        raise RuntimeError(f"OpenVINO's check in a child process {how}")
    if record is not None:
        try:
            record.write_text(json.dumps([*passed, machine]))
        except OSError:
            pass  # checked again next time


def _cpu() -> list[str]:
    """This CPU's model name and feature flags (Linux; empty elsewhere): what a check's verdict is kept for."""
    found = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in found:
                found[key.strip()] = value.strip()
    except OSError:
        pass
    return [found.get("model name", ""), found.get("flags", "")]


__all__ = [
    "CALIBRATION_WINDOWS",
    "RUNTIMES",
    "OpenVINONetwork",
    "cache_root",
    "check_in_child",
    "check_runtime",
    "compile_network",
    "signal_stack_kept",
    "spread",
    "weights_key",
]
