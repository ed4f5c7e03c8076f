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
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
import torch
from scipy import ndimage


def volume(size: tuple[int, int, int]) -> torch.Tensor:
    from voxpipe.synthetic import liver_phantom

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

    from voxpipe.pipelines.fast_infer import FastSlidingWindowInferer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 160])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--weights", help="trained checkpoint (default: seeded random init)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true", help="voxpipe path in channels-last 3D (faster, less exact)")
    parser.add_argument("--no-skip-air", action="store_true", help="run every window, also those entirely in air")
    args = parser.parse_args()
    print(f"volume {tuple(args.size)}, SegResNet(init_filters={args.init_filters}), roi {args.roi}³, overlap 0.25, "
          f"sw_batch 4, gaussian, {args.threads} threads, weights: {args.weights or 'random init (seed 0)'}")
    results = {kind: run(kind, args) for kind in ("monai", "voxpipe")}
    for kind, (seconds, rss, labels) in results.items():
        counts = np.bincount(labels.ravel(), minlength=3)
        print(f"  {kind:8s} {seconds:7.1f} s   peak RSS {rss:7.0f} MiB   voxels per class {counts.tolist()}")
    plain, fast = results["monai"][2], results["voxpipe"][2]
    agreement = []
    for c in (1, 2):
        a, b = plain == c, fast == c
        total = a.sum() + b.sum()
        agreement.append(float(2 * (a & b).sum() / total) if total else float("nan"))
    print(f"speed-up {results['monai'][0] / results['voxpipe'][0]:.2f}×; Dice agreement liver {agreement[0]:.4f}, tumour {agreement[1]:.4f}")


if __name__ == "__main__":
    main()
