"""``voxpipe infer``: segment images with a trained bundle, outputs on each input's grid; ``voxpipe detect``: find nodules."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.common import bundle_options, quiet_monai_bundle, refuse_options
from voxpipe.cli.devices import parse_devices
from voxpipe.cli.totalseg import add_totalseg_options, infer_totalseg, refuse_totalseg_options
from voxpipe.runtime import device_name


def _cmd_infer(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.inference.cases import parse_shard
    from voxpipe.pipelines.inference.infer import infer_with_bundle

    quiet_monai_bundle(args.verbose)
    if args.devices:
        from voxpipe.cli.devices import run_on_devices

        return run_on_devices(
            args.argv, args.devices, shard_given=bool(args.shard), device_given=bool(args.device)
        )
    shard = parse_shard(args.shard) if args.shard else shard_from_environment()
    timings = None
    if args.timings:
        from voxpipe.pipelines.inference.timings import Timings

        timings = Timings()
    from pathlib import Path

    from voxpipe.pipelines.inference.catalogue import CATALOGUE
    from voxpipe.pipelines.inference.models import model_kind
    from voxpipe.pipelines.inference.totalseg.tasks import is_task
    from voxpipe.transforms.files import check_output_folder

    check_output_folder(args.output)
    model_dir = Path(args.model)
    names = args.model.split(",")
    if not model_dir.exists() and all(is_task(n) for n in names):  # TotalSegmentator's tasks, as it runs them
        outputs = infer_totalseg(args, shard, names)
        where = args.output if len(names) == 1 else f"{args.output}/<task>"
        print(f"{len(outputs)} case(s) of TotalSegmentator's {args.model!r} in {where}")
        return 0
    if len(names) > 1 and not model_dir.exists():
        from voxpipe.errors import InputError

        unknown = [n for n in names if not is_task(n)]
        raise InputError(
            f"{args.model!r}: several models run in one command only as TotalSegmentator tasks; "
            f"expected task names, found {unknown}",
            hint="voxpipe models list",
        )
    refuse_totalseg_options(args, args.model)
    safe = bool(args.safe)
    if not model_dir.exists() and args.model in CATALOGUE:  # a catalogue name: the pulled model
        model_dir = _pulled_model(args)
        if (model_dir / "configs").is_dir():
            args.model = str(model_dir)
            safe = safe or not args.trust_bundle  # a downloaded bundle is a stranger's code
    elif args.trust_bundle:
        from voxpipe.errors import InputError

        raise InputError(
            f"{args.model!r}: --trust-bundle is for bundles pulled by name (voxpipe models pull); "
            "a bundle folder runs its code unless --safe"
        )
    if model_kind(model_dir) == "nnunet":
        outputs = _infer_nnunet(args, model_dir, shard)
        print(f"{len(outputs)} label map(s) in {args.output} ({args.model})")
        return 0
    refuse_options(
        {
            "--disable-tta": args.disable_tta,
            "--step-size": args.step_size,
            "--checkpoint": args.checkpoint,
            "--approximate": args.approximate,
            "--folds": args.folds,
        },
        args.model,
        "a bundle runs without {options} (options of nnU-Net model folders)",
        hint="--tta for flips, --precision for bf16/fp16, --set for the bundle's inference config",
    )
    outputs = infer_with_bundle(
        args.model,
        args.inputs,
        output_dir=args.output,
        weights=args.weights,
        overrides=parse_overrides(args.set),
        resume=args.resume,
        statistics=not args.no_statistics,
        dicom_seg=args.dicom_seg,
        output_format=args.format,
        precision=args.precision,
        tta=True if args.tta else None,
        compile=True if args.compile else None,
        runtime=args.runtime,
        organ_roi=True if args.organ_roi else None,
        save_probabilities=args.save_probabilities,
        progress=False if args.no_progress else True,
        device=args.device,
        shard=shard,
        timings=timings,
        safe=safe,
    )
    if timings is not None:
        print(timings.table())
        print(f"wrote {timings.write(args.output)}")
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    print(
        f"{len(outputs)} label map(s) in {args.output}{where}"
        + ("" if args.no_statistics else " (+ statistics.csv, statistics.json)")
    )
    return 0


def shard_from_environment() -> tuple[int, int] | None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): this rank's shard, ``(RANK + 1, WORLD_SIZE)``; else None.

    With CUDA, each rank also takes its own GPU (``LOCAL_RANK``), so ``cuda`` means that GPU: set
    here, by the command, since it is the process's state.
    """
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return int(os.environ.get("RANK", "0")) + 1, world


def _pulled_model(args: argparse.Namespace) -> Any:
    """The cache folder of a catalogue model (its bundle folder for a Model Zoo bundle)."""
    from voxpipe.cli.models import cache_folder
    from voxpipe.errors import InputError
    from voxpipe.pipelines.inference.catalogue import pulled
    from voxpipe.pipelines.inference.models import read_manifest

    folder = pulled(args.model, cache_folder(args))
    if folder is None:
        raise InputError(
            f"{args.model!r}: a catalogue model that is not in the cache ({cache_folder(args)})",
            hint=f"voxpipe models pull {args.model}",
        )
    manifest = read_manifest(folder)
    return folder / manifest["bundle"] if manifest.get("kind") == "bundle" else folder


def _infer_nnunet(args: argparse.Namespace, folder: Any, shard: Any) -> list[Any]:
    """An nnU-Net model folder, or a pulled model made of nnU-Net models (one part or several, merged)."""
    from voxpipe.errors import InputError
    from voxpipe.pipelines.inference.models import MANIFEST, read_manifest
    from voxpipe.pipelines.inference.nnunet.run import infer_with_nnunet

    refuse_options(
        bundle_options(args),
        str(folder),
        "an nnU-Net model runs without {options} (options of MONAI bundles)",
        hint="--approximate for bf16 and body-only windows; --tta for nnU-Net's mirroring; --device for a GPU; "
        "output is .nii.gz (+ .dcm with --dicom-seg)",
    )
    options = {
        "output_dir": args.output,
        "folds": args.folds,
        # nnUNetv2_predict's defaults: mirroring over the checkpoint's axes unless --disable-tta
        "tta": not args.disable_tta,
        "checkpoint": args.checkpoint or "checkpoint_final.pth",
        "fast": bool(args.approximate),
        "save_probabilities": bool(args.save_probabilities),
        "resume": args.resume,
        "statistics": not args.no_statistics,
        "shard": shard,
        "dicom_seg": bool(args.dicom_seg),
        "device": args.device or "auto",
        "runtime": args.runtime or "torch",
    }
    if args.step_size is not None and not 0 < args.step_size <= 1:
        raise InputError(f"--step-size: expected a fraction of the patch in (0, 1], found {args.step_size}")
    if not (folder / MANIFEST).is_file():
        return infer_with_nnunet(folder, args.inputs, step=args.step_size or 0.5, **options)
    manifest = read_manifest(folder)
    parts = manifest["parts"]
    step = args.step_size or manifest["step"]
    if len(parts) == 1:
        return infer_with_nnunet(folder / parts[0]["folder"], args.inputs, step=step, **options)
    names = {int(k): v for k, v in manifest["labels"].items()}
    return infer_with_nnunet(folder, args.inputs, step=step, parts=parts, names=names, **options)


def add_commands(commands: Any) -> None:
    """Register ``infer`` on the top-level subparsers."""
    infer = commands.add_parser(
        "infer",
        help="segment images with a trained bundle; outputs on each input's grid",
        description="Failing cases are reported at the end (exit code 2) after every other case was written.",
    )
    infer.add_argument(
        "model",
        help="bundle folder (weights from BUNDLE/models/model.pt unless --weights), an nnU-Net v2 model "
        "folder (<Trainer>__<Plans>__<configuration> with plans.json, dataset.json, fold_K/checkpoint_final.pth), "
        "the name of a pulled catalogue model (voxpipe models list), or one of TotalSegmentator's "
        "tasks (total, lung_vessels, body, ...: run as TotalSegmentator runs it, from its weights folder); "
        "several tasks comma-separated (total,lung_vessels,body) share their loaded models and write OUT/<task>/",
    )
    from voxpipe.cli.models import add_cache_option

    add_cache_option(infer)
    infer.add_argument(
        "--folds",
        nargs="+",
        help="nnU-Net model folders: the folds to average (default: every fold_K with a checkpoint)",
    )
    infer.add_argument(
        "inputs",
        nargs="+",
        help="image files (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd), folders of them, DICOM "
        "series folders; for a multi-channel bundle, 4D NIfTI files or folders of nnU-Net-style channel "
        "files (case_0000.nii.gz, case_0001.nii.gz, ...: one case each)",
    )
    infer.add_argument("-o", "--output", required=True, help="output folder for <case>.<format> label maps")
    infer.add_argument("--weights", help="network weights file (default: BUNDLE/models/model.pt)")
    infer.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an inference config value"
    )
    infer.add_argument(
        "--dicom-seg",
        action="store_true",
        help="for DICOM series inputs also write <case>.dcm, a DICOM-SEG referencing the series",
    )
    infer.add_argument(
        "--safe",
        action="store_true",
        help="run a bundle in safe mode: known component kinds only, no code from its configs "
        "(a bundle pulled by name always runs so unless --trust-bundle)",
    )
    infer.add_argument(
        "--trust-bundle",
        action="store_true",
        help="run the code of a Model Zoo bundle pulled by name (voxpipe models pull; default: safe mode, "
        "which refuses the $ expressions most Model Zoo bundles hold)",
    )
    infer.add_argument(
        "--format",
        default="nii.gz",
        choices=["nii.gz", "nii", "nrrd", "mha", "dicom-seg"],
        help="label-map format (default nii.gz); dicom-seg: DICOM series inputs only, <case>.dcm beside a <case>.nii.gz",
    )
    infer.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network precision (bundle default auto: fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32)",
    )
    infer.add_argument(
        "--tta",
        action="store_true",
        help="bundles: test-time augmentation, the average over flips along every axis combination (8× "
        "the time); nnU-Net model folders mirror by default (as nnUNetv2_predict), see --disable-tta",
    )
    infer.add_argument(
        "--approximate",
        action="store_true",
        help="nnU-Net models: voxpipe's fast path instead of nnU-Net's exact numbers: the network in bf16 "
        "on CPUs with native bf16, windows without body (nothing above -500 HU, or the plans' 0.5th percentile where higher: "
        "a warning says when fat then counts as air) not run; its agreement "
        "with the exact path is in benchmarks/README.md",
    )
    infer.add_argument(
        "--disable-tta",
        action="store_true",
        help="nnU-Net models: no mirroring (nnUNetv2_predict's spelling; mirroring is on by default "
        "wherever the checkpoint allows it)",
    )
    infer.add_argument(
        "--step-size",
        type=float,
        metavar="F",
        help="nnU-Net models: the window step as a fraction of the patch (default 0.5, as nnUNetv2_predict)",
    )
    infer.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="nnU-Net models: the checkpoint file in each fold (default checkpoint_final.pth)",
    )
    infer.add_argument(
        "--runtime",
        choices=["torch", "openvino", "openvino-int8"],
        help="what runs the windows on the CPU: torch (default, bundles: their config's; nnU-Net's exact numbers), openvino (float32, "
        "~1.6x on a 128^3 window, values within ~1e-3), openvino-int8 (NNCF int8 calibrated on the first "
        "case, ~3.8x, not nnU-Net's numbers: agreement in benchmarks/README.md); the converted model is "
        "cached; needs pip install 'voxpipe[openvino]'",
    )
    infer.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (about a minute of compiling; pays off over many cases)",
    )
    infer.add_argument(
        "--organ-roi",
        action="store_true",
        help="coarse-to-fine: a pass at twice the spacing finds the organ, then full resolution runs only in its "
        "box plus a margin, on windows of its own (faster where the organ is small in the scan; results "
        "differ more from plain MONAI's, and a part the coarse pass misses beyond the margin is lost)",
    )
    infer.add_argument(
        "--save-probabilities",
        action="store_true",
        help="bundles: also write <case>_probabilities.npz: float16 class probabilities (C, X, Y, Z) on the "
        "input grid, with the affine; nnU-Net model folders: <case>.npz (probabilities, C, z, y, x, float32) "
        "and <case>.pkl, as nnUNetv2_predict --save_probabilities writes them",
    )
    infer.add_argument(
        "--device",
        type=device_name,
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="where the network runs (default auto: CUDA when present). Bundles: on CUDA the output is "
        "stitched on the GPU when it fits, else on the CPU. nnU-Net models: fp16 autocast on CUDA, as "
        "nnU-Net's own predictor runs there",
    )
    infer.add_argument("--no-progress", action="store_true", help="no progress bars over cases and windows")
    infer.add_argument(
        "--resume",
        action="store_true",
        help="skip inputs whose output already exists (outputs are written atomically)",
    )
    infer.add_argument(
        "--timings",
        action="store_true",
        help="print and write timings.json: seconds per stage (load, resample, intensity, network, stitch, "
        "invert, post-process, write, statistics)",
    )
    infer.add_argument(
        "--devices",
        type=parse_devices,
        metavar="0,1",
        help="one process per device over the inputs (GPU numbers, or names such as cpu, cuda:1): each "
        "takes every N-th case (--shard K/N on --device D) and loads the models once; their outputs, "
        "statistics and failures land in one folder",
    )
    infer.add_argument(
        "--shard",
        metavar="K/N",
        help="run only shard K of N (every N-th input from the K-th on; e.g. a SLURM array task); under "
        "torchrun each rank takes its own shard (RANK+1 of WORLD_SIZE) without this option",
    )
    infer.add_argument(
        "--no-statistics",
        action="store_true",
        help="do not write statistics.csv/.json (volumes, mean/std HU, lesion count and largest diameter)",
    )
    add_totalseg_options(infer)
    infer.set_defaults(func=_cmd_infer)
    add_detect_command(commands)


def _cmd_detect(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.inference.detect import case_table, detect_with_bundle
    from voxpipe.transforms.files import check_output_folder

    quiet_monai_bundle(args.verbose)
    check_output_folder(args.output)
    summary = detect_with_bundle(
        args.model,
        args.inputs,
        output_dir=args.output,
        weights=args.weights,
        overrides=parse_overrides(args.set),
        tta=True if args.tta else None,
        dicom_seg=args.dicom_seg,
        classify=args.classify,
        classifier_weights=args.classifier_weights,
        classify_top=args.classify_top,
        resume=args.resume,
        device=args.device,
        safe=args.safe,
    )
    for case in summary["cases"]:
        print(f"{case} (world mm, LPS; top {args.show})")
        print(case_table(args.output, case, limit=args.show))
    print(
        f"{len(summary['cases'])} scan(s): <case>.json/.csv in {args.output}; LUNA16 candidates {summary['candidates']}"
    )
    return 0


def add_detect_command(commands: Any) -> None:
    """Register ``detect`` on the top-level subparsers."""
    detect = commands.add_parser(
        "detect",
        help="find lung nodules with a detection bundle; boxes in world mm, LUNA16 candidates",
        description="Per scan <case>.json (box file: world_lps, cccwhd, score, diameter, side[, malignancy]) and <case>.csv; "
        "for the run candidates.csv (seriesuid,coordX,coordY,coordZ,probability in world mm, LPS) for "
        "`voxpipe evaluate-detections`. Failing scans are reported at the end (exit code 2) after every other "
        "scan was written.",
    )
    detect.add_argument(
        "model",
        help="detection bundle folder (configs/lung_nodule_ct_retinanet); weights from "
        "BUNDLE/models/model.pt unless --weights, anchors from anchors.json beside the weights",
    )
    detect.add_argument(
        "inputs",
        nargs="+",
        help="CT files (.mha, .mhd, .nii.gz, .nrrd), folders of them, DICOM series folders",
    )
    detect.add_argument("-o", "--output", required=True, help="output folder")
    detect.add_argument("--weights", help="network weights file (default: BUNDLE/models/model.pt)")
    detect.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an inference config value (e.g. min_score=0.1, nms_thresh=0.1)",
    )
    detect.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation (8 views) merged by weighted box clustering (--set tta_merge=nms for NMS)",
    )
    detect.add_argument(
        "--classify",
        metavar="BUNDLE",
        help="a nodule classification bundle (configs/lung_nodule_ct_densenet): adds a malignancy probability per nodule",
    )
    detect.add_argument(
        "--classifier-weights", help="the classifier's weights (default: its BUNDLE/models/model.pt)"
    )
    detect.add_argument(
        "--classify-top",
        type=int,
        default=20,
        metavar="N",
        help="classify the N highest-scoring candidates of each scan (default 20; the rest keep no malignancy)",
    )
    detect.add_argument(
        "--dicom-seg",
        action="store_true",
        help="DICOM series inputs: also <case>_nodules.dcm, one DICOM-SEG segment per nodule with score "
        ">= seg_score_threshold (a sphere of its diameter on the series grid)",
    )
    detect.add_argument(
        "--device",
        type=device_name,
        metavar="{auto,cpu,cuda,cuda:N,mps}",
        help="where the network runs (bundle default auto)",
    )
    detect.add_argument("--resume", action="store_true", help="skip scans whose <case>.json already exists")
    detect.add_argument(
        "--safe",
        action="store_true",
        help="safe mode for both bundles: known component kinds only, no code from the configs",
    )
    detect.add_argument(
        "--show", type=int, default=5, metavar="N", help="nodules printed per scan (default 5)"
    )
    detect.set_defaults(func=_cmd_detect)
