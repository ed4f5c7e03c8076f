"""HD95 + ASSD + NSD on liver-sized masks: voxpipe vs DeepMind surface-distance vs MONAI, in one process.

Builds pairs of 512 × 512 × 300 masks (0.78 × 0.78 × 1.5 mm) holding a liver-sized lobulated object
(about 1.5 l) and a "prediction" of it (shifted, with a bumpy boundary), then times, per pair:

* voxpipe: ``surface_distances`` once, then HD95, ASSD and NSD (2 mm) from it;
* surface-distance (the reference): ``compute_surface_distances`` then the same three metrics;
* MONAI: ``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(symmetric)``
  and ``compute_surface_dice(use_subvoxels=True)``, each on one-hot tensors.

Prints seconds, speed-up ratios and the values (voxpipe's must equal surface-distance's). Usage::

    pip install surface-distance      # in the dev extra
    python benchmarks/metrics_speed.py --pairs 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from voxpipe.metrics import surface

SHAPE = (512, 512, 300)
SPACING = (0.78, 0.78, 1.5)


def liver_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference): a lobulated ~1.5 l object and a perturbed copy."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal((32, 32, 19)), 2.0)
    bumps = ndimage.zoom(coarse / coarse.std(), np.array(SHAPE) / np.array(coarse.shape), order=1)
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    centre = np.array(SHAPE) * (0.45, 0.5, 0.5) + rng.uniform(-10, 10, 3)
    radii_mm = np.array([95.0, 75.0, 65.0])
    r = sum(((g - c) * s / rad) ** 2 for g, c, s, rad in zip(grid, centre, SPACING, radii_mm, strict=True))
    reference = r <= 1 + 0.15 * bumps
    shift = rng.integers(-3, 4, 3)
    prediction = np.roll(reference, tuple(shift), axis=(0, 1, 2)) ^ (
        np.abs(r - 1 - 0.15 * bumps) < 0.02 * rng.random()
    )
    prediction = ndimage.binary_opening(prediction, iterations=1)
    return prediction, reference


def run_voxpipe(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = surface.surface_distances(pred, ref, SPACING)
    return {
        "hd95": surface.hausdorff(d, 95),
        "assd": surface.assd(d),
        "nsd": surface.normalised_surface_dice(d, 2.0),
    }


def run_surface_distance(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    import surface_distance as sd

    d = sd.compute_surface_distances(ref, pred, SPACING)
    a, b = d["surfel_areas_gt"], d["surfel_areas_pred"]
    assd = (np.sum(d["distances_gt_to_pred"] * a) + np.sum(d["distances_pred_to_gt"] * b)) / (
        a.sum() + b.sum()
    )
    return {
        "hd95": sd.compute_robust_hausdorff(d, 95),
        "assd": float(assd),
        "nsd": sd.compute_surface_dice_at_tolerance(d, 2.0),
    }


def run_monai(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    def onehot(mask: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(mask)[None, None]
        return torch.cat([~t, t], dim=1)

    p, r = onehot(pred), onehot(ref)
    return {
        "hd95": float(compute_hausdorff_distance(p, r, percentile=95, spacing=SPACING)),
        "assd": float(compute_average_surface_distance(p, r, symmetric=True, spacing=SPACING)),
        "nsd": float(compute_surface_dice(p, r, [2.0], spacing=SPACING, use_subvoxels=True)),
    }


def timed(fn, *args) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    values = fn(*args)
    return time.perf_counter() - start, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="mask pairs (default: 3)")
    parser.add_argument("--no-monai", action="store_true", help="skip MONAI (the slowest)")
    args = parser.parse_args()
    np.Inf = np.inf  # surface-distance 0.1 predates NumPy 2 (it uses np.Inf for empty masks)
    runners = {"voxpipe": run_voxpipe, "surface-distance": run_surface_distance}
    if not args.no_monai:
        runners["monai"] = run_monai
    totals = dict.fromkeys(runners, 0.0)
    print(f"shape {SHAPE}, spacing {SPACING} mm; HD95 + ASSD + NSD@2mm per pair")
    warm_pred, warm_ref = liver_pair(1000)
    for fn in runners.values():  # imports, lookup tables, thread pools and first-touch pages: not timed
        fn(warm_pred, warm_ref)
    for seed in range(args.pairs):
        pred, ref = liver_pair(seed)
        volume_ml = ref.sum() * np.prod(SPACING) / 1000
        print(
            f"pair {seed}: reference {volume_ml:.0f} ml, prediction {pred.sum() * np.prod(SPACING) / 1000:.0f} ml"
        )
        results = {}
        for name, fn in runners.items():
            seconds, values = timed(fn, pred, ref)
            totals[name] += seconds
            results[name] = values
            shown = ", ".join(f"{k} {v:.6f}" for k, v in values.items())
            print(f"  {name:<17}{seconds:8.2f} s   {shown}")
        reference = results["surface-distance"]
        worst = max(abs(results["voxpipe"][k] - reference[k]) for k in reference)
        print(f"  voxpipe vs surface-distance: largest difference {worst:.2e}")
    print("total seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in totals.items()))
    for name in runners:
        if name != "voxpipe":
            print(f"voxpipe is {totals[name] / totals['voxpipe']:.1f}× faster than {name}")


if __name__ == "__main__":
    main()
