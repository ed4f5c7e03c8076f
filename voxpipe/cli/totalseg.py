"""TotalSegmentator's options on ``voxpipe infer`` (``voxpipe infer TASK ...``): their parser, the
check that they are not given for a bundle or an nnU-Net folder, and the run of one task or several."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.common import bundle_options, refuse_options

_TOTALSEG_OPTIONS = {
    "--ml": "ml",
    "--roi-subset": "roi_subset",
    "--roi-subset-robust": "roi_subset_robust",
    "--fast": "fast",
    "--fastest": "fastest",
    "--body-seg": "body_seg",
    "--robust-crop": "robust_crop",
    "--force-split": "force_split",
    "--remove-small-blobs": "remove_small_blobs",
    "--higher-order-resampling": "higher_order_resampling",
    "--save-lowres": "save_lowres",
    "--statistics": "statistics",
    "--stats-include-incomplete": "stats_include_incomplete",
    "--weights-dir": "weights_dir",
}


def refuse_totalseg_options(args: argparse.Namespace, model: str) -> None:
    """TotalSegmentator's options given for a bundle or an nnU-Net folder: named, with what they mean."""
    from voxpipe.errors import InputError

    given = [flag for flag, key in _TOTALSEG_OPTIONS.items() if getattr(args, key, None)]
    if args.resampling_order != 1 or args.stats_aggregation != "mean":
        given.append("--resampling-order/--stats-aggregation")
    if given:
        hint = "TotalSegmentator's tasks take them: voxpipe infer TASK (voxpipe models list)"
        if "--fast" in given:
            hint = "--fast picks TotalSegmentator's 3 mm model of a task; voxpipe's bf16 path for nnU-Net folders is --approximate"
        raise InputError(f"{model!r}: {', '.join(given)} are options of TotalSegmentator's tasks", hint=hint)


def infer_totalseg(args: argparse.Namespace, shard: Any, names: list[str]) -> list[Any]:
    """TotalSegmentator tasks (``voxpipe infer total ct.nii.gz -o out``), as TotalSegmentator runs them;
    several (``total,lung_vessels``) share their models and write into ``OUT/<task>/``, and a task
    whose cases fail does not stop the next."""
    from voxpipe.pipelines.inference.totalseg.pipeline import Options
    from voxpipe.pipelines.inference.totalseg.run import infer_with_totalsegmentator

    refuse_options(
        {
            **bundle_options(args),
            "--save-probabilities": args.save_probabilities,
            "--tta": args.tta,
            "--approximate": args.approximate,
            "--folds": args.folds,
            "--no-statistics": args.no_statistics,
            "--step-size": args.step_size,
            "--checkpoint": args.checkpoint,
            "--disable-tta": args.disable_tta,
        },
        args.model,
        "TotalSegmentator's task runs without {options}",
        hint="TotalSegmentator's own options apply: --fast, --fastest, --roi-subset, --ml, --statistics, "
        "--body-seg, --robust-crop, --force-split, --remove-small-blobs, --resampling-order, "
        "--higher-order-resampling, --save-lowres, --device",
    )
    options = Options(
        fast=bool(args.fast),
        fastest=bool(args.fastest),
        roi_subset=tuple(args.roi_subset_robust or args.roi_subset or ()) or None,
        roi_subset_robust=bool(args.roi_subset_robust),
        robust_crop=True if args.robust_crop else None,
        body_seg=bool(args.body_seg),
        force_split=bool(args.force_split),
        remove_small_blobs=args.remove_small_blobs,
        resampling_order=args.resampling_order,
        higher_order_resampling=bool(args.higher_order_resampling),
        save_lowres=bool(args.save_lowres),
        statistics=bool(args.statistics),
        exclude_border=not args.stats_include_incomplete,
        aggregation=args.stats_aggregation,
    )
    from pathlib import Path

    from voxpipe.pipelines.inference.cases import InferenceFailed
    from voxpipe.pipelines.inference.totalseg.pipeline import TotalSegmentator

    runner = TotalSegmentator(args.weights_dir, device=args.device or "auto", runtime=args.runtime or "torch")
    outputs: list[Any] = []
    failures: dict[str, str] = {}
    for name in names:
        try:
            outputs += infer_with_totalsegmentator(
                name,
                args.inputs,
                output_dir=args.output if len(names) == 1 else Path(args.output) / name,
                options=options,
                ml=bool(args.ml),
                device=args.device or "auto",
                resume=args.resume,
                shard=shard,
                dicom_seg=bool(args.dicom_seg),
                runner=runner,
            )
        except InferenceFailed as error:
            if len(names) == 1:
                raise
            failures.update({f"{name}: {case}": reason for case, reason in error.failures.items()})
            outputs += list(error.outputs)
    if failures:
        raise InferenceFailed.of(
            failures,
            total=len(failures) + len(outputs),
            outputs=outputs,
            where=f"were written to {args.output!r}/<task>",
            noun="task runs",
        )
    return outputs


def _resampling_order(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if not 0 <= value <= 5:
        raise argparse.ArgumentTypeError(f"expected a spline order 0..5, found {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of mm³, found {text!r}")
    return value


def add_totalseg_options(parser: Any) -> None:
    """TotalSegmentator's options, under voxpipe's spelling of its names (``--roi_subset`` is ``--roi-subset``)."""
    group = parser.add_argument_group(
        "TotalSegmentator's tasks (voxpipe infer TASK ...; its defaults give its map)"
    )
    group.add_argument(
        "--ml",
        action="store_true",
        help="one multilabel <case>.nii.gz with TotalSegmentator's "
        "label table in its header, instead of <case>/<structure>.nii.gz files",
    )
    group.add_argument(
        "--roi-subset",
        nargs="+",
        metavar="NAME",
        help="only these structures (total, "
        "total_mr): only the parts holding them run, on a crop found by the 6 mm model",
    )
    group.add_argument(
        "--roi-subset-robust",
        nargs="+",
        metavar="NAME",
        help="as --roi-subset, the crop found by the 3 mm model",
    )
    group.add_argument("--fast", action="store_true", help="the task's 3 mm model (total, total_mr, body...)")
    group.add_argument("--fastest", action="store_true", help="the task's 6 mm model")
    group.add_argument(
        "--body-seg", action="store_true", help="crop to the body found by the 6 mm body model first"
    )
    group.add_argument(
        "--robust-crop",
        action="store_true",
        help="crop tasks: find the crop with the 3 mm model, not the 6 mm one",
    )
    group.add_argument(
        "--force-split", action="store_true", help="run the image in three overlapping thirds along z"
    )
    group.add_argument(
        "--remove-small-blobs",
        nargs="?",
        const=200.0,
        type=_positive,
        metavar="MM3",
        help="remove connected components smaller than MM3 (default 200) from every structure",
    )
    group.add_argument(
        "--resampling-order",
        type=_resampling_order,
        default=1,
        metavar="N",
        help="spline order of the image's resampling to the task's spacing (0-5, default 1)",
    )
    group.add_argument(
        "--higher-order-resampling",
        action="store_true",
        help="leave the resampling to nnU-Net (third order in, logits back)",
    )
    group.add_argument(
        "--save-lowres", action="store_true", help="with --fast/--fastest: keep the map on the model's grid"
    )
    group.add_argument(
        "--statistics",
        action="store_true",
        help="statistics.json: volume (mm³) and mean HU "
        "per structure, 0 for structures within 3 voxels of the scan's border",
    )
    group.add_argument(
        "--stats-include-incomplete",
        action="store_true",
        help="statistics also for structures at the scan's border",
    )
    group.add_argument(
        "--stats-aggregation",
        choices=["mean", "median"],
        default="mean",
        help="intensity statistic (default mean)",
    )
    group.add_argument(
        "--weights-dir",
        metavar="DIR",
        help="TotalSegmentator's weights folder (default: "
        "$TOTALSEG_WEIGHTS_PATH, else $TOTALSEG_HOME_DIR/nnunet/results, else "
        "~/.totalsegmentator/nnunet/results, as TotalSegmentator looks)",
    )


__all__ = ["add_totalseg_options", "infer_totalseg", "refuse_totalseg_options"]
