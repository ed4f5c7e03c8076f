"""Export a network to TorchScript and ONNX, with proof that the export computes the same thing.

PyTorch has the exporters; what deployment lacks is the check and the paperwork. Each export is
written to a temporary file, loaded back (TorchScript with ``torch.jit.load``, ONNX with
onnxruntime when it is installed), run on a seeded random input and compared with the eager network;
only an export within tolerance is renamed into place. A second input shape (one patch side grown by
the network's divisor) tells whether the export really accepts other sizes. ``manifest.json``
records the network name and arguments, the input contract, label names, library versions and a
SHA-256 per file.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxpipe.errors import InputError, VoxpipeError
from voxpipe.networks.registry import NetworkSpec, build_network, network_spec
from voxpipe.transforms.files import atomic_path, sha256_file, write_text_atomic

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_OPSET = 17


@dataclass
class ExportedFile:
    """One exported file and its parity check.

    Attributes:
        file: file name inside the export folder.
        format: ``torchscript`` or ``onnx``.
        sha256: checksum of the file.
        max_abs_diff: largest |export − eager| on the check input (same units as the output: logits).
        tolerance: the bound it had to meet.
        checked_with: what ran the exported file (``torch.jit.load``, ``onnxruntime``) or why nothing did.
        dynamic_shape: the export gave the eager result on a second input shape too.
        seconds: time to export and check.
    """

    file: str
    format: str
    sha256: str
    max_abs_diff: float | None
    tolerance: float
    checked_with: str
    dynamic_shape: bool
    seconds: float


def default_input_shape(name: str, *, in_channels: int = 1, **kwargs: Any) -> tuple[int, ...]:
    """A small input the network accepts: (1, in_channels, s, s, s), s ≥ 32 and a multiple of its divisor."""
    spec = network_spec(name)
    if spec.fixed_size and "img_size" in kwargs:
        return (1, in_channels, *map(int, kwargs["img_size"]))
    size = max(spec.min_size, 32)
    size = -(-size // max(spec.divisor, 1)) * max(spec.divisor, 1)
    if spec.fixed_size:
        return (1, in_channels, 96, 96, 96)
    return (1, in_channels, size, size, size)


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("voxpipe", "monai", "torch", "onnx", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _second_shape(shape: Sequence[int], spec: NetworkSpec | None) -> tuple[int, ...] | None:
    if spec is None or spec.fixed_size:
        return None
    grown = list(shape)
    grown[-1] += max(spec.divisor, 1) * (2 if spec.divisor < 8 else 1)
    return tuple(grown)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _onnx_runner(path: Path) -> tuple[Any, str]:
    try:
        import onnxruntime
    except ImportError:
        return None, "onnx.checker only (pip install 'voxpipe[export]' to run the parity check)"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # a shape the export cannot take is reported by the caller, not logged
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return (lambda array: session.run(None, {input_name: array})[0]), "onnxruntime"


def _export_one(
    network: torch.nn.Module,
    fmt: str,
    target: Path,
    example: torch.Tensor,
    second: torch.Tensor | None,
    tolerance: float,
) -> ExportedFile:
    start = time.perf_counter()
    with torch.no_grad():
        expected = network(example).numpy()
        expected_second = network(second).numpy() if second is not None else None
    with atomic_path(target) as tmp:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(network, example, check_trace=False)
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")

            def run(array: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return loaded(torch.from_numpy(array)).numpy()

            checked_with = "torch.jit.load"
        else:
            try:
                import onnx
            except ImportError as error:
                raise InputError(
                    "--format onnx: the onnx package is not installed", hint="pip install 'voxpipe[export]'"
                ) from error
            dynamic = {0: "batch"} if second is None else {0: "batch", 2: "x", 3: "y", 4: "z"}
            torch.onnx.export(
                network,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["output"],
                dynamic_axes={"image": dynamic, "output": {0: "batch"}},
            )
            onnx.checker.check_model(str(tmp))
            run, checked_with = _onnx_runner(tmp)
        difference = _max_diff(run(example.numpy()), expected) if run is not None else None
        if difference is not None and not difference <= tolerance:
            raise VoxpipeError(
                f"{str(target)!r}: {fmt} export differs from the network by {difference:.3g} (tolerance {tolerance:g}); "
                "nothing was written",
                hint="pass --tolerance to accept it, or report the network and shape",
            )
        dynamic_shape = False
        if run is not None and second is not None:
            try:
                dynamic_shape = _max_diff(run(second.numpy()), expected_second) <= tolerance
            except Exception as error:  # a trace that baked in its shape fails on another one
                logger.debug("%s rejects shape %s: %s", fmt, tuple(second.shape), error)
    return ExportedFile(
        file=target.name,
        format=fmt,
        sha256=sha256_file(target),
        max_abs_diff=difference,
        tolerance=tolerance,
        checked_with=checked_with,
        dynamic_shape=dynamic_shape,
        seconds=round(time.perf_counter() - start, 2),
    )


def export_network(
    network: torch.nn.Module,
    *,
    output_dir: str | os.PathLike[str],
    name: str,
    network_kwargs: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    formats: Sequence[str] = FORMATS,
    label_names: Sequence[str] | None = None,
    tolerance: float = 1e-4,
    seed: int = 0,
    stem: str = "model",
) -> dict[str, Any]:
    """Export ``network`` (eval mode, CPU, fp32) and write ``manifest.json`` beside the files.

    Args:
        network: the module to export (moved to the CPU and set to eval mode).
        output_dir: folder for ``<stem>.ts``, ``<stem>.onnx`` and ``manifest.json``.
        name: registry name (or any description for networks outside the registry).
        network_kwargs: the arguments it was built with (recorded in the manifest).
        input_shape: (B, C, X, Y, Z) of the check input; default from the registry's size contract.
        formats: any of ``torchscript``, ``onnx``.
        label_names: class names, index order (recorded in the manifest).
        tolerance: largest accepted |export − eager| on the check input (fp32 logits).
        seed: seed of the random check input.

    Returns:
        The manifest (also written as ``manifest.json``).

    Raises:
        InputError: unknown format, missing ``onnx`` package, or no input shape for a non-registry network.
        VoxpipeError: an export differs from the network by more than ``tolerance`` (nothing is written).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"export format: expected some of {list(FORMATS)}, found {list(formats)}")
    kwargs = dict(network_kwargs or {})
    try:
        spec: NetworkSpec | None = network_spec(name)
    except InputError:
        spec = None
    if input_shape is None:
        if spec is None:
            raise InputError(f"export {name!r}: expected --input-shape for a network outside the registry")
        input_shape = default_input_shape(name, **kwargs)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 5:
        raise InputError(f"input shape: expected 5 values (B, C, X, Y, Z), found {list(shape)}")
    network = network.to("cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(shape, generator=generator)
    second_shape = _second_shape(shape, spec)
    second = torch.randn(second_shape, generator=generator) if second_shape else None
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        exported = _export_one(network, fmt, folder / f"{stem}{SUFFIXES[fmt]}", example, second, tolerance)
        logger.info(
            "%s: max |diff| %s (%s), other shapes %s",
            exported.file,
            exported.max_abs_diff,
            exported.checked_with,
            "yes" if exported.dynamic_shape else "no",
        )
        files.append(exported)
    with torch.no_grad():
        output_shape = list(network(example).shape)
    manifest = {
        "network": name,
        "kwargs": _jsonable(kwargs),
        "task": spec.task if spec else None,
        "input": {
            "shape": list(shape),
            "layout": "(B, C, X, Y, Z)",
            "dtype": "float32",
            "divisor": spec.divisor if spec else None,
            "min_size": spec.min_size if spec else None,
            "fixed_size": spec.fixed_size if spec else True,
        },
        "output": {
            "shape": output_shape,
            "meaning": "logits per class" if (spec and spec.task) else "network output",
        },
        "label_names": list(label_names) if label_names else None,
        "versions": _versions(),
        "files": [asdict(f) for f in files],
    }
    write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def export_registered(
    name: str,
    *,
    output_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    network_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build a registry network (from ``weights`` when given, strictly: every tensor must load) and export it."""
    kwargs = dict(network_kwargs or {})
    network = build_network(name, **kwargs)
    if weights is not None:
        from voxpipe.networks.transfer import load_weights

        load_weights(network, weights, strict=True)
    return export_network(network, output_dir=output_dir, name=name, network_kwargs=kwargs, **options)
