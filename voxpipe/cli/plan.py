"""``voxpipe plan``: plan a dataset (spacing, normalisation, patch, network layout, batch size) and write a bundle."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_plan(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.planning.planner import plan_dataset

    plan = plan_dataset(
        args.dataset,
        args.output,
        rules=args.rules,
        network=args.network,
        gpu_memory_gb=args.gpu_memory,
        device=args.device,
        progress=not args.quiet,
    )
    spacing = [round(v, 4) for v in plan["target_spacing"]]
    print(
        f"target spacing {spacing} mm, patch {plan['patch_size']}, batch {plan['batch_size']}, "
        f"{len(plan['pool_kernels'])} stages ({plan['rules']} rules)"
    )
    print("pool kernels " + " ".join(str(k) for k in plan["pool_kernels"]))
    print("conv kernels " + " ".join(str(k) for k in plan["conv_kernels"]))
    if "timing" in plan:
        timing = plan["timing"]
        print(
            f"one training step {timing['step_seconds']:.2f} s on {timing['device']}, one epoch ≈ {timing['epoch_seconds']:.0f} s"
        )
    print(f"wrote {args.output}/plan.json, plan.md, fingerprint.json; bundle: {plan['bundle']}")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``plan`` on the top-level subparsers."""
    from voxpipe.pipelines.planning import NETWORKS, RULES

    plan = commands.add_parser(
        "plan",
        help="self-configure: plan spacing, patch, network and batch size for a dataset; write a bundle",
        description="Read a dataset (MSD task folder, nnU-Net v2 raw folder with imagesTr/ and dataset.json, or any "
        "layout voxpipe data reads), measure it as nnU-Net does (storage axes, cropped to non-zero voxels), and write "
        "plan.json + plan.md (every decision and the number it came from, sizes in RAS x, y, z order), "
        "fingerprint.json, splits.json (5 folds grouped by patient, seeded) and a runnable bundle (configs/train.yaml, "
        "inference.yaml, evaluate.yaml, metadata.json; multi-channel when every channel is z-scored). --rules nnunet "
        "reproduces nnU-Net v2's 3d_fullres planner with its memory proxy; the default rules fit patch and batch size "
        "to memory measured for one training step on this device. Then: voxpipe train BUNDLE --folds all; voxpipe select.",
    )
    plan.add_argument(
        "dataset", help="dataset folder (dataset.json + imagesTr/labelsTr, or another voxpipe layout)"
    )
    plan.add_argument("-o", "--output", required=True, help="bundle folder to write")
    plan.add_argument(
        "--rules",
        choices=RULES,
        default="voxpipe",
        help="voxpipe (default: measured memory) or nnunet (nnU-Net v2's ExperimentPlanner, exactly)",
    )
    plan.add_argument(
        "--network", choices=NETWORKS, default="dynunet", help="MONAI network to plan for (default dynunet)"
    )
    plan.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GB",
        help="memory budget in GB (nnunet rules: the proxy's target, default 8; voxpipe rules: the "
        "budget for the measured step, default 90%% of the CUDA device or half the available RAM)",
    )
    plan.add_argument(
        "--device", default="auto", help="where the default rules measure: auto, cpu, cuda, cuda:N"
    )
    plan.set_defaults(func=_cmd_plan)
