"""Compression experiments on the CPU: does bf16 or int8 make a trained liver SegResNet faster, and what does it cost in Dice?

Runs, in one process, sliding-window inference (MONAI ``sliding_window_inference``, roi = the
model's patch, overlap 0.25, gaussian, sw_batch 4) over the held-out phantoms of a ``voxpipe demo``
run with each variant of the same weights:

* ``torch fp32``   – eager PyTorch, the reference;
* ``torch bf16``   – eager PyTorch under ``torch.autocast("cpu", torch.bfloat16)``;
* ``torch int8 dynamic`` – ``torch.ao.quantization.quantize_dynamic`` (it quantizes Linear layers only);
* ``onnxruntime fp32`` – the ``voxpipe export`` ONNX file;
* ``onnxruntime int8 dynamic`` – ``onnxruntime.quantization.quantize_dynamic`` on Conv (ConvInteger);
* ``onnxruntime int8 static`` – QDQ int8 calibrated on training patches (QLinearConv);
* ``openvino fp32`` / ``openvino int8 (NNCF)`` – ``voxpipe infer --runtime openvino|openvino-int8``
  (:mod:`voxpipe.pipelines.inference.runtimes`), int8 calibrated on four training patches.

Prints seconds per case, speed-up, Dice against the phantom labels (liver, tumour) and agreement
(Dice) with the fp32 labels. A variant that fails prints why. Usage::

    voxpipe demo -o runs/demo            # trains the model measured here
    python benchmarks/compression.py --demo runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from voxpipe.metrics.overlap import dice
from voxpipe.networks import build_network
from voxpipe.networks.export import export_network
from voxpipe.networks.transfer import load_weights
from voxpipe.pipelines.demo import DemoSettings

Predictor = Callable[[torch.Tensor], torch.Tensor]


def load_cases(
    dataset: Path, part: str, settings: DemoSettings, limit: int
) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(case, image (1, 1, X, Y, Z) on the demo's grid, label (X, Y, Z)) for the first ``limit`` cases."""
    images = sorted((dataset / f"images{part}").glob("*.nii.gz"))[:limit]
    transform = Compose(
        [
            LoadImaged(keys=["image", "label"], image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
            Spacingd(keys=["image", "label"], pixdim=settings.pixdim, mode=["bilinear", "nearest"]),
            ScaleIntensityRanged(keys="image", a_min=-100, a_max=200, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    cases = []
    for image in images:
        item = transform({"image": str(image), "label": str(dataset / f"labels{part}" / image.name)})
        cases.append(
            (
                image.name.split(".")[0],
                item["image"].as_tensor()[None].float(),
                item["label"].as_tensor()[0].numpy().astype(np.uint8),
            )
        )
    return cases


def torch_predictor(network: torch.nn.Module, *, bf16: bool = False) -> Predictor:
    def predict(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return network(batch).float()

    return predict


def ort_predictor(path: Path) -> Predictor:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": batch.numpy()})[0])

    return predict


def segment(predict: Predictor, image: torch.Tensor, roi: tuple[int, int, int]) -> np.ndarray:
    logits = sliding_window_inference(image, roi, 4, predict, overlap=0.25, mode="gaussian")
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def static_int8(fp32: Path, out: Path, patches: list[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Patches(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": p} for p in patches])

        def get_next(self):  # noqa: ANN202 (onnxruntime's interface)
            return next(self.items, None)

    quantize_static(
        str(fp32),
        str(out),
        Patches(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", default="runs/demo", help="folder of a finished 'voxpipe demo' run (default: runs/demo)"
    )
    parser.add_argument("--cases", type=int, default=6, help="held-out cases to segment (default: 6)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed passes over the cases per variant (default: 1)"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    demo = Path(args.demo)
    weights = demo / "run" / "models" / "model_final.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights}: no trained model; run 'voxpipe demo -o {demo}' first")
    settings = DemoSettings(output_dir=demo)
    roi = tuple(settings.patch_size)
    network = build_network("segresnet", out_channels=3, init_filters=settings.init_filters).eval()
    load_weights(network, weights, strict=True)
    cases = load_cases(demo / "dataset", "Ts", settings, args.cases)
    work = Path(tempfile.mkdtemp(prefix="voxpipe-compression-"))
    export_network(
        network,
        output_dir=work,
        name="segresnet",
        input_shape=(1, 1, *roi),
        formats=["onnx"],
        network_kwargs={"out_channels": 3, "init_filters": settings.init_filters},
    )
    fp32_onnx = work / "model.onnx"

    variants: dict[str, Callable[[], tuple[Predictor, float]]] = {}
    size_mb = lambda p: os.path.getsize(p) / 1e6  # noqa: E731
    torch_mb = sum(p.numel() * p.element_size() for p in network.parameters()) / 1e6
    variants["torch fp32"] = lambda: (torch_predictor(network), torch_mb)
    variants["torch bf16 autocast"] = lambda: (torch_predictor(network, bf16=True), torch_mb)

    def torch_dynamic() -> tuple[Predictor, float]:
        quantized = torch.ao.quantization.quantize_dynamic(network, {torch.nn.Linear}, dtype=torch.qint8)
        changed = sum(1 for m in quantized.modules() if "quantized" in type(m).__module__)
        if not changed:
            raise RuntimeError(
                "no layer quantized: quantize_dynamic covers Linear/LSTM, SegResNet has only Conv3d"
            )
        return torch_predictor(quantized), torch_mb

    variants["torch int8 dynamic"] = torch_dynamic
    variants["onnxruntime fp32"] = lambda: (ort_predictor(fp32_onnx), size_mb(fp32_onnx))

    def ort_dynamic() -> tuple[Predictor, float]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = work / "model_int8_dynamic.onnx"
        quantize_dynamic(
            str(fp32_onnx), str(out), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"]
        )
        return ort_predictor(out), size_mb(out)

    def ort_static() -> tuple[Predictor, float]:
        out = work / "model_int8_static.onnx"
        training = load_cases(demo / "dataset", "Tr", settings, 4)
        patches = []
        for _, image, _ in training:  # calibration: patches from the centre of training images
            x, y, z = (max(0, (s - r) // 2) for s, r in zip(image.shape[2:], roi, strict=True))
            patch = image[:, :, x : x + roi[0], y : y + roi[1], z : z + roi[2]]
            if tuple(patch.shape[2:]) == roi:
                patches.append(patch.numpy())
        static_int8(fp32_onnx, out, patches)
        return ort_predictor(out), size_mb(out)

    variants["onnxruntime int8 dynamic"] = ort_dynamic
    variants["onnxruntime int8 static"] = ort_static

    def openvino(runtime: str) -> tuple[Predictor, float]:
        """voxpipe infer --runtime: OpenVINO fp32, or NNCF int8 calibrated on four training patches."""
        from voxpipe.pipelines.inference.runtimes import compile_network

        os.environ.setdefault("VOXPIPE_CACHE", str(work / "cache"))
        training = load_cases(demo / "dataset", "Tr", settings, 4)
        patches = []
        for _, image, _ in training:
            x, y, z = (max(0, (s - r) // 2) for s, r in zip(image.shape[2:], roi, strict=True))
            patch = image[:, :, x : x + roi[0], y : y + roi[1], z : z + roi[2]]
            if tuple(patch.shape[2:]) == roi:
                patches.append(patch.numpy())
        compiled = compile_network(network, [1, 1, *roi], runtime, calibration=lambda: patches)
        return (lambda batch: compiled(batch)), torch_mb

    variants["openvino fp32"] = lambda: openvino("openvino")
    variants["openvino int8 (NNCF)"] = lambda: openvino("openvino-int8")

    reference: dict[str, np.ndarray] = {}
    results = []
    print(f"{len(cases)} held-out phantoms, roi {roi}, {torch.get_num_threads()} threads, weights {weights}")
    header = f"{'variant':<26}{'s/case':>8}{'speed-up':>10}{'liver':>8}{'tumour':>8}{'agree liver':>13}{'agree tumour':>14}{'MB':>7}"
    print(header)
    for name, make in variants.items():
        try:
            predict, megabytes = make()
            segment(predict, cases[0][1], roi)  # warm-up (allocations, ORT graph optimisation)
            start = time.perf_counter()
            for _ in range(args.repeats):
                labels = {case: segment(predict, image, roi) for case, image, _ in cases}
            seconds = (time.perf_counter() - start) / (args.repeats * len(cases))
        except Exception as error:  # report and go on: a failing variant is a finding
            print(f"{name:<26}failed: {type(error).__name__}: {str(error).splitlines()[0][:150]}")
            results.append({"variant": name, "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        if not reference:
            reference = labels
        truth = {case: label for case, _, label in cases}
        row = {"variant": name, "seconds_per_case": seconds, "megabytes": megabytes}
        for cls, structure in ((1, "liver"), (2, "tumour")):
            row[structure] = float(np.nanmean([dice(labels[c] == cls, truth[c] == cls) for c in labels]))
            row[f"agree_{structure}"] = float(
                np.nanmean([dice(labels[c] == cls, reference[c] == cls) for c in labels])
            )
        row["speed_up"] = results[0]["seconds_per_case"] / seconds if results else 1.0
        results.append(row)
        print(
            f"{name:<26}{seconds:>8.2f}{row['speed_up']:>9.2f}×{row['liver']:>8.3f}{row['tumour']:>8.3f}"
            f"{row['agree_liver']:>13.4f}{row['agree_tumour']:>14.4f}{megabytes:>7.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
