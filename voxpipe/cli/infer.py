"""``voxpipe infer``: segment images with a trained bundle, outputs on each input's grid."""

from __future__ import annotations

import argparse
from typing import Any

from voxpipe.cli.common import quiet_monai_bundle


def _cmd_infer(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundles.config import parse_overrides
    from voxpipe.pipelines.inference.infer import infer_with_bundle, parse_shard, shard_from_environment

    quiet_monai_bundle(args.verbose)
    shard = parse_shard(args.shard) if args.shard else shard_from_environment()
    timings = None
    if args.timings:
        from voxpipe.pipelines.inference.timings import Timings

        timings = Timings()
    outputs = infer_with_bundle(
        args.model, args.inputs, output_dir=args.output, weights=args.weights, overrides=parse_overrides(args.set),
        resume=args.resume, statistics=not args.no_statistics, dicom_seg=args.dicom_seg, output_format=args.format,
        precision=args.precision, tta=True if args.tta else None, compile=True if args.compile else None,
        save_probabilities=args.save_probabilities, progress=False if args.no_progress else True, device=args.device,
        shard=shard, timings=timings,
    )  # fmt: skip
    if timings is not None:
        print(timings.table())
        print(f"wrote {timings.write(args.output)}")
    where = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    print(f"{len(outputs)} label map(s) in {args.output}{where}" + ("" if args.no_statistics else " (+ statistics.csv, statistics.json)"))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``infer`` on the top-level subparsers."""
    infer = commands.add_parser(
        "infer", help="segment images with a trained bundle; outputs on each input's grid",
        description="Failing cases are reported at the end (exit code 2) after every other case was written.",
    )  # fmt: skip
    infer.add_argument("model", help="bundle folder (weights from BUNDLE/models/model.pt unless --weights)")
    infer.add_argument("inputs", nargs="+", help="image files (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd), folders of them, DICOM "
                       "series folders; for a multi-channel bundle, 4D NIfTI files or folders of nnU-Net-style channel "
                       "files (case_0000.nii.gz, case_0001.nii.gz, ...: one case each)")
    infer.add_argument("-o", "--output", required=True, help="output folder for <case>.<format> label maps")
    infer.add_argument("--weights", help="network weights file (default: BUNDLE/models/model.pt)")
    infer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an inference config value")
    infer.add_argument("--dicom-seg", action="store_true",
                       help="for DICOM series inputs also write <case>.dcm, a DICOM-SEG referencing the series")
    infer.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd", "mha", "dicom-seg"],
                       help="label-map format (default nii.gz); dicom-seg: DICOM series inputs only, <case>.dcm beside a <case>.nii.gz")
    infer.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                       help="network precision (bundle default auto: fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32)")
    infer.add_argument("--tta", action="store_true", help="test-time augmentation: average over flips along every axis combination (8× the time)")
    infer.add_argument("--compile", action="store_true", help="torch.compile the network (about a minute of compiling; pays off over many cases)")
    infer.add_argument("--save-probabilities", action="store_true",
                       help="also write <case>_probabilities.npz: float16 class probabilities (C, X, Y, Z) on the input grid, with the affine")
    infer.add_argument("--device", choices=["auto", "cpu", "cuda"],
                       help="where the network runs (bundle default auto: CUDA when present); on CUDA the output is "
                            "stitched on the GPU when it fits, else on the CPU")
    infer.add_argument("--no-progress", action="store_true", help="no progress bars over cases and windows")
    infer.add_argument("--resume", action="store_true", help="skip inputs whose output already exists (outputs are written atomically)")
    infer.add_argument("--timings", action="store_true",
                       help="print and write timings.json: seconds per stage (load, resample, intensity, network, stitch, "
                            "invert, post-process, write, statistics)")
    infer.add_argument("--shard", metavar="K/N",
                       help="run only shard K of N (every N-th input from the K-th on; e.g. a SLURM array task); under "
                            "torchrun each rank takes its own shard (RANK+1 of WORLD_SIZE) without this option")
    infer.add_argument("--no-statistics", action="store_true",
                       help="do not write statistics.csv/.json (volumes, mean/std HU, lesion count and largest diameter)")
    infer.set_defaults(func=_cmd_infer)
