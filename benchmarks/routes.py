"""Every speed route for the network, on one window of nnU-Net's default 3d_fullres network.

The network dominates voxpipe's CPU inference, so each route is first measured where it acts: one
128³ window of a PlainConvUNet of nnU-Net's default size (6 stages, 32–320 features, 118 outputs as
TotalSegmentator's ``total``), random weights, an input smoothed like a CT. Per route: the best of
``--repeats`` timed calls after a warm-up, the set-up it costs (conversion, quantisation, compiling),
and how far its logits are from PyTorch float32's. A random network's logits are near-tied, so its
argmax agreement says nothing of a trained model's; ``nnunet_cpu.py --sides ...`` measures the kept
routes end to end with Dice on a trained model.

    python benchmarks/routes.py                        # all routes, 118 classes, 128³
    python benchmarks/routes.py --routes fp32,openvino-int8 --classes 3 --patch 96

Routes: ``fp32`` (PyTorch eager), ``bf16`` (PyTorch autocast; emulated and slow without AVX512-BF16
or AMX), ``batch2`` (two windows per call, time per window), ``compile`` (``torch.compile``),
``torch-int8`` (PyTorch's own post-training int8, FX graph mode, x86 backend; its pt2e successor
moved to torchao, which is not installed beside this torch), ``openvino`` (float32) and
``openvino-int8`` (NNCF), both through :mod:`voxpipe.pipelines.inference.runtimes`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUTES = ("fp32", "bf16", "batch2", "compile", "torch-int8", "openvino", "openvino-int8")


def default_network(classes: int) -> torch.nn.Module:
    """nnU-Net's default 3d_fullres PlainConvUNet (as its planner makes it for a CT at 128³)."""
    from torch import nn

    from voxpipe.networks.nnunet import NnUNet

    return NnUNet(
        "PlainConvUNet",
        input_channels=1,
        num_classes=classes,
        n_stages=6,
        features_per_stage=[32, 64, 128, 256, 320, 320],
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
        n_conv_per_stage=[2] * 6,
        n_conv_per_stage_decoder=[2] * 5,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    ).eval()


def ct_like(patch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, patch, patch, patch, generator=generator)
    return torch.nn.functional.avg_pool3d(noise, 9, 1, 4) * 3


def best_of(call: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out = call()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - started)
    return best, out


def route(
    name: str, network: torch.nn.Module, x: torch.Tensor, patch: int
) -> tuple[Callable[[], torch.Tensor], float]:
    """The call that runs one window by ``name``, and its set-up seconds."""
    started = time.perf_counter()
    if name == "fp32":
        return (lambda: network(x)), 0.0
    if name == "bf16":

        def bf16() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return network(x).float()

        return bf16, 0.0
    if name == "batch2":
        pair = torch.cat([x, x])
        return (lambda: network(pair)[:1]), 0.0
    if name == "compile":
        compiled = torch.compile(network)
        compiled(x)
        return (lambda: compiled(x)), time.perf_counter() - started
    if name == "torch-int8":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # FX graph mode's deprecation notes
            prepared = prepare_fx(network, get_default_qconfig_mapping("x86"), (x,))
            for seed in range(1, 4):
                prepared(ct_like(patch, seed))
            quantised = convert_fx(prepared)
        return (lambda: quantised(x)), time.perf_counter() - started
    from voxpipe.pipelines.inference.runtimes import compile_network

    calibration = [ct_like(patch, seed).numpy() for seed in range(1, 4)]
    with torch.inference_mode(False):
        compiled = compile_network(
            network, list(x.shape), name, calibration=lambda: calibration, calibrated_on="noise"
        )
    return (lambda: compiled(x)), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"some of {','.join(ROUTES)}")
    parser.add_argument("--classes", type=int, default=118)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    network = default_network(args.classes)
    x = ct_like(args.patch, 0)
    os.environ.setdefault("VOXPIPE_CACHE", tempfile.mkdtemp(prefix="voxpipe-routes-"))
    print(
        f"nnU-Net default 3d_fullres PlainConvUNet, {args.classes} classes, one {args.patch}³ window; "
        f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"{'route':14s} {'s/window':>9s} {'vs fp32':>8s} {'set-up s':>9s} {'max |Δ logit|':>14s}")
    reference, base = None, None
    for name in args.routes.split(","):
        with torch.inference_mode():
            call, setup = route(name, network, x, args.patch)
            seconds, out = best_of(call, args.repeats)
        seconds /= 2 if name == "batch2" else 1  # two windows a call: the time per window
        out = out.float()
        if reference is None:
            reference, base = out, seconds
        difference = float((out - reference).abs().max())
        print(f"{name:14s} {seconds:9.2f} {base / seconds:7.2f}x {setup:9.1f} {difference:14.3g}", flush=True)


if __name__ == "__main__":
    main()
