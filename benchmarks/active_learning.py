"""One simulated round of assisted annotation on liver phantoms: edit effort, and Dice before/after fine-tuning.

A weak starting model (the liver bundle with the demo's small settings, trained on ``--base`` phantoms
for ``--base-epochs``) pre-labels a pool of ``--pool`` phantoms, with flip TTA and uncertainty ranking.
The ``--correct`` most uncertain cases are "corrected" with their phantom truth, saved as Slicer
``.seg.nrrd`` files. ``voxpipe annotate ingest`` measures the edit and ``finetune`` trains on them
for ``--finetune-epochs``. The remaining cases are then pre-labelled again. Printed: the edit-effort summary,
and Dice against the truth on the remaining cases before and after
(:func:`voxpipe.pipelines.annotation.simulate.simulate_round`).

    python benchmarks/active_learning.py [--base 4 --base-epochs 20 --pool 12 --correct 4 --finetune-epochs 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "configs" / "liver_ct_segresnet"
MODEL = {
    "pixdim": [1.0, 1.0, 0.0],
    "patch_size": [64, 64, 32],
    "network_def#init_filters": 8,
    "progress": False,
}
TRAIN = {"batch_size": 2, "samples_per_image": 1, "learning_rate": 0.003, "cpu_bf16": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=4, help="phantoms the starting model is trained on")
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--pool", type=int, default=12, help="phantoms to pre-label")
    parser.add_argument("--correct", type=int, default=4, help="cases the simulated reviewer corrects")
    parser.add_argument("--finetune-epochs", type=int, default=40)
    parser.add_argument("--no-tta", action="store_true")
    args = parser.parse_args()

    from voxpipe.phantoms.ct import write_msd_dataset
    from voxpipe.pipelines.annotation.simulate import simulate_round
    from voxpipe.pipelines.bundles.run import run_bundle

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        write_msd_dataset(folder / "base", n_train=args.base, n_test=0, seed=11)
        run_bundle(
            BUNDLE,
            config="train",
            overrides={
                "dataset_dir": str(folder / "base"),
                "output_dir": str(folder / "base_run"),
                "max_epochs": args.base_epochs,
                "val_interval": args.base_epochs,
                "val_fraction": 0.0,
                **MODEL,
                **TRAIN,
            },
        )
        base_seconds = time.perf_counter() - started
        write_msd_dataset(folder / "pool", n_train=args.pool, n_test=0, seed=12)
        pool = [
            (p, folder / "pool" / "labelsTr" / p.name)
            for p in sorted((folder / "pool" / "imagesTr").glob("*.nii.gz"))
        ]
        started = time.perf_counter()
        result = simulate_round(
            BUNDLE,
            pool,
            folder / "work",
            weights=folder / "base_run" / "models" / "model_final.pt",
            n_correct=args.correct,
            finetune_epochs=args.finetune_epochs,
            overrides=MODEL,
            train_overrides={**TRAIN, "val_interval": args.finetune_epochs},
            tta=not args.no_tta,
        )
        round_seconds = time.perf_counter() - started
    effort = result["edit_effort"]
    print(
        f"starting model: {args.base} phantoms x {args.base_epochs} epochs ({base_seconds:.0f} s); pool {args.pool}, "
        f"{args.correct} corrected (most uncertain first), fine-tuned {args.finetune_epochs} epochs; round {round_seconds:.0f} s"
    )
    print(f"corrected: {', '.join(result['corrected'])}")
    print(f"edit effort: {effort['cases']} cases, {effort['cases_accepted_unchanged']} accepted unchanged")
    for name, figures in effort["structures"].items():
        print(
            f"  {name:<8s} median Dice(pre-label, correction) {figures['median_dice']:.3f}  median HD95 "
            f"{figures['median_hd95_mm'] if figures['median_hd95_mm'] is not None else float('nan'):.1f} mm  "
            f"median added {figures['median_added_ml']:.2f} mL  removed {figures['median_removed_ml']:.2f} mL  "
            f"slices touched {figures['median_slices_touched']:.0f}"
            + (
                f"  lesions +{figures['lesions_added']} -{figures['lesions_removed']} ~{figures['lesions_changed']}"
                if "lesions_added" in figures
                else ""
            )
        )
    print(f"Dice on the {len(result['remaining'])} remaining cases (mean over cases with the structure):")
    for name in result["dice_before"]:
        print(
            f"  {name:<8s} before {result['dice_before'][name]:.3f}  after {result['dice_after'][name]:.3f}"
        )


if __name__ == "__main__":
    main()
