"""The CUDA paths, run for real on a lent GPU, with the figures they print.

    python benchmarks/gpu_check.py                      # CUDA (a few minutes on one data-centre GPU)
    python benchmarks/gpu_check.py --device cpu --quick # the same code on the CPU, small (tests run this)

What it runs, each for real, and prints:

1. **inference, file to file** (``voxpipe infer``'s engine, the liver bundle): a clinical-size CT
   phantom (512 × 512 × 150, 0.8 × 0.8 × 2 mm) with fp32 and with AMP (``precision auto``: fp16 on
   CUDA), seconds per case after a warm-up case, and Dice agreement per class between the two label
   maps and against a CPU fp32 run of the same weights;
2. **stitching on the GPU**: the sliding window over the 274 × 274 × 120 network grid with the
   blended output on the GPU (``stitch_device input``) and on the CPU, seconds and peak GPU memory;
   and a 100-class random network streamed row block by row block (peak GPU memory);
3. **training**: the liver bundle's trainer (MONAI ``SupervisedTrainer``, AMP on CUDA) for a few
   iterations on tiny phantoms: seconds per iteration and the loss, which must be finite;
4. **nnU-Net folder**: a random-init PlainConvUNet folder of the real layout (``nnunet_cpu.py``'s) run
   by ``NnUNetModel`` on the device (fp16 autocast, float16 window arithmetic, as nnU-Net on a GPU)
   and on the CPU (float32): seconds, peak GPU memory, the share of identical voxels and Dice per
   class between the two label maps (fp16 against fp32: close, not identical);
5. **TotalSegmentator task**: ``total`` (its five parts, TotalSegmentator's layout, seeded networks of
   ``tests/totalseg_weights.py``) on a CT phantom through voxpipe's TotalSegmentator pipeline on the
   device (nnU-Net's fp16 autocast, as TotalSegmentator on a GPU) and on the CPU: seconds, peak GPU
   memory, identical voxels. On a GPU with TotalSegmentator installed (``.oracle/totalseg``), add
   ``--totalseg-oracle`` to run TotalSegmentator itself there too and count the voxels that differ.

Random-init SegResNet(16) unless ``--weights`` (with ``--init-filters``) names trained weights:
agreement figures of a random network are pessimistic (near-tied logits). Nothing here downloads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "configs" / "liver_ct_segresnet"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    both = a.sum() + b.sum()
    return 1.0 if both == 0 else float(2 * np.logical_and(a, b).sum() / both)


def _weights(args: argparse.Namespace, folder: Path, classes: int = 3) -> Path:
    if args.weights and classes == 3:
        return Path(args.weights)
    from voxpipe.networks import build_network

    torch.manual_seed(0)
    path = folder / f"random_{classes}.pt"
    network = build_network("segresnet", in_channels=1, out_channels=classes, init_filters=args.init_filters)
    torch.save(network.state_dict(), path)
    return path


def inference(args: argparse.Namespace, folder: Path, device: torch.device) -> dict:
    """File to file through the engine: fp32 and AMP on ``device``, fp32 on the CPU; seconds and agreement."""
    import nibabel as nib

    from voxpipe.phantoms.clinical import ClinicalGeometry, clinical_ct
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.pipelines.inference.infer import infer_with_bundle
    from voxpipe.transforms.io import save_nifti

    cases = []
    for seed in (100, 101):  # the first one warms up (cuDNN autotuning, allocator)
        phantom = (
            liver_phantom((seed, 0), size="tiny")
            if args.quick
            else clinical_ct(
                liver_phantom((seed, 0)),
                np.random.default_rng((seed, 512)),
                geometry=ClinicalGeometry(0.8, 2.0, 150, 0.6, True, -2048),
            )
        )
        path = folder / "images" / f"case_{seed}.nii.gz"
        save_nifti(phantom.image, phantom.affine, path)
        cases.append(path)
    weights = _weights(args, folder)
    overrides = {"network_def#init_filters": args.init_filters}
    if args.quick:
        overrides.update(patch_size=[32, 32, 16])
    labels, seconds = {}, {}
    runs = [(device.type, "fp32"), (device.type, "auto")] + (
        [("cpu", "fp32")] if device.type != "cpu" else []
    )
    for where, precision in runs:
        out = folder / f"out_{where}_{precision}"
        timed = []
        for case in cases:
            started = time.perf_counter()
            infer_with_bundle(
                BUNDLE,
                [case],
                output_dir=out,
                weights=weights,
                overrides={**overrides, "device#preference": where},
                precision=precision,
            )
            timed.append(time.perf_counter() - started)
        seconds[(where, precision)] = timed[-1]
        labels[(where, precision)] = np.asanyarray(nib.load(out / cases[-1].name).dataobj)
    reference = labels[(device.type, "fp32")]
    result = {"seconds": {f"{w} {p}": round(s, 2) for (w, p), s in seconds.items()}, "agreement": {}}
    for key, value in labels.items():
        if key != (device.type, "fp32"):
            result["agreement"][f"{key[0]} {key[1]} vs {device.type} fp32"] = {
                str(c): round(_dice(value == c, reference == c), 4) for c in (1, 2)
            }
    return result


def stitching(args: argparse.Namespace, device: torch.device) -> dict:
    """The sliding window with the output on the GPU and on the CPU; a 100-class network streamed."""
    from voxpipe.networks import build_network
    from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer, stream_sliding_window

    shape = (40, 40, 20) if args.quick else (274, 274, 120)
    roi = [32, 32, 16] if args.quick else [96, 96, 48]
    torch.manual_seed(0)
    image = torch.rand(1, 1, *shape, device=device)
    network = build_network("segresnet", in_channels=1, out_channels=3, init_filters=args.init_filters)
    network = network.to(device).eval()
    result: dict = {}
    for where in ("input", "cpu"):
        inferer = FastSlidingWindowInferer(roi, precision="auto", stitch_device=where, body_mask=False)
        with torch.no_grad():
            inferer(image, network)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            started = time.perf_counter()
            out = inferer(image, network)
            _sync(device)
        result[f"stitch on {where}"] = {
            "seconds": round(time.perf_counter() - started, 3),
            "output device": str(out.device),
            "peak GPU MiB": round(torch.cuda.max_memory_allocated(device) / 2**20)
            if device.type == "cuda"
            else None,
        }
    classes = 12 if args.quick else 100
    many = build_network("segresnet", in_channels=1, out_channels=classes, init_filters=args.init_filters)
    many = many.to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    started = time.perf_counter()
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16),
    ):
        stream_sliding_window(
            image.half() if device.type == "cuda" else image,
            roi,
            4,
            lambda w: many(w.float()).float(),
            lambda start, block: rows.append(block.shape[1]),
        )
    _sync(device)
    result[f"{classes} classes streamed"] = {
        "seconds": round(time.perf_counter() - started, 3),
        "rows handed on": int(sum(rows)),
        "peak GPU MiB": round(torch.cuda.max_memory_allocated(device) / 2**20)
        if device.type == "cuda"
        else None,
    }
    return result


def training(args: argparse.Namespace, folder: Path, device: torch.device) -> dict:
    """A few epochs of the liver bundle's trainer on tiny phantoms (AMP on CUDA)."""
    import csv

    from voxpipe.phantoms.ct import write_msd_dataset
    from voxpipe.pipelines.bundles.run import run_bundle

    dataset = folder / "tiny_liver"
    write_msd_dataset(dataset, task="liver", n_train=2 if args.quick else 4, n_test=1, seed=7, size="tiny")
    epochs = 1 if args.quick else 5
    started = time.perf_counter()
    run_bundle(
        BUNDLE,
        config="train",
        overrides={
            "dataset_dir": str(dataset),
            "output_dir": str(folder / "train"),
            "max_epochs": epochs,
            "val_interval": epochs,
            "patch_size": [32, 32, 16] if args.quick else [96, 96, 48],
            "samples_per_image": 1 if args.quick else 2,
            "network_def#init_filters": args.init_filters,
            "device#preference": device.type,
            "progress": False,
        },
    )
    _sync(device)
    elapsed = time.perf_counter() - started
    rows = list(csv.DictReader(open(folder / "train" / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    return {
        "epochs": epochs,
        "seconds": round(elapsed, 2),
        "last loss": round(losses[-1], 4) if losses else None,
        "finite": bool(losses) and all(np.isfinite(losses)),
    }


def nnunet(args: argparse.Namespace, folder: Path, device: torch.device) -> dict:
    import importlib.util

    import SimpleITK as sitk

    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.pipelines.inference.nnunet.model import NnUNetModel

    spec = importlib.util.spec_from_file_location("nnunet_cpu", Path(__file__).with_name("nnunet_cpu.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.make_folder(
        folder / "nnunet",
        classes=3,
        features=8 if args.quick else 32,
        patch=32 if args.quick else 128,
        folds=1 if args.quick else 2,
    )
    phantom = liver_phantom(5, size="tiny" if args.quick else "default")
    image = sitk.GetImageFromArray(np.asarray(phantom.image, dtype=np.int16).transpose(2, 1, 0))
    image.SetSpacing([float(v) for v in np.abs(np.diag(phantom.affine))[:3]])
    path = folder / "nnunet_ct_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    figures: dict = {"image": list(image.GetSize())}
    maps = {}
    for name, where in (("cpu fp32", torch.device("cpu")), (f"{device.type} device", device)):
        runner = NnUNetModel(model, device=where)
        runner.predict([path])  # warm-up (cuDNN autotuning, allocator)
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        _sync(where)
        started = time.perf_counter()
        maps[name], _ = runner.predict([path])
        _sync(where)
        figures[f"{name} ({runner.precision}) seconds"] = round(time.perf_counter() - started, 2)
        if where.type == "cuda":
            figures["peak GPU MiB"] = round(torch.cuda.max_memory_allocated(where) / 2**20, 1)
    first, second = maps.values()
    figures["identical voxels"] = round(float(np.mean(first == second)), 6)
    figures["dice"] = {str(c): round(_dice(first == c, second == c), 4) for c in (1, 2)}
    return figures


def totalseg(args: argparse.Namespace, folder: Path, device: torch.device) -> dict:
    import sys

    import nibabel as nib

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tests"))
    from totalseg_oracle import case_affine, phantom_array
    from totalseg_weights import make_weights

    from voxpipe.pipelines.inference.totalseg.pipeline import TotalSegmentator

    weights = folder / "totalseg"
    make_weights(
        weights, "total", patch=(16, 16, 16) if args.quick else (64, 64, 64), prefer=["liver", "spleen"]
    )
    shape = (40, 36, 30) if args.quick else (256, 256, 120)
    spacing = (1.6, 1.4, 2.5) if args.quick else (1.2, 1.2, 2.0)
    image = nib.Nifti1Image(phantom_array(shape, seed=3).astype(np.int16), case_affine("LPS", spacing, shape))
    path = folder / "totalseg_ct.nii.gz"
    nib.save(image, path)
    figures: dict = {"image": list(shape)}
    maps = {}
    for name, where in (("cpu", "cpu"), (f"{device.type} device", str(device))):
        runner = TotalSegmentator(weights, device=where)
        if where.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        maps[name] = np.asarray(runner.run(nib.load(path), "total").image.dataobj)
        _sync(torch.device(where))
        figures[f"{name} seconds"] = round(time.perf_counter() - started, 2)
        if where.startswith("cuda"):
            figures["peak GPU MiB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    first, second = maps.values()
    figures["identical voxels"] = round(float(np.mean(first == second)), 6)
    if args.totalseg_oracle:
        from totalseg_oracle import run_oracle

        jobs = [
            {
                "input": str(path),
                "output": str(folder / "ts.nii.gz"),
                "task": "total",
                "options": {"ml": True},
            }
        ]
        where = "gpu" if device.type == "cuda" else "cpu"
        outcome = run_oracle(jobs, weights, folder / "tshome", folder, device=where)
        figures["TotalSegmentator"] = outcome[0]
        if outcome[0]["ok"]:
            theirs = np.asarray(nib.load(folder / "ts.nii.gz").dataobj)
            figures["voxels differing from TotalSegmentator on the device"] = int((theirs != second).sum())
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda (default) or cpu (a smoke test of the same code)"
    )
    parser.add_argument("--quick", action="store_true", help="small volumes and few iterations")
    parser.add_argument("--weights", help="trained liver bundle weights (default: a seeded random init)")
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument(
        "--only", choices=("inference", "stitching", "training", "nnunet", "totalseg"), action="append"
    )
    parser.add_argument(
        "--totalseg-oracle",
        action="store_true",
        help="also run TotalSegmentator itself (make oracle) on the device",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu for the smoke test")
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for part in args.only or ("inference", "stitching", "training", "nnunet", "totalseg"):
            started = time.perf_counter()
            if part == "inference":
                report[part] = inference(args, folder, device)
            elif part == "stitching":
                report[part] = stitching(args, device)
            elif part == "nnunet":
                report[part] = nnunet(args, folder, device)
            elif part == "totalseg":
                report[part] = totalseg(args, folder, device)
            else:
                report[part] = training(args, folder, device)
            print(f"{part}: {json.dumps(report[part])} ({time.perf_counter() - started:.1f} s)", flush=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
