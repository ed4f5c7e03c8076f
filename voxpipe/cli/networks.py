"""``voxpipe networks list|load`` and ``voxpipe export``: the network registry, weights and export."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_networks(args: argparse.Namespace) -> int:
    from voxpipe.networks import list_networks, network_cost, network_spec

    print(f"{'name':<16}{'task':<16}{'params (M)':>11}{f'GFLOPs/{args.size}³':>14}  patch sides")
    for name in list_networks():
        spec = network_spec(name)
        cost = network_cost(name, size=args.size)
        sides = (
            "img_size (fixed)"
            if spec.fixed_size
            else (f"multiple of {spec.divisor}" if spec.divisor > 1 else "any")
        )
        if spec.min_size > max(spec.divisor, 16):
            sides += f", at least {spec.min_size}"
        measured = "" if cost.size == args.size else f" (at {cost.size}³)"
        print(
            f"{name:<16}{spec.task:<16}{cost.parameters / 1e6:>11.2f}{cost.gflops:>14.1f}  {sides}{measured}"
        )
    return 0


def _cmd_networks_load(args: argparse.Namespace) -> int:
    import json

    from voxpipe.networks import build_network
    from voxpipe.networks.transfer import freeze, load_weights
    from voxpipe.pipelines.bundles.config import parse_overrides

    network = build_network(args.name, **parse_overrides(args.set))
    report = load_weights(network, args.weights)
    print(report.summary(limit=20))
    if args.freeze:
        frozen = freeze(network, args.name, args.freeze)
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        print(f"freeze {args.freeze}: {len(frozen)} tensors frozen, {trainable:,} trainable parameters left")
    if args.report:
        from voxpipe.transforms.files import write_text_atomic

        write_text_atomic(args.report, json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {args.report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from voxpipe.errors import InputError
    from voxpipe.networks import list_networks
    from voxpipe.networks.export import export_registered
    from voxpipe.pipelines.bundles.config import bundle_network, parse_overrides

    overrides = parse_overrides(args.set)
    if Path(args.model).is_dir():
        name, kwargs, patch, labels = bundle_network(args.model, config=args.config, overrides=overrides)
        weights = args.weights or Path(args.model) / "models" / "model.pt"
        if not Path(weights).is_file():
            raise InputError(
                f"{str(weights)!r}: expected the bundle's trained weights, found no file",
                hint="pass --weights FILE",
            )
        shape = args.input_shape or ([1, kwargs.get("in_channels", 1), *patch] if patch else None)
    elif args.model in list_networks():
        name, kwargs, labels, weights = args.model, overrides, None, args.weights
        shape = args.input_shape
    else:
        raise InputError(
            f"{args.model!r}: expected a bundle folder or a network name ({', '.join(list_networks())})"
        )
    manifest = export_registered(
        name,
        output_dir=args.output,
        weights=weights,
        network_kwargs=kwargs,
        input_shape=shape,
        formats=args.format,
        label_names=labels,
        tolerance=args.tolerance,
    )
    print(f"{name} {manifest['input']['shape']} from {weights or 'random initialisation'}")
    for item in manifest["files"]:
        diff = "not run" if item["max_abs_diff"] is None else f"{item['max_abs_diff']:.2e}"
        print(
            f"  {item['file']:<12} max |diff| {diff} (tolerance {item['tolerance']:g}, {item['checked_with']}); "
            f"other input sizes: {'yes' if item['dynamic_shape'] else 'no'}"
        )
    print(f"wrote {Path(args.output) / 'manifest.json'}")
    return 0


def _shape(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected integers like 1,1,96,96,48, found {text!r}") from error
    return values


def add_commands(commands: Any) -> None:
    """Register ``networks`` and ``export`` on the top-level subparsers."""
    networks = commands.add_parser(
        "networks", help="the network registry: names, size and cost; loading weights"
    )
    networks_actions = networks.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = networks_actions.add_parser(
        "list", help="parameters, GFLOPs per patch and accepted patch sizes"
    )
    listing.add_argument(
        "--size", type=int, default=96, help="patch side for the GFLOPs figure (default: 96)"
    )
    listing.set_defaults(func=_cmd_networks)
    load = networks_actions.add_parser(
        "load", help="load weights into a registry network and report what was reused"
    )
    load.add_argument("name", help="registry name, e.g. segresnet")
    load.add_argument("weights", help="voxpipe checkpoint, MONAI bundle models/model.pt or a state dict")
    load.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="network argument, e.g. --set out_channels=2 --set init_filters=8",
    )
    load.add_argument("--freeze", help="also freeze: encoder, backbone (all but the head) or a module name")
    load.add_argument("--report", help="write the loaded/skipped/missing report as JSON here")
    load.set_defaults(func=_cmd_networks_load)

    export = commands.add_parser(
        "export", help="export a network to TorchScript/ONNX with a parity check and manifest"
    )
    export.add_argument(
        "model", help="bundle folder (its network_def and models/model.pt) or a registry network name"
    )
    export.add_argument(
        "-o", "--output", required=True, help="folder for model.ts, model.onnx and manifest.json"
    )
    export.add_argument(
        "--format",
        nargs="+",
        choices=["torchscript", "onnx"],
        default=["torchscript", "onnx"],
        help="formats to write (default: both)",
    )
    export.add_argument(
        "--weights", help="weights file (bundle default: BUNDLE/models/model.pt; network name: random init)"
    )
    export.add_argument(
        "--config", default="inference", help="bundle config holding network_def (default: inference)"
    )
    export.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle override or network argument, e.g. --set out_channels=2",
    )
    export.add_argument(
        "--input-shape",
        type=_shape,
        metavar="B,C,X,Y,Z",
        help="shape of the parity-check input (default: the bundle's patch or a size the network accepts)",
    )
    export.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest accepted |export - eager| (default: 1e-4)"
    )
    export.set_defaults(func=_cmd_export)
