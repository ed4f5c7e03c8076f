"""``voxpipe demo`` and ``voxpipe synth``: the end-to-end demo and the synthetic datasets it is made of."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from voxpipe.cli.common import format_metric, quiet_monai_bundle


def _cmd_demo(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.demo import DemoSettings, run_demo

    quiet_monai_bundle(args.verbose)
    settings = DemoSettings(
        output_dir=Path(args.output),
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        max_epochs=args.epochs,
        progress=not args.no_progress,
    )
    result = run_demo(settings)
    structures = result.evaluation.structures
    print(f"\nPer-case Dice on {len(result.evaluation.rows)} held-out phantoms:")
    print("  case          " + "".join(f"{s:>9}" for s in structures))
    for row in result.evaluation.rows:
        print(f"  {row['case']:<14}" + "".join(f"   {format_metric(row[f'dice_{s}'])}" for s in structures))
    print("Mean Dice per label:")
    for name in structures:
        stats = result.evaluation.summary["metrics"][name]["dice"]
        undefined = (
            f" ({stats['n_undefined']} cases with no {name} in reference or prediction)"
            if stats["n_undefined"]
            else ""
        )
        print(f"  {name:<12} {format_metric(stats['mean'])}  over {stats['n']} cases{undefined}")
    total = sum(result.seconds.values())
    print(
        "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + f"; total {total:.0f} s"
    )
    print(f"Everything is under {result.output_dir}")
    print(
        f"  dataset {result.dataset_dir}\n  training run {result.run_dir}\n  predictions {result.prediction_dir}"
    )
    print(f"  per-case CSV {result.evaluation.per_case_csv}\n  summary {result.evaluation.summary_json}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.task == "nodules-ct":
        from voxpipe.phantoms.chest import write_nodule_ct_dataset

        n = 10 if args.n_train is None else args.n_train
        root = write_nodule_ct_dataset(args.output, n=n, seed=args.seed, size=args.size)
        print(
            f"wrote {n} chest CTs with nodules (LUNA16 layout: images/, annotations.csv, annotations_excluded.csv, "
            f"seriesuids.csv; world mm, LPS): {root}"
        )
        return 0
    if args.task == "brain-mri":
        from voxpipe.phantoms.mri import write_brain_dataset

        manifest = write_brain_dataset(
            args.output,
            n_train=16 if args.n_train is None else args.n_train,
            n_test=4 if args.n_test is None else args.n_test,
            seed=args.seed,
            size=args.size,
            channels=args.channels,
            progress=True,
        )
        print(f"wrote {args.channels}-contrast brain MRI phantoms (MSD Task01 layout, 4D NIfTI): {manifest}")
        return 0
    if args.task == "nodules":
        from voxpipe.phantoms.nodules import write_nodule_dataset

        n_train = 200 if args.n_train is None else args.n_train
        n_test = 100 if args.n_test is None else args.n_test
        size = 32 if args.size == "tiny" else 48
        manifest = write_nodule_dataset(
            args.output, n_train=n_train, n_test=n_test, seed=args.seed, size=size, progress=True
        )
        print(f"wrote {n_train} training and {n_test} test nodule patches ({size}³ at 1 mm): {manifest}")
        return 0
    from voxpipe.phantoms.ct import write_msd_dataset

    manifest = write_msd_dataset(
        args.output,
        task=args.task,
        n_train=16 if args.n_train is None else args.n_train,
        n_test=4 if args.n_test is None else args.n_test,
        seed=args.seed,
        size=args.size,
        progress=True,
        fov=args.fov,
    )
    print(f"wrote {args.task} phantoms: {manifest}")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``demo`` and ``synth`` on the top-level subparsers."""
    demo = commands.add_parser("demo", help="phantoms → train the liver bundle → predict → Dice, on the CPU")
    demo.add_argument(
        "-o",
        "--output",
        default="runs/demo",
        help="folder for everything the demo writes (default: runs/demo)",
    )
    demo.add_argument("--n-train", type=int, default=20, help="training phantoms (default: 20)")
    demo.add_argument("--n-test", type=int, default=6, help="held-out phantoms (default: 6)")
    demo.add_argument("--epochs", type=int, default=80, help="training epochs (default: 80)")
    demo.add_argument("--seed", type=int, default=0, help="seed for phantoms and training (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    synth = commands.add_parser(
        "synth",
        help="write a synthetic dataset: liver/lung CT phantoms (MSD layout), multi-contrast "
        "brain MRI (MSD Task01 layout), nodule patches, or chest CTs with annotated nodules (LUNA16 layout)",
    )
    synth.add_argument(
        "task",
        choices=["liver", "lung", "brain-mri", "nodules", "nodules-ct"],
        help="liver: MSD Task03 labels; lung: MSD Task06 labels + lung masks; brain-mri: MSD Task01-style "
        "multi-contrast MRI (4D NIfTI; oedema, non-enhancing and enhancing tumour); "
        "nodules: benign/malignant nodule patches with masks (dataset.json + labels.csv); "
        "nodules-ct: chest CTs with 0-6 nodules of 3-30 mm, annotations.csv in world mm (LPS) as LUNA16",
    )
    synth.add_argument("-o", "--output", required=True, help="dataset folder to write")
    synth.add_argument(
        "--n-train", type=int, help="training cases (default: 16 phantoms, 200 nodule patches, 10 chest CTs)"
    )
    synth.add_argument("--n-test", type=int, help="test cases (default: 4 phantoms, 100 nodule patches)")
    synth.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    synth.add_argument(
        "--size",
        choices=["default", "tiny"],
        default="default",
        help="phantom size; nodule patches are 48³ (default) or 32³ (tiny) voxels at 1 mm",
    )
    synth.add_argument(
        "--channels",
        type=int,
        default=4,
        choices=[1, 2, 3, 4],
        help="brain-mri: contrasts per case, the first of FLAIR, T1w, T1gd, T2w (default 4)",
    )
    synth.add_argument(
        "--fov",
        choices=["phantom", "clinical"],
        default="phantom",
        help="liver/lung: clinical puts each phantom into clinical CT geometry (512 x 512 at 0.6-0.98 mm, "
        "1-5 mm slices, 100-600 slices, a table, optional arms, padding outside a circular field of view)",
    )
    synth.set_defaults(func=_cmd_synth)
