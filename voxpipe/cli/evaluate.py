"""``voxpipe evaluate`` (segmentations: challenge-grade metrics against references),
``voxpipe evaluate-detections`` (nodule candidates: FROC and CPM by the LUNA16 rules) and
``voxpipe select`` (configuration, ensemble and post-processing chosen by cross-validation)."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.common import format_metric


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from voxpipe.errors import InputError
    from voxpipe.pipelines.evaluation.evaluate import (
        ScoringOptions,
        evaluate_folders,
        label_groups_from_dataset,
        parse_label_groups,
    )

    if args.labels:
        groups = parse_label_groups(args.labels)
    elif args.dataset:
        groups = label_groups_from_dataset(args.dataset)
    else:
        raise InputError(
            "evaluate: expected --labels (e.g. liver=1,tumour=2) or --dataset dataset.json, found neither"
        )
    options = ScoringOptions(
        tolerance=args.tolerance,
        convention=args.convention,
        definition=args.surface,
        lesion_threshold=args.lesion_iou,
        surface=not args.no_surface,
    )
    result = evaluate_folders(
        args.predictions,
        args.references,
        labels=groups,
        output_dir=args.output,
        options=options,
        workers=args.workers,
        resample_predictions=args.resample_pred,
        progress=True,
    )
    shown = (
        ["dice", "nsd", "hd95", "assd"] if options.surface else ["dice", "iou", "sensitivity", "precision"]
    )
    print(
        f"{'structure':<14}"
        + "".join(f"{m:>9}" for m in shown)
        + "   cases   (means; convention "
        + options.convention
        + ")"
    )
    for name in result.structures:
        stats = result.summary["metrics"][name]
        print(
            f"{name:<14}"
            + "".join(f"   {format_metric(stats[m]['mean'])}" for m in shown)
            + f"   {stats['dice']['n']:>5}"
        )
    if result.summary["failed"]:
        print(
            f"{len(result.summary['failed'])} failed case(s) (predictions scored with the worst values; "
            "unusable references not scored):"
        )
        for case, reason in result.summary["failed_reasons"].items():
            print(f"  {case}: {reason}")
    if args.report:
        from voxpipe.pipelines.evaluation.report import write_report

        report = write_report(
            result,
            args.predictions,
            args.references,
            output_dir=args.output,
            run_dir=args.run,
            images_dir=args.images,
        )
        print(f"wrote {report}")
    print(f"wrote {result.per_case_csv} and {result.summary_json}")
    return 2 if result.summary["failed"] else 0


def _cmd_select(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.evaluation.select import select_runs

    selection = select_runs(args.runs, args.output, write_bundle=not args.no_bundle)
    winner = selection["winner"]
    print(f"{len(selection['candidates'])} candidates on {len(selection['cases'])} out-of-fold cases")
    print(
        f"winner: {' + '.join(winner['members'])}, post-processing {winner['postprocessing']}, "
        f"mean foreground Dice {winner['mean_foreground_dice']:.4f}"
    )
    for line in selection["why"]:
        print(f"  {line}")
    print(
        f"wrote {args.output}/selection.json, selection.md"
        + (f", {selection['bundle']}" if selection.get("bundle") else "")
    )
    return 0


def add_commands(commands: Any) -> None:
    """Register ``evaluate`` on the top-level subparsers."""
    evaluate = commands.add_parser(
        "evaluate",
        help="challenge-grade metrics per case and structure: predictions vs references",
        description="Dice, IoU, sensitivity, precision, specificity, volume difference, HD, HD95, ASSD, MSD, NSD and "
        "lesion detection per case and structure; summary with bootstrap CIs and MSD/LiTS aggregates.",
    )
    evaluate.add_argument("predictions", help="folder of predicted label maps")
    evaluate.add_argument(
        "references",
        help="folder of reference label maps: NIfTI, NRRD, MHA or DICOM-SEG .dcm (defines the cases)",
    )
    evaluate.add_argument(
        "--labels", help="structures as name=value[+value], e.g. liver=1,tumour=2,liver_total=1+2"
    )
    evaluate.add_argument("--dataset", help="take structures from the labels of this MSD dataset.json")
    evaluate.add_argument("-o", "--output", required=True, help="folder for per_case.csv and summary.json")
    evaluate.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default: 2)")
    evaluate.add_argument(
        "--convention",
        choices=["nnunet", "flare", "lits"],
        default="nnunet",
        help="empty-mask convention (default: nnunet; see voxpipe/metrics/conventions.py)",
    )
    evaluate.add_argument(
        "--surface",
        choices=["deepmind", "medpy"],
        default="deepmind",
        help="surface-distance definition (default: deepmind, as surface-distance computes it)",
    )
    evaluate.add_argument(
        "--no-surface", action="store_true", help="skip surface distances (HD, HD95, ASSD, MSD, NSD)"
    )
    evaluate.add_argument(
        "--lesion-iou", type=float, default=0.1, help="IoU for a lesion to count as detected (default: 0.1)"
    )
    evaluate.add_argument(
        "--workers", type=int, default=1, help="processes scoring cases in parallel (default: 1)"
    )
    evaluate.add_argument(
        "--resample-pred",
        action="store_true",
        help="resample predictions on another grid onto the reference grid (nearest) instead of failing",
    )
    evaluate.add_argument(
        "--report", action="store_true", help="also write report.html (plots, table, overlays)"
    )
    evaluate.add_argument(
        "--run", help="with --report: a training run folder whose metrics.csv gives the curves"
    )
    evaluate.add_argument(
        "--images", help="with --report: folder of the cases' images (same case ids) drawn under the overlays"
    )
    evaluate.set_defaults(func=_cmd_evaluate)
    _add_detections(commands)


def _cmd_evaluate_detections(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.evaluation.detections import evaluate_detections

    result = evaluate_detections(
        args.candidates,
        args.annotations,
        output_dir=args.output,
        excluded=args.excluded,
        seriesuids=args.seriesuids,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        max_marks=args.max_marks,
        boxes_dir=args.boxes,
    )
    ci = result.ci.get("sensitivity_ci95", {})
    print(
        f"{result.n_scans} scans, {result.n_nodules} nodules: {result.true_positives} detected, {result.false_negatives} "
        f"missed; {result.false_positives} false positives ({result.ignored_on_excluded} on excluded findings and "
        f"{result.ignored_double_hits} double hits ignored)"
    )
    if result.unlisted_candidates or result.unlisted_nodules:
        print(
            f"not scored: {result.unlisted_candidates} candidate(s) and {result.unlisted_nodules} nodule(s) under "
            f"{len(result.unlisted_scans)} series UID(s) that are not among the scans evaluated"
        )
    print("FPs/scan  sensitivity  95% CI")
    for rate, value in result.sensitivity_at.items():
        interval = ci.get(str(rate))
        print(f"{rate:8g}  {value:11.3f}  " + (f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
    cpm_ci = result.ci.get("cpm_ci95")
    print(
        f"CPM {result.cpm:.3f}"
        + (
            f"  95% CI [{cpm_ci[0]:.3f}, {cpm_ci[1]:.3f}] ({result.ci['bootstrap_samples']} "
            "bootstrap resamples of the scans)"
            if cpm_ci
            else ""
        )
    )
    if result.coco is not None:
        coco = result.coco
        ap = next((v for k, v in coco.items() if k.startswith("AP_IoU_0.10")), float("nan"))
        recall = next((v for k, v in coco.items() if k.startswith("mAR")), float("nan"))
        print(f"COCO (boxes, MONAI COCOMetric): AP@IoU0.1 {ap:.3f}, mean recall {recall:.3f}")
    print(f"wrote {args.output}/summary.json, froc.csv, froc.png, froc.html")
    return 0


def _add_detections(commands: Any) -> None:
    detections = commands.add_parser(
        "evaluate-detections",
        help="nodule detection by the LUNA16 rules: FROC, CPM with bootstrap CIs",
        description="Scores a LUNA16 candidate list (seriesuid,coordX,coordY,coordZ,probability; world mm) against "
        "annotations.csv (seriesuid,coordX,coordY,coordZ,diameter_mm) as noduleCADEvaluationLUNA16.py does: a hit is "
        "a candidate centre inside a nodule's sphere, several hits on one nodule count once, hits on excluded findings "
        "are ignored, at most 100 candidates per scan, FPs per scan over all listed scans; CPM = mean sensitivity at "
        "1/8 ... 8 FPs per scan.",
    )
    detections.add_argument("candidates", help="candidates CSV (LUNA16 format)")
    detections.add_argument("annotations", help="annotations CSV (LUNA16 annotations.csv)")
    detections.add_argument(
        "--excluded", help="annotations_excluded.csv: findings whose hits are neither TP nor FP"
    )
    detections.add_argument(
        "--seriesuids",
        help="CSV of the scans evaluated, one UID per row (default: every scan in "
        "the annotations or the candidates)",
    )
    detections.add_argument(
        "-o", "--output", required=True, help="folder for summary.json, froc.csv, froc.png, froc.html"
    )
    detections.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples of the scans for the CIs (default 1000; 0: none)",
    )
    detections.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    detections.add_argument(
        "--boxes",
        metavar="DIR",
        help="a voxpipe detect output folder (<seriesuid>.json box files): also COCO-style AP at IoU 0.1 "
        "and mean recall (MONAI's COCOMetric) against the annotations' cubes",
    )
    detections.add_argument(
        "--max-marks",
        type=int,
        default=100,
        help="candidates kept per scan, highest first (default 100, as LUNA16)",
    )
    detections.set_defaults(func=_cmd_evaluate_detections)

    select = commands.add_parser(
        "select",
        help="choose configuration, fold ensemble and post-processing by cross-validation",
        description="Score, on the out-of-fold predictions of voxpipe train --folds runs, each configuration, every "
        "ensemble of them (mean of probabilities) and the post-processing options (largest component per class, of "
        "all foreground, fill holes, minimum lesion size); choose by mean foreground Dice with bootstrap CIs, "
        "refusing post-processing that lowers a lesion class's lesion-wise F1. Writes selection.json, selection.md and "
        "bundle/ (the winner's fold models as one ensemble, its post-processing) for voxpipe infer.",
    )
    select.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="output_dir of voxpipe train BUNDLE --folds (holds cv.json)",
    )
    select.add_argument(
        "-o", "--output", required=True, help="folder for selection.json, selection.md and bundle/"
    )
    select.add_argument(
        "--no-bundle", action="store_true", help="score and choose only; write no inference bundle"
    )
    select.set_defaults(func=_cmd_select)
