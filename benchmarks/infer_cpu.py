"""Sliding-window inference on the CPU: plain MONAI vs voxpipe's FastSlidingWindowInferer.

Same SegResNet weights, same 256 × 256 × 160 volume (a liver phantom resampled to that size, HU
window [-100, 200] → [0, 1]), roi 96³, overlap 0.25, sw_batch_size 4, Gaussian blending for both:

  (a) MONAI ``sliding_window_inference`` in fp32;
  (b) voxpipe's default CPU path: body crop + bf16 autocast (``FastSlidingWindowInferer``).

Each runs in a forked child process so its peak RSS is its own. Prints seconds, the speed-up, Dice
agreement per class between the two argmax label maps, and peak RSS. ``--weights`` takes a trained
checkpoint (e.g. the demo's ``runs/demo/run/models/model_final.pt`` with ``--init-filters 8``);
without it the network is a seeded random init, whose near-tied logits make agreement figures
pessimistic.

    python benchmarks/infer_cpu.py [--weights W --init-filters 8] [--size 256 256 160]

``--memory`` measures instead the peak RSS of a whole file-to-file run on a 512 × 512 × 600 CT
(int16 NIfTI, 0.75 × 0.75 × 0.8 mm, an upsampled liver phantom; 3 classes; the liver bundle's
1.5 × 1.5 × 2.5 mm grid): (a) the same chain with MONAI's ``SlidingWindowInferer``, ``Invertd``
and ``AsDiscreted`` and (b) ``voxpipe infer`` (fast inferer, slab-wise ``ResampleArgmaxd``,
post-processing, statistics). Each runs in its own subprocess and reports its own
``ru_maxrss``. The budget is 3 GB.

    python benchmarks/infer_cpu.py --memory [--weights W --init-filters 8] [--size 512 512 600]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from voxpipe.metrics.overlap import dice


def volume(size: tuple[int, int, int]) -> torch.Tensor:
    from voxpipe.phantoms.ct import liver_phantom

    phantom = liver_phantom(0, size="default")
    hu = ndimage.zoom(phantom.image.astype(np.float32), np.array(size) / np.array(phantom.image.shape), order=1)
    scaled = np.clip((hu + 100.0) / 300.0, 0.0, 1.0)
    return torch.from_numpy(scaled)[None, None]


def network(init_filters: int, weights: str | None) -> torch.nn.Module:
    from voxpipe.networks import build_network

    torch.manual_seed(0)
    net = build_network("segresnet", in_channels=1, out_channels=3, init_filters=init_filters, weights=weights)
    return net.eval()


def _child(kind: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    from monai.inferers import sliding_window_inference

    from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer

    torch.set_num_threads(args.threads)
    image, net = volume(tuple(args.size)), network(args.init_filters, args.weights)
    roi = [args.roi] * 3
    started = time.perf_counter()
    with torch.no_grad():
        if kind == "monai":
            logits = sliding_window_inference(image, roi, 4, net, overlap=0.25, mode="gaussian")
        else:
            inferer = FastSlidingWindowInferer(roi, sw_batch_size=4, overlap=0.25, mode="gaussian", precision=args.precision,
                                               channels_last=args.channels_last, skip_air=not args.no_skip_air)
            logits = inferer(image, net)
            print(f"  voxpipe windows run {inferer.last_counts['run']}, skipped as air {inferer.last_counts['skipped']}", flush=True)
    labels = logits.argmax(1)[0].to(torch.uint8).numpy()
    seconds = time.perf_counter() - started
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, labels))


def run(kind: str, args: argparse.Namespace) -> tuple[float, float, np.ndarray]:
    context = mp.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(kind, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


BUNDLE = Path(__file__).resolve().parents[1] / "configs" / "liver_ct_segresnet"


def large_ct(size: tuple[int, int, int], folder: Path) -> Path:
    """An upsampled liver phantom as an int16 NIfTI of ``size`` voxels at 0.75 × 0.75 × 0.8 mm."""
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.transforms.io import save_nifti

    path = folder / f"ct_{'x'.join(map(str, size))}.nii"
    if not path.is_file():
        phantom = liver_phantom(0, orientation="RAS", size="default")
        zoom = np.array(size) / np.array(phantom.image.shape)
        hu = ndimage.zoom(phantom.image.astype(np.int16), zoom, order=0)
        save_nifti(hu, np.diag([0.75, 0.75, 0.8, 1.0]), path)
    return path


def _memory_child(kind: str, image: str, weights: str, init_filters: int, out: str) -> None:
    """One file-to-file run; prints its own peak RSS (MiB) and seconds as JSON on the last line."""
    started = time.perf_counter()
    overrides = {"network_def#init_filters": init_filters, "progress": False}
    if kind == "voxpipe":
        from voxpipe.pipelines.inference.infer import infer_with_bundle

        infer_with_bundle(BUNDLE, [image], output_dir=out, weights=weights, overrides=overrides)
    else:  # the bundle's chain with MONAI's inferer and inversion (the shipped configs before voxpipe's own)
        from monai.bundle import ConfigParser

        from voxpipe.pipelines.bundles.config import find_config
        from voxpipe.pipelines.bundles.run import run_bundle

        chain = ConfigParser.load_config_file(str(find_config(BUNDLE, "inference")))["postprocessing"]["transforms"]
        chain[1:2] = [{"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                       "nearest_interp": False, "to_tensor": True},
                      {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
        monai = {
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": 4, "overlap": 0.25,
                        "mode": "gaussian"},
            "postprocessing#transforms": chain,
        }
        run_bundle(BUNDLE, config="inference", overrides={
            "output_dir": out, "checkpoint": weights, "datalist": [{"image": image}], **overrides, **monai,
        })  # fmt: skip
    seconds = time.perf_counter() - started
    print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}))


def memory(args: argparse.Namespace) -> None:
    size = tuple(args.size if args.size != [256, 256, 160] else [512, 512, 600])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = large_ct(size, folder)
        weights = args.weights
        if weights is None:
            weights = str(folder / "random.pt")
            torch.save(network(args.init_filters, None).state_dict(), weights)
        print(f"volume {size} int16 at 0.75 × 0.75 × 0.8 mm ({image.stat().st_size / 2**20:.0f} MiB), liver bundle, "
              f"SegResNet(init_filters={args.init_filters}), 3 classes")
        results = {}
        for kind in ("voxpipe", "monai"):
            command = [sys.executable, __file__, "--memory-child", kind, str(image), weights, str(args.init_filters), str(folder / kind)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  {kind:8s} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
                continue
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {kind:8s} {results[kind]['seconds']:7.1f} s   peak RSS {results[kind]['rss_mib']:7.0f} MiB", flush=True)
        if len(results) == 2:
            a = nib_labels(folder / "voxpipe", image)
            b = nib_labels(folder / "monai", image)
            print("  Dice agreement of the written label maps: " + ", ".join(f"class {c} {dice(a == c, b == c):.4f}" for c in (1, 2)))
        if "voxpipe" in results:
            verdict = "within" if results["voxpipe"]["rss_mib"] <= 3 * 1024 else "OVER"
            print(f"voxpipe peak RSS {results['voxpipe']['rss_mib'] / 1024:.2f} GiB: {verdict} the 3 GB budget")


def nib_labels(folder: Path, image: Path) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.load(folder / image.name.replace(".nii", ".nii.gz")).dataobj)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        kind, image, weights, init_filters, out = sys.argv[2:7]
        _memory_child(kind, image, weights, int(init_filters), out)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="peak RSS of file-to-file runs on a 512 × 512 × 600 CT")
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 160])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--weights", help="trained checkpoint (default: seeded random init)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true", help="voxpipe path in channels-last 3D (faster, less exact)")
    parser.add_argument("--no-skip-air", action="store_true", help="run every window, also those entirely in air")
    args = parser.parse_args()
    if args.memory:
        memory(args)
        return
    print(f"volume {tuple(args.size)}, SegResNet(init_filters={args.init_filters}), roi {args.roi}³, overlap 0.25, "
          f"sw_batch 4, gaussian, {args.threads} threads, weights: {args.weights or 'random init (seed 0)'}")
    results = {kind: run(kind, args) for kind in ("monai", "voxpipe")}
    for kind, (seconds, rss, labels) in results.items():
        counts = np.bincount(labels.ravel(), minlength=3)
        print(f"  {kind:8s} {seconds:7.1f} s   peak RSS {rss:7.0f} MiB   voxels per class {counts.tolist()}")
    plain, fast = results["monai"][2], results["voxpipe"][2]
    agreement = [dice(plain == c, fast == c) for c in (1, 2)]
    print(f"speed-up {results['monai'][0] / results['voxpipe'][0]:.2f}×; Dice agreement liver {agreement[0]:.4f}, tumour {agreement[1]:.4f}")


if __name__ == "__main__":
    main()
