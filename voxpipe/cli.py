"""The ``voxpipe`` command: parse arguments, call one pipeline function, map errors to exit codes.

Exit codes: 0 success, 2 bad input (a :class:`voxpipe.errors.InputError`: the message names the
file and the problem), 1 internal failure. No traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from voxpipe import __version__
from voxpipe.errors import VoxpipeError


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # MONAI and Ignite log every engine event at INFO; show them only with -v.
    noisy = logging.INFO if verbose else logging.WARNING
    for name in ("ignite", "monai", "py.warnings"):
        logging.getLogger(name).setLevel(noisy)
    # Ignite logs an engine's exception in full before re-raising it; the CLI reports it in one line.
    logging.getLogger("ignite.engine").setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def _quiet_monai_bundle(verbose: int) -> None:
    """Silence MONAI's bundle-runner notes (logging set-up, optional GPU codecs) unless -v.

    voxpipe configures logging and checks bundle properties itself. MONAI's loggers set their own
    level when their module is imported, so this runs after the import, in the commands that need it.
    """
    import monai.bundle.workflows  # noqa: F401  (the import creates the loggers)

    for name in ("monai.bundle.workflows", "monai.data.nvimgcodec_pydicom_plugin"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def _format_metric(value: float | None) -> str:
    """Six characters: the value to 3 decimals, or a dash when it is undefined (None, nan, inf)."""
    undefined = value is None or (isinstance(value, float) and not math.isfinite(value))
    return "   -  " if undefined else f"{value:6.3f}"


def _cmd_demo(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.demo import DemoSettings, run_demo

    _quiet_monai_bundle(args.verbose)
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
        print(f"  {row['case']:<14}" + "".join(f"   {_format_metric(row[f'dice_{s}'])}" for s in structures))
    print("Mean Dice per label:")
    for name in structures:
        stats = result.evaluation.summary["metrics"][name]["dice"]
        undefined = f" ({stats['n_undefined']} cases with no {name} in reference or prediction)" if stats["n_undefined"] else ""
        print(f"  {name:<12} {_format_metric(stats['mean'])}  over {stats['n']} cases{undefined}")
    total = sum(result.seconds.values())
    print("Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + f"; total {total:.0f} s")
    print(f"Everything is under {result.output_dir}")
    print(f"  dataset {result.dataset_dir}\n  training run {result.run_dir}\n  predictions {result.prediction_dir}")
    print(f"  per-case CSV {result.evaluation.per_case_csv}\n  summary {result.evaluation.summary_json}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.task == "nodules":
        from voxpipe.synthetic_nodules import write_nodule_dataset

        n_train = 200 if args.n_train is None else args.n_train
        n_test = 100 if args.n_test is None else args.n_test
        size = 32 if args.size == "tiny" else 48
        manifest = write_nodule_dataset(args.output, n_train=n_train, n_test=n_test, seed=args.seed, size=size, progress=True)
        print(f"wrote {n_train} training and {n_test} test nodule patches ({size}³ at 1 mm): {manifest}")
        return 0
    from voxpipe.synthetic import write_msd_dataset

    manifest = write_msd_dataset(
        args.output, task=args.task, n_train=16 if args.n_train is None else args.n_train,
        n_test=4 if args.n_test is None else args.n_test, seed=args.seed, size=args.size, progress=True,
    )
    print(f"wrote {args.task} phantoms: {manifest}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundle import parse_overrides, run_bundle

    _quiet_monai_bundle(args.verbose)
    overrides = parse_overrides(args.set)
    if args.resume:
        overrides["resume"] = True
    run_bundle(args.bundle, config=args.config, overrides=overrides)
    return 0


def _cmd_bundle_run(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundle import parse_overrides, run_bundle

    _quiet_monai_bundle(args.verbose)
    run_bundle(args.bundle, config=args.config, overrides=parse_overrides(args.set), weights=args.weights, safe=args.safe,
               validate=True)
    return 0


def _cmd_bundle_validate(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundle_validate import validate_bundle

    problems = validate_bundle(args.bundle)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {args.bundle}", file=sys.stderr)
        return 2
    print(f"{args.bundle}: no problems")
    return 0


def _cmd_bundle_export(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundle_export import export_bundle

    written = export_bundle(args.bundle, args.output, weights=args.weights, name=args.name)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.bundle import parse_overrides
    from voxpipe.pipelines.infer import infer_with_bundle

    _quiet_monai_bundle(args.verbose)
    outputs = infer_with_bundle(
        args.model, args.inputs, output_dir=args.output, weights=args.weights, overrides=parse_overrides(args.set),
        resume=args.resume, statistics=not args.no_statistics, dicom_seg=args.dicom_seg, output_format=args.format,
        precision=args.precision, tta=True if args.tta else None, compile=True if args.compile else None,
        save_probabilities=args.save_probabilities, progress=False if args.no_progress else True, device=args.device,
    )  # fmt: skip
    print(f"{len(outputs)} label map(s) in {args.output}" + ("" if args.no_statistics else " (+ statistics.csv, statistics.json)"))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from voxpipe.errors import InputError
    from voxpipe.pipelines.evaluate import (
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
        raise InputError("evaluate: expected --labels (e.g. liver=1,tumour=2) or --dataset dataset.json, found neither")
    options = ScoringOptions(
        tolerance=args.tolerance, convention=args.convention, definition=args.surface,
        lesion_threshold=args.lesion_iou, surface=not args.no_surface,
    )  # fmt: skip
    result = evaluate_folders(
        args.predictions, args.references, labels=groups, output_dir=args.output, options=options,
        workers=args.workers, resample_predictions=args.resample_pred, progress=True,
    )  # fmt: skip
    shown = ["dice", "nsd", "hd95", "assd"] if options.surface else ["dice", "iou", "sensitivity", "precision"]
    print(f"{'structure':<14}" + "".join(f"{m:>9}" for m in shown) + "   cases   (means; convention " + options.convention + ")")
    for name in result.structures:
        stats = result.summary["metrics"][name]
        print(f"{name:<14}" + "".join(f"   {_format_metric(stats[m]['mean'])}" for m in shown) + f"   {stats['dice']['n']:>5}")
    if result.summary["failed"]:
        print(f"failed cases (scored with the worst values): {', '.join(result.summary['failed'])}")
    if args.report:
        from voxpipe.pipelines.report import write_report

        report = write_report(result, args.predictions, args.references, output_dir=args.output, run_dir=args.run,
                              images_dir=args.images)  # fmt: skip
        print(f"wrote {report}")
    print(f"wrote {result.per_case_csv} and {result.summary_json}")
    return 2 if result.summary["failed"] else 0


def _cmd_networks(args: argparse.Namespace) -> int:
    from voxpipe.networks import list_networks, network_cost, network_spec

    print(f"{'name':<16}{'task':<16}{'params (M)':>11}{f'GFLOPs/{args.size}³':>14}  patch sides")
    for name in list_networks():
        spec = network_spec(name)
        cost = network_cost(name, size=args.size)
        sides = "img_size (fixed)" if spec.fixed_size else (f"multiple of {spec.divisor}" if spec.divisor > 1 else "any")
        if spec.min_size > max(spec.divisor, 16):
            sides += f", at least {spec.min_size}"
        measured = "" if cost.size == args.size else f" (at {cost.size}³)"
        print(f"{name:<16}{spec.task:<16}{cost.parameters / 1e6:>11.2f}{cost.gflops:>14.1f}  {sides}{measured}")
    return 0


def _cmd_networks_load(args: argparse.Namespace) -> int:
    import json

    from voxpipe.networks import build_network
    from voxpipe.networks.transfer import freeze, load_weights
    from voxpipe.pipelines.bundle import parse_overrides

    network = build_network(args.name, **parse_overrides(args.set))
    report = load_weights(network, args.weights)
    print(report.summary(limit=20))
    if args.freeze:
        frozen = freeze(network, args.name, args.freeze)
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        print(f"freeze {args.freeze}: {len(frozen)} tensors frozen, {trainable:,} trainable parameters left")
    if args.report:
        from voxpipe.transforms.io import write_text_atomic

        write_text_atomic(args.report, json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {args.report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from voxpipe.errors import InputError
    from voxpipe.networks import list_networks
    from voxpipe.networks.export import bundle_network, export_registered
    from voxpipe.pipelines.bundle import parse_overrides

    overrides = parse_overrides(args.set)
    if Path(args.model).is_dir():
        name, kwargs, patch, labels = bundle_network(args.model, config=args.config, overrides=overrides)
        weights = args.weights or Path(args.model) / "models" / "model.pt"
        if not Path(weights).is_file():
            raise InputError(f"{str(weights)!r}: expected the bundle's trained weights, found no file", hint="pass --weights FILE")
        shape = args.input_shape or ([1, kwargs.get("in_channels", 1), *patch] if patch else None)
    elif args.model in list_networks():
        name, kwargs, labels, weights = args.model, overrides, None, args.weights
        shape = args.input_shape
    else:
        raise InputError(f"{args.model!r}: expected a bundle folder or a network name ({', '.join(list_networks())})")
    manifest = export_registered(
        name, output_dir=args.output, weights=weights, network_kwargs=kwargs, input_shape=shape,
        formats=args.format, label_names=labels, tolerance=args.tolerance,
    )  # fmt: skip
    print(f"{name} {manifest['input']['shape']} from {weights or 'random initialisation'}")
    for item in manifest["files"]:
        diff = "not run" if item["max_abs_diff"] is None else f"{item['max_abs_diff']:.2e}"
        print(f"  {item['file']:<12} max |diff| {diff} (tolerance {item['tolerance']:g}, {item['checked_with']}); "
              f"other input sizes: {'yes' if item['dynamic_shape'] else 'no'}")  # fmt: skip
    print(f"wrote {Path(args.output) / 'manifest.json'}")
    return 0


def _shape(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected integers like 1,1,96,96,48, found {text!r}") from error
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxpipe",
        description="3D CT/MRI segmentation from file to trustworthy results (MONAI + PyTorch + Ignite).",
        epilog="Exit codes: 0 success, 2 bad input, 1 internal failure. Run 'voxpipe COMMAND --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"voxpipe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (MONAI/Ignite events)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="phantoms → train the liver bundle → predict → Dice, on the CPU")
    demo.add_argument("-o", "--output", default="runs/demo", help="folder for everything the demo writes (default: runs/demo)")
    demo.add_argument("--n-train", type=int, default=20, help="training phantoms (default: 20)")
    demo.add_argument("--n-test", type=int, default=6, help="held-out phantoms (default: 6)")
    demo.add_argument("--epochs", type=int, default=80, help="training epochs (default: 80)")
    demo.add_argument("--seed", type=int, default=0, help="seed for phantoms and training (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    synth = commands.add_parser("synth", help="write a synthetic CT dataset: liver/lung phantoms (MSD layout) or nodule patches")
    synth.add_argument("task", choices=["liver", "lung", "nodules"],
                       help="liver: MSD Task03 labels; lung: MSD Task06 labels + lung masks; "
                       "nodules: benign/malignant nodule patches with masks (dataset.json + labels.csv)")
    synth.add_argument("-o", "--output", required=True, help="dataset folder to write")
    synth.add_argument("--n-train", type=int, help="training cases (default: 16 phantoms, 200 nodule patches)")
    synth.add_argument("--n-test", type=int, help="test cases (default: 4 phantoms, 100 nodule patches)")
    synth.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    synth.add_argument("--size", choices=["default", "tiny"], default="default",
                       help="phantom size; nodule patches are 48³ (default) or 32³ (tiny) voxels at 1 mm")
    synth.set_defaults(func=_cmd_synth)

    train = commands.add_parser("train", help="train a bundle (MONAI bundle format)")
    train.add_argument("bundle", help="bundle folder, e.g. configs/liver_ct_segresnet")
    train.add_argument("--config", default="train", help="config name in BUNDLE/configs (default: train)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set dataset_dir=/data/Task03_Liver --set max_epochs=50")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT_DIR/checkpoints/last.pt (weights, optimizer, scheduler, epoch, "
                       "best metric, RNG states); starts from epoch 1 if there is none")
    train.set_defaults(func=_cmd_train)

    bundle = commands.add_parser("bundle", help="run any MONAI bundle (ours or the Model Zoo's), offline, optionally in safe mode")
    bundle_actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")
    bundle_run = bundle_actions.add_parser(
        "run", help="run one config of a bundle folder unmodified ($ expressions, @ references, % macros), offline"
    )
    bundle_run.add_argument("bundle", help="bundle folder (configs/metadata.json and configs/CONFIG.{json,yaml}) or bundle zip")
    bundle_run.add_argument("--config", default="inference", help="config name in BUNDLE/configs (default: inference)")
    bundle_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value, e.g. --set dataset_dir=/data/Task09_Spleen")
    bundle_run.add_argument("--weights", help="weights file for the config's CheckpointLoader(s); nothing is downloaded")
    bundle_run.add_argument("--safe", action="store_true",
                            help="refuse $ expressions and _target_s outside monai/torch/ignite/voxpipe/numpy "
                            "(a bundle is code; see README, Bundles)")
    bundle_run.set_defaults(func=_cmd_bundle_run)
    bundle_validate = bundle_actions.add_parser(
        "validate", help="report every problem of a bundle at once (syntax, references, targets, arguments, "
        "properties, metadata schema) without running it; exit 2 on any"
    )
    bundle_validate.add_argument("bundle", help="bundle folder")
    bundle_validate.set_defaults(func=_cmd_bundle_validate)
    bundle_export = bundle_actions.add_parser(
        "export", help="package configs, docs and trained weights as a bundle zip (checksums in metadata.json)"
    )
    bundle_export.add_argument("bundle", help="bundle folder")
    bundle_export.add_argument("-o", "--output", required=True, help="zip file to write")
    bundle_export.add_argument("--weights", help="trained weights (default: BUNDLE/models/model.pt)")
    bundle_export.add_argument("--name", help="bundle folder name inside the zip (default: the folder's name)")
    bundle_export.set_defaults(func=_cmd_bundle_export)

    infer = commands.add_parser(
        "infer", help="segment images with a trained bundle; outputs on each input's grid",
        description="Failing cases are reported at the end (exit code 2) after every other case was written.",
    )  # fmt: skip
    infer.add_argument("model", help="bundle folder (weights from BUNDLE/models/model.pt unless --weights)")
    infer.add_argument("inputs", nargs="+", help="image files (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd), folders of them, DICOM series folders")
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
    infer.add_argument("--no-statistics", action="store_true",
                       help="do not write statistics.csv/.json (volumes, mean/std HU, lesion count and largest diameter)")
    infer.set_defaults(func=_cmd_infer)

    networks = commands.add_parser("networks", help="the network registry: names, size and cost; loading weights")
    networks_actions = networks.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = networks_actions.add_parser("list", help="parameters, GFLOPs per patch and accepted patch sizes")
    listing.add_argument("--size", type=int, default=96, help="patch side for the GFLOPs figure (default: 96)")
    listing.set_defaults(func=_cmd_networks)
    load = networks_actions.add_parser("load", help="load weights into a registry network and report what was reused")
    load.add_argument("name", help="registry name, e.g. segresnet")
    load.add_argument("weights", help="voxpipe checkpoint, MONAI bundle models/model.pt or a state dict")
    load.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="network argument, e.g. --set out_channels=2 --set init_filters=8")
    load.add_argument("--freeze", help="also freeze: encoder, backbone (all but the head) or a module name")
    load.add_argument("--report", help="write the loaded/skipped/missing report as JSON here")
    load.set_defaults(func=_cmd_networks_load)

    export = commands.add_parser("export", help="export a network to TorchScript/ONNX with a parity check and manifest")
    export.add_argument("model", help="bundle folder (its network_def and models/model.pt) or a registry network name")
    export.add_argument("-o", "--output", required=True, help="folder for model.ts, model.onnx and manifest.json")
    export.add_argument("--format", nargs="+", choices=["torchscript", "onnx"], default=["torchscript", "onnx"],
                        help="formats to write (default: both)")
    export.add_argument("--weights", help="weights file (bundle default: BUNDLE/models/model.pt; network name: random init)")
    export.add_argument("--config", default="inference", help="bundle config holding network_def (default: inference)")
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="bundle override or network argument, e.g. --set out_channels=2")
    export.add_argument("--input-shape", type=_shape, metavar="B,C,X,Y,Z",
                        help="shape of the parity-check input (default: the bundle's patch or a size the network accepts)")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |export - eager| (default: 1e-4)")
    export.set_defaults(func=_cmd_export)

    evaluate = commands.add_parser(
        "evaluate", help="challenge-grade metrics per case and structure: predictions vs references",
        description="Dice, IoU, sensitivity, precision, specificity, volume difference, HD, HD95, ASSD, MSD, NSD and "
        "lesion detection per case and structure; summary with bootstrap CIs and MSD/LiTS aggregates.",
    )  # fmt: skip
    evaluate.add_argument("predictions", help="folder of predicted label maps")
    evaluate.add_argument("references", help="folder of reference label maps: NIfTI, NRRD, MHA or DICOM-SEG .dcm (defines the cases)")
    evaluate.add_argument("--labels", help="structures as name=value[+value], e.g. liver=1,tumour=2,liver_total=1+2")
    evaluate.add_argument("--dataset", help="take structures from the labels of this MSD dataset.json")
    evaluate.add_argument("-o", "--output", required=True, help="folder for per_case.csv and summary.json")
    evaluate.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default: 2)")
    evaluate.add_argument("--convention", choices=["nnunet", "flare", "lits"], default="nnunet",
                          help="empty-mask convention (default: nnunet; see voxpipe/metrics/conventions.py)")
    evaluate.add_argument("--surface", choices=["deepmind", "medpy"], default="deepmind",
                          help="surface-distance definition (default: deepmind, as surface-distance computes it)")
    evaluate.add_argument("--no-surface", action="store_true", help="skip surface distances (HD, HD95, ASSD, MSD, NSD)")
    evaluate.add_argument("--lesion-iou", type=float, default=0.1, help="IoU for a lesion to count as detected (default: 0.1)")
    evaluate.add_argument("--workers", type=int, default=1, help="processes scoring cases in parallel (default: 1)")
    evaluate.add_argument("--resample-pred", action="store_true",
                          help="resample predictions on another grid onto the reference grid (nearest) instead of failing")
    evaluate.add_argument("--report", action="store_true", help="also write report.html (plots, table, overlays)")
    evaluate.add_argument("--run", help="with --report: a training run folder whose metrics.csv gives the curves")
    evaluate.add_argument("--images", help="with --report: folder of the cases' images (same case ids) drawn under the overlays")
    evaluate.set_defaults(func=_cmd_evaluate)

    from voxpipe.cli_data import add_data_commands

    add_data_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except VoxpipeError as error:
        if args.debug:
            raise
        print(f"voxpipe: error: {error}", file=sys.stderr)
        if error.hint:
            print(f"voxpipe: hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("voxpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # anything unexpected is our bug: one line, exit 1
        if args.debug:
            raise
        print(f"voxpipe: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
