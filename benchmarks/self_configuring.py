"""Self-configuration end to end on phantoms: plan → cross-validate → select → infer → evaluate.

For a phantom task (liver CT, or multi-contrast brain MRI in the MSD 4D layout): ``voxpipe plan``
(default rules: memory measured on this machine), ``voxpipe train --folds all`` with a small epoch
budget, ``voxpipe select`` on the out-of-fold predictions, then on held-out phantoms: the Dice of
every fold model alone, of the fold ensemble (mean of probabilities, no post-processing) and of the
selected bundle (``voxpipe infer`` + ``voxpipe evaluate``). Prints per-fold, mean single-fold,
ensemble and selected mean foreground Dice.

    python benchmarks/self_configuring.py --task liver --n-train 12 --n-test 6 --epochs 60 --bf16
    python benchmarks/self_configuring.py --task brain --n-train 10 --n-test 6 --epochs 60 --bf16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _fg_dice(prediction: np.ndarray, reference: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    from voxpipe.metrics.overlap import dice

    return {name: dice(prediction == value, reference == value) for value, name in labels.items()}


def _mean(rows: list[dict[str, float]], labels: dict[int, str]) -> tuple[float, dict[str, float]]:
    per_class = {name: float(np.nanmean([r[name] for r in rows])) for name in labels.values()}
    return float(np.nanmean(list(per_class.values()))), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["liver", "brain"], default="liver")
    parser.add_argument("--n-train", type=int, default=15)
    parser.add_argument("--n-test", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rules", choices=["voxpipe", "nnunet"], default="voxpipe")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the training steps (cpu_bf16)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    from voxpipe.pipelines.evaluation.crossval import train_folds
    from voxpipe.pipelines.evaluation.select import select_runs
    from voxpipe.pipelines.inference.infer import infer_with_bundle, label_names
    from voxpipe.pipelines.planning.planner import plan_dataset
    from voxpipe.transforms.io import case_id, load_volume

    work = Path(args.out or tempfile.mkdtemp(prefix="voxpipe-selfconf-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if args.task == "liver":
        from voxpipe.phantoms.ct import write_msd_dataset

        dataset = write_msd_dataset(
            work / "data", task="liver", n_train=args.n_train, n_test=args.n_test, seed=5, size="tiny"
        ).parent
    else:
        from voxpipe.phantoms.mri import write_brain_dataset

        dataset = write_brain_dataset(
            work / "data", n_train=args.n_train, n_test=args.n_test, seed=5, size="tiny"
        ).parent
    plan = plan_dataset(dataset, work / "bundle", rules=args.rules)
    seconds["plan"] = time.perf_counter() - started
    print(
        f"plan: spacing {[round(v, 3) for v in plan['target_spacing']]} mm, patch {plan['patch_size']}, batch "
        f"{plan['batch_size']}, {len(plan['pool_kernels'])} stages, channels {plan['channels']}"
    )
    started = time.perf_counter()
    overrides = {"max_epochs": args.epochs, "val_interval": 5, "progress": False, "cpu_bf16": args.bf16}
    record = train_folds(work / "bundle", overrides=overrides)
    seconds["cross-validation"] = time.perf_counter() - started
    started = time.perf_counter()
    selection = select_runs([record.parent], work / "selection")
    seconds["select"] = time.perf_counter() - started
    winner = selection["winner"]
    print(
        f"selected: {' + '.join(winner['members'])}, post-processing {winner['postprocessing']} "
        f"(out-of-fold mean foreground Dice {winner['mean_foreground_dice']:.4f})"
    )

    started = time.perf_counter()
    labels = label_names(work / "bundle")
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    truth = {case_id(p): load_volume(dataset / "labelsTs" / p.name, label=True).array for p in images}
    cv = json.loads(record.read_text())
    fold_rows: dict[str, list[dict[str, float]]] = {}
    probabilities: dict[str, list[np.ndarray]] = {c: [] for c in truth}
    for fold, info in sorted(cv["folds"].items()):
        out = work / "test" / f"fold_{fold}"
        infer_with_bundle(
            work / "bundle",
            images,
            output_dir=out,
            weights=info["weights"],
            save_probabilities=True,
            progress=False,
        )
        fold_rows[fold] = []
        for case, reference in truth.items():
            p = np.load(out / f"{case}_probabilities.npz")["probabilities"].astype(np.float32)
            probabilities[case].append(p)
            fold_rows[fold].append(_fg_dice(p.argmax(0), reference, labels))
    ensemble_rows = [_fg_dice(np.mean(probabilities[c], axis=0).argmax(0), truth[c], labels) for c in truth]
    selected = infer_with_bundle(
        Path(selection["bundle"]), images, output_dir=work / "test" / "selected", progress=False
    )
    selected_rows = [_fg_dice(load_volume(p, label=True).array, truth[case_id(p)], labels) for p in selected]
    seconds["held-out inference"] = time.perf_counter() - started

    print(f"\nheld-out phantoms: {len(truth)}; labels {list(labels.values())}")
    fold_means = []
    for fold, rows in fold_rows.items():
        mean, per_class = _mean(rows, labels)
        fold_means.append(mean)
        print(
            f"fold {fold}: mean foreground Dice {mean:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in per_class.items())
        )
    ensemble, ensemble_classes = _mean(ensemble_rows, labels)
    chosen, chosen_classes = _mean(selected_rows, labels)
    print(
        f"mean single fold: {np.mean(fold_means):.4f} (best {max(fold_means):.4f}, worst {min(fold_means):.4f})"
    )
    print(
        f"fold ensemble (mean probabilities): {ensemble:.4f}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in ensemble_classes.items())
    )
    print(
        f"selected bundle ({winner['postprocessing']}): {chosen:.4f}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in chosen_classes.items())
    )
    print(f"ensemble - mean single fold: {ensemble - np.mean(fold_means):+.4f}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f"; work folder {work}")


if __name__ == "__main__":
    main()
