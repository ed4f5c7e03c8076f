"""``voxpipe annotate prelabel|ingest|finetune``: assisted annotation as three commands on folders."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.common import quiet_monai_bundle


def _cmd_prelabel(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.annotation.prelabel import prelabel
    from voxpipe.pipelines.bundles.config import parse_overrides

    quiet_monai_bundle(args.verbose)
    rows = prelabel(
        args.bundle,
        args.inputs,
        args.output,
        weights=args.weights,
        overrides=parse_overrides(args.set),
        strategy=args.strategy,
        seed=args.seed,
        tta=not args.no_tta,
        keep_probabilities=args.keep_probabilities,
        safe=args.safe,
        precision=args.precision,
        device=args.device,
    )
    print(f"{len(rows)} case(s) pre-labelled; review order in {args.output}/worklist.html ({args.strategy})")
    for row in rows[:10]:
        print(
            f"  {row['rank']:3d}  {row['case']:<30s} mean entropy {row['mean_entropy']:.3f}  "
            f"uncertain {100 * row['uncertain_fraction']:5.1f}%"
        )
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.annotation.ingest import ingest

    result = ingest(args.workdir, args.corrected)
    summary = result["summary"]
    print(
        f"{summary['cases']} correction(s) ingested into {args.workdir}/labels/final; "
        f"{summary['cases_accepted_unchanged']} accepted unchanged; report {args.workdir}/edit_effort.html"
    )
    for name, figures in summary["structures"].items():
        dice = figures["median_dice"]
        print(
            f"  {name:<12s} median Dice {'-' if dice is None else f'{dice:.3f}'}  "
            f"median added {figures['median_added_ml'] or 0:.2f} mL  removed {figures['median_removed_ml'] or 0:.2f} mL"
        )
    if result["missing"]:
        print(f"  not corrected yet: {len(result['missing'])} case(s)")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.annotation.finetune import finetune
    from voxpipe.pipelines.bundles.config import parse_overrides

    quiet_monai_bundle(args.verbose)
    weights = finetune(
        args.workdir,
        args.bundle,
        args.output,
        weights=args.weights,
        max_epochs=args.epochs,
        overrides=parse_overrides(args.set),
    )
    print(
        f"fine-tuned weights: {weights}\nnext round: voxpipe annotate prelabel {args.bundle} IMAGES... -o {args.workdir} "
        f"--weights {weights}"
    )
    return 0


def add_commands(commands: Any) -> None:
    """Register ``annotate`` and its three verbs on the top-level subparsers."""
    annotate = commands.add_parser(
        "annotate",
        help="assisted annotation: pre-label, ingest corrections, fine-tune",
        description="One round of active learning in three commands on folders: prelabel "
        "ranks cases by the model's uncertainty, ingest measures the reviewer's "
        "edits, finetune trains on the corrections.",
    )
    verbs = annotate.add_subparsers(dest="annotate_command", metavar="VERB", required=True)
    pre = verbs.add_parser(
        "prelabel", help="predict cases, write Slicer .seg.nrrd files and a worklist ranked by uncertainty"
    )
    pre.add_argument("bundle", help="bundle folder (weights from BUNDLE/models/model.pt unless --weights)")
    pre.add_argument("inputs", nargs="+", help="image files, folders of them, DICOM series folders")
    pre.add_argument(
        "-o", "--output", required=True, help="the work folder (worklist, pre-labels, later the corrections)"
    )
    pre.add_argument("--weights", help="network weights file (default: BUNDLE/models/model.pt)")
    pre.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an inference config value"
    )
    pre.add_argument(
        "--strategy",
        default="uncertainty",
        choices=["uncertainty", "random", "first"],
        help="review order: most uncertain first (default), seeded random, or input order",
    )
    pre.add_argument("--seed", type=int, default=0, help="seed of --strategy random")
    pre.add_argument(
        "--no-tta",
        action="store_true",
        help="no flip TTA (8x faster; the uncertainty is then the plain softmax entropy)",
    )
    pre.add_argument(
        "--keep-probabilities", action="store_true", help="keep <case>_probabilities.npz (float16, large)"
    )
    pre.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network precision (as for voxpipe infer)",
    )
    pre.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="where the network runs (as for voxpipe infer)"
    )
    pre.add_argument(
        "--safe", action="store_true", help="run the bundle in safe mode (known components only, no code)"
    )
    pre.set_defaults(func=_cmd_prelabel)
    ing = verbs.add_parser(
        "ingest", help="read corrected segmentations, keep original and final, write the edit-effort report"
    )
    ing.add_argument("workdir", help="the work folder of prelabel")
    ing.add_argument(
        "corrected", help="folder of <case>.seg.nrrd / .nii.gz / .nrrd / .mha / .dcm (DICOM-SEG) corrections"
    )
    ing.set_defaults(func=_cmd_ingest)
    fine = verbs.add_parser("finetune", help="fine-tune the model on the corrected cases")
    fine.add_argument("workdir", help="the work folder (labels/final from ingest)")
    fine.add_argument("bundle", help="bundle folder whose train config runs")
    fine.add_argument("-o", "--output", required=True, help="training output folder (models/model_final.pt)")
    fine.add_argument("--weights", help="weights to start from (default: those prelabel used)")
    fine.add_argument("--epochs", type=int, default=20, help="epochs of fine-tuning (default 20)")
    fine.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a train config value"
    )
    fine.set_defaults(func=_cmd_finetune)
