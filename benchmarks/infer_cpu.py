"""Inference on the CPU, file to file: plain MONAI vs ``voxpipe infer`` on clinical CT geometry.

Default mode: a held-out clinical-size liver phantom (``voxpipe.phantoms.clinical``: 512 × 512 at
0.8 mm, 2 mm slices, 150 slices, a table, arms, −2048 outside the reconstruction circle; seed 100, not
among the training phantoms), the liver bundle, the same weights on both sides, each side in its own
process, file to file:

  (a) plain MONAI: the bundle's preprocessing, ``SlidingWindowInferer`` fp32 (roi = patch, sw_batch 4,
      overlap 0.25, Gaussian), ``Activationsd`` + ``Invertd`` + ``AsDiscreted``,
      ``KeepLargestConnectedComponentd`` (liver + tumour) and ``SaveImaged``, on MONAI's ``DataLoader``;
  (b) ``voxpipe infer`` as shipped (windows over the body mask, bf16 where the CPU has it, slab-wise
      ``ResampleArgmaxd``, post-processing, statistics, the next case loaded ahead);
  (c) with ``--organ-roi``, also ``voxpipe infer --organ-roi`` (coarse pass, then the liver's box).

It prints each side's seconds and peak RSS (the process and its children), voxpipe's stages
(``--timings``), Dice of each side against the phantom's truth per class, and the summary lines
``speed-up`` and one ``agreement`` per class (Dice between the two written label maps).

The weights should be a network trained on clinical-size phantoms (see benchmarks/README.md):

    voxpipe synth liver --fov clinical -o data/liver_clinical
    voxpipe train configs/liver_ct_segresnet --set dataset_dir=data/liver_clinical \
        --set network_def#init_filters=8 --set cpu_bf16=true --set max_epochs=100 --set val_interval=20
    python benchmarks/infer_cpu.py --weights runs/liver_ct_segresnet/models/model.pt --init-filters 8 [--organ-roi]

Other modes:

    --batch 20            20 clinical-size cases (100–160 slices of 2.5–5 mm), one run each side: cases/min
    --real FILE...        real CT files or DICOM folders (no truth: agreement only), e.g. ../shared/data
    --memory              peak RSS of a 512 × 512 × 600 clinical-size CT, whole pipeline (budget 2 GiB;
                          with --classes 100, a random-init 100-class network: budget 4 GiB)
    --network-only        the network part alone on a resampled phantom held in memory (the older figure)
    --variants            voxpipe fp32, bf16 and bf16 + channels-last 3D against MONAI fp32 (file to file,
                          or the network alone with --network-only)

Without ``--weights`` the network is a seeded random init, whose near-tied logits make agreement
figures pessimistic.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from voxpipe.metrics.overlap import dice

BUNDLE = Path(__file__).resolve().parents[1] / "configs" / "liver_ct_segresnet"
CLASSES = {1: "liver", 2: "tumour"}
# --variants: voxpipe's numeric paths, each against plain MONAI fp32 (everything else as shipped)
VARIANTS = {
    "voxpipe-fp32": {"precision": "fp32"},
    "voxpipe-bf16": {"precision": "bf16"},
    "voxpipe-bf16-cl": {"precision": "bf16", "inferer#channels_last": True},
    # the windows run by OpenVINO (``--runtime``; the converted model is cached: the first run of a
    # kind converts, and int8 calibrates on that case; ``--sides`` runs each twice, cold and warm)
    "voxpipe-openvino": {"precision": "fp32", "runtime": "openvino"},
    "voxpipe-int8": {"precision": "fp32", "runtime": "openvino-int8"},
}


# --- clinical-size cases -------------------------------------------------------------------------


def clinical_case(
    folder: Path,
    seed: int,
    *,
    spacing_xy: float,
    spacing_z: float,
    slices: int,
    arms: bool = True,
    padding: int = -2048,
    name: str | None = None,
) -> tuple[Path, Path]:
    """A liver phantom in clinical CT geometry, written as int16 image + uint8 truth (NIfTI, LPS storage)."""
    from voxpipe.phantoms.clinical import ClinicalGeometry, clinical_ct
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.transforms.io import save_nifti

    name = name or f"clinical_{seed}_{slices}"
    image, truth = folder / "images" / f"{name}.nii.gz", folder / "truth" / f"{name}.nii.gz"
    if not image.is_file():
        geometry = ClinicalGeometry(spacing_xy, spacing_z, slices, 0.6, arms, padding)
        phantom = clinical_ct(liver_phantom((seed, 0)), np.random.default_rng((seed, 512)), geometry=geometry)
        save_nifti(phantom.image, phantom.affine, image)
        save_nifti(phantom.label, phantom.affine, truth)
    return image, truth


def _rss_mib() -> float:
    """This process's peak RSS (``VmHWM``: ``ru_maxrss`` survives ``exec`` and would report the parent's
    peak, the benchmark that built a 600-slice phantom in memory), or its children's if higher."""
    from voxpipe.pipelines.inference.timings import _peak_rss_mib

    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(_peak_rss_mib(), children)


def _child(
    kind: str,
    images: list[str],
    weights: str,
    init_filters: int,
    out: str,
    bundle: Path = BUNDLE,
    extra: dict | None = None,
) -> None:
    """One side, file to file, in this process; prints seconds, peak RSS and stages as JSON on the last line.

    ``seconds`` runs from the call (libraries imported: MONAI, voxpipe; the same for both sides, timed
    apart as ``import_seconds``) to the last output written: configuration, model build, weights,
    every case, statistics.
    """
    importing = time.perf_counter()
    import monai.bundle  # noqa: F401

    import voxpipe.pipelines.inference.infer  # noqa: F401

    import_seconds = time.perf_counter() - importing
    import logging

    from voxpipe.pipelines.inference.timings import Timings

    windows = logging.getLogger(
        "voxpipe.pipelines.inference.sliding_window"
    )  # windows run / skipped, the organ ROI
    windows.setLevel(logging.INFO)
    windows.addHandler(logging.StreamHandler(sys.stderr))
    started = time.perf_counter()
    overrides = {"network_def#init_filters": init_filters, "progress": False, **(extra or {})}
    timings = Timings()  # both sides' stages, timed the same way (transforms and inferer wrapped)
    if kind.startswith("voxpipe"):
        from voxpipe.pipelines.inference.infer import infer_with_bundle

        variant = VARIANTS.get(kind, {})
        overrides.update({k: v for k, v in variant.items() if k == "inferer#channels_last"})

        infer_with_bundle(
            bundle,
            images,
            output_dir=out,
            weights=weights,
            overrides=overrides,
            organ_roi=kind == "voxpipe-roi",
            precision=variant.get("precision"),
            runtime=variant.get("runtime"),
            timings=timings,
        )
    else:  # the bundle's preprocessing with MONAI's loader, inferer, inversion, component filter and writer
        from voxpipe.pipelines.bundles.run import run_bundle

        monai = {
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@dataset",
                "batch_size": 1,
                "shuffle": False,
                "num_workers": 0,
            },
            "inferer": {
                "_target_": "SlidingWindowInferer",
                "roi_size": "@patch_size",
                "sw_batch_size": 4,
                "overlap": 0.25,
                "mode": "gaussian",
            },
            "postprocessing#transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "KeepLargestConnectedComponentd",
                    "keys": "pred",
                    "applied_labels": [1, 2],
                    "independent": False,
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": out,
                    "output_postfix": "",
                    "separate_folder": False,
                    "output_ext": ".nii.gz",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "print_log": False,
                },
            ],
        }
        run_bundle(
            bundle,
            config="inference",
            overrides={
                "output_dir": out,
                "checkpoint": weights,
                "datalist": [{"image": i} for i in images],
                **overrides,
                **monai,
            },
            before_run=timings.instrument,
        )
    seconds = time.perf_counter() - started
    stages = {k: round(v, 2) for k, v in timings.seconds.items()}
    print(
        json.dumps(
            {
                "rss_mib": _rss_mib(),
                "seconds": seconds,
                "import_seconds": import_seconds,
                "stages": stages,
                "peak_raised_mib": {k: round(v) for k, v in timings.peak_raised_mib.items()},
            }
        )
    )


def side(
    kind: str,
    images: list[Path],
    weights: str,
    init_filters: int,
    out: Path,
    bundle: Path = BUNDLE,
    extra: dict | None = None,
) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        json.dumps([str(i) for i in images]),
        weights,
        str(init_filters),
        str(out),
        str(bundle),
        json.dumps(extra or {}),
    ]
    import os

    env = {**os.environ, "VOXPIPE_CACHE": str(out.parent / "cache")}  # OpenVINO's conversions: this run's
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  {kind:12s} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-3:]}")
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  {kind:12s} {result['seconds']:7.1f} s (+ {result['import_seconds']:.1f} s importing)   "
        f"peak RSS {result['rss_mib']:7.0f} MiB",
        flush=True,
    )
    print(
        "               stages: " + ", ".join(f"{k} {v:.1f}" for k, v in result["stages"].items()), flush=True
    )
    if result.get("peak_raised_mib"):
        print(
            "               peak RSS rose during: "
            + ", ".join(f"{k} +{v} MiB" for k, v in result["peak_raised_mib"].items()),
            flush=True,
        )
    for line in done.stderr.splitlines():
        if line.startswith("sliding window:"):
            print(f"               {line}")
    return result


def labels_of(folder: Path, image: Path) -> np.ndarray:
    import nibabel as nib

    name = image.name if image.name.endswith(".nii.gz") else f"{image.name.split('.')[0]}.nii.gz"
    return np.asanyarray(nib.load(folder / name).dataobj).astype(np.uint8)


def _weights(args: argparse.Namespace, folder: Path) -> str:
    if args.weights is not None:
        return args.weights
    path = folder / "random.pt"
    torch.save(network(args.init_filters, None).state_dict(), path)
    return str(path)


def compare(images: list[Path], truths: list[Path | None], args: argparse.Namespace, folder: Path) -> None:
    """Both sides (and the organ-ROI variant) over ``images``; prints times, truth Dice, speed-up and agreement."""
    import nibabel as nib

    weights = _weights(args, folder)
    if args.sides:
        kinds = ["monai", *args.sides.split(",")]
    elif args.variants:
        kinds = ["monai", *[k for k in VARIANTS if "runtime" not in VARIANTS[k]]]
    else:
        kinds = ["monai", "voxpipe"] + (["voxpipe-roi"] if args.organ_roi else [])
    results = {}
    for kind in kinds:
        if "runtime" in VARIANTS.get(kind, {}):  # cold: converted (and calibrated) in this run
            cold = side(kind, images, weights, args.init_filters, folder / f"{kind}-cold")
            print(f"  {kind} cold (conversion included): {cold['seconds'] if cold else float('nan'):.1f} s")
        results[kind] = side(kind, images, weights, args.init_filters, folder / kind)
    if results["monai"] is None:
        return
    maps = {
        kind: [labels_of(folder / kind, i) for i in images] for kind in kinds if results[kind] is not None
    }
    for kind in maps:
        if all(t is not None for t in truths):
            truth = [np.asanyarray(nib.load(t).dataobj) for t in truths]
            scores = {
                c: np.mean([dice(m == c, t == c) for m, t in zip(maps[kind], truth, strict=True)])
                for c in CLASSES
            }
            print(
                f"  {kind:12s} Dice vs truth: "
                + ", ".join(f"{CLASSES[c]} {v:.4f}" for c, v in scores.items())
            )
    minutes = {k: r["seconds"] / 60 for k, r in results.items() if r is not None}
    for kind in [k for k in kinds[1:] if k in maps]:
        label = "" if kind == "voxpipe" else f" ({'organ ROI' if kind == 'voxpipe-roi' else kind})"
        if len(images) > 1:
            print(
                f"  cases per minute{label}: monai {len(images) / minutes['monai']:.2f}, {kind} {len(images) / minutes[kind]:.2f}"
            )
        print(f"speed-up{label} {minutes['monai'] / minutes[kind]:.2f}×")
        for c, name in CLASSES.items():
            agreement = np.mean(
                [dice(a == c, b == c) for a, b in zip(maps[kind], maps["monai"], strict=True)]
            )
            print(f"agreement{label} {name} {agreement:.4f}")


def clinical(args: argparse.Namespace) -> None:
    folder = Path(args.work or tempfile.mkdtemp(prefix="voxpipe-bench-"))
    if args.batch:
        rng = np.random.default_rng(7)
        cases = []
        for index in range(args.batch):
            spacing_z = float(rng.choice([2.5, 3.0, 5.0]))
            slices = int(np.clip(round(rng.uniform(300.0, 400.0) / spacing_z), 60, 160))
            cases.append(
                clinical_case(
                    folder,
                    200 + index,
                    spacing_xy=float(rng.uniform(0.6, 0.98)),
                    spacing_z=spacing_z,
                    slices=slices,
                    arms=bool(rng.random() < 0.4),
                    padding=int(rng.choice([-1024, -2048])),
                )
            )
        print(
            f"{len(cases)} clinical-size liver phantoms (512 × 512, {min(c[0].stat().st_size for c in cases) >> 20}–"
            f"{max(c[0].stat().st_size for c in cases) >> 20} MiB each), liver bundle, SegResNet(init_filters={args.init_filters})"
        )
    else:
        cases = [clinical_case(folder, 100, spacing_xy=0.8, spacing_z=2.0, slices=args.slices)]
        print(
            f"clinical-size liver phantom 512 × 512 × {args.slices} at 0.8 × 0.8 × 2 mm (table, arms, -2048 padding), "
            f"liver bundle, SegResNet(init_filters={args.init_filters}), weights {args.weights or 'random init (seed 0)'}"
        )
    compare([c[0] for c in cases], [c[1] for c in cases], args, folder)


def real(args: argparse.Namespace) -> None:
    folder = Path(args.work or tempfile.mkdtemp(prefix="voxpipe-bench-"))
    images = [Path(p).resolve() for p in args.real]
    print(
        f"real CT: {', '.join(str(p) for p in images)}; liver bundle, SegResNet(init_filters={args.init_filters}); no truth"
    )
    compare(images, [None] * len(images), args, folder)


def memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        phantoms = Path(args.phantoms) if args.phantoms else folder  # building the CT takes minutes
        image, _ = clinical_case(
            phantoms, 300, spacing_xy=0.75, spacing_z=0.8, slices=600, name="ct_512x512x600"
        )
        bundle, extra, budget = BUNDLE, {}, 2.0
        if (
            args.classes != 3
        ):  # a random-init network with that many outputs; the bundle's metadata names them
            import shutil

            bundle = folder / "bundle"
            shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "runs"))
            meta_path = bundle / "configs" / "metadata.json"
            meta = json.loads(meta_path.read_text())
            meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {
                str(k): ("background" if k == 0 else f"structure {k}") for k in range(args.classes)
            }
            meta_path.write_text(json.dumps(meta, indent=2))
            extra, budget = {"num_classes": args.classes}, 4.0
            torch.manual_seed(0)
            from voxpipe.networks import build_network

            weights = str(folder / f"random_{args.classes}.pt")
            torch.save(
                build_network(
                    "segresnet", in_channels=1, out_channels=args.classes, init_filters=args.init_filters
                ).state_dict(),
                weights,
            )
        else:
            weights = _weights(args, folder)
        print(
            f"512 × 512 × 600 clinical-size CT, int16 at 0.75 × 0.75 × 0.8 mm ({image.stat().st_size / 2**20:.0f} MiB .nii.gz), "
            f"liver bundle, SegResNet(init_filters={args.init_filters}), {args.classes} classes"
        )
        kinds = ("voxpipe",) if args.classes != 3 or args.no_monai else ("voxpipe", "monai")
        results = {
            kind: side(kind, [image], weights, args.init_filters, folder / kind, bundle, extra)
            for kind in kinds
        }
        if len(results) == 2 and all(results.values()):
            a, b = labels_of(folder / "voxpipe", image), labels_of(folder / "monai", image)
            print(
                "  Dice agreement of the written label maps: "
                + ", ".join(f"{n} {dice(a == c, b == c):.4f}" for c, n in CLASSES.items())
            )
        if results["voxpipe"]:
            verdict = "within" if results["voxpipe"]["rss_mib"] <= budget * 1024 else "OVER"
            print(
                f"voxpipe peak RSS {results['voxpipe']['rss_mib'] / 1024:.2f} GiB: {verdict} the {budget:.0f} GiB budget"
            )


# --- the network part alone (the older in-memory figure) -----------------------------------------


def volume(size: tuple[int, int, int]) -> torch.Tensor:
    from voxpipe.phantoms.ct import liver_phantom

    phantom = liver_phantom(0, size="default")
    hu = ndimage.zoom(
        phantom.image.astype(np.float32), np.array(size) / np.array(phantom.image.shape), order=1
    )
    scaled = np.clip((hu + 100.0) / 300.0, 0.0, 1.0)
    return torch.from_numpy(scaled)[None, None]


def network(init_filters: int, weights: str | None) -> torch.nn.Module:
    from voxpipe.networks import build_network

    torch.manual_seed(0)
    net = build_network(
        "segresnet", in_channels=1, out_channels=3, init_filters=init_filters, weights=weights
    )
    return net.eval()


def _network_child(kind: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    variant = VARIANTS.get(kind, {"precision": args.precision, "inferer#channels_last": args.channels_last})
    from monai.inferers import sliding_window_inference

    from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer

    torch.set_num_threads(args.threads)
    image, net = volume(tuple(args.size)), network(args.init_filters, args.weights)
    roi = [args.roi] * 3
    started = time.perf_counter()
    with torch.no_grad():
        if kind == "monai":
            logits = sliding_window_inference(image, roi, 4, net, overlap=0.25, mode="gaussian")
        else:
            inferer = FastSlidingWindowInferer(
                roi,
                sw_batch_size=4,
                overlap=0.25,
                mode="gaussian",
                precision=variant["precision"],
                channels_last=bool(variant.get("inferer#channels_last", False)),
                skip_air=not args.no_skip_air,
            )
            logits = inferer(image, net)
            print(
                f"  voxpipe windows run {inferer.last_counts['run']}, skipped {inferer.last_counts['skipped']}",
                flush=True,
            )
    labels = logits.argmax(1)[0].to(torch.uint8).numpy()
    seconds = time.perf_counter() - started
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, labels))


def network_only(args: argparse.Namespace) -> None:
    print(
        f"volume {tuple(args.size)}, SegResNet(init_filters={args.init_filters}), roi {args.roi}³, overlap 0.25, "
        f"sw_batch 4, gaussian, {args.threads} threads, weights: {args.weights or 'random init (seed 0)'}"
    )
    results = {}
    for kind in ("monai", *(VARIANTS if args.variants else ["voxpipe"])):
        context = mp.get_context("fork")
        queue = context.Queue()
        process = context.Process(target=_network_child, args=(kind, args, queue))
        process.start()
        results[kind] = queue.get()
        process.join()
    for kind, (seconds, rss, labels) in results.items():
        counts = np.bincount(labels.ravel(), minlength=3)
        print(f"  {kind:8s} {seconds:7.1f} s   peak RSS {rss:7.0f} MiB   voxels per class {counts.tolist()}")
    plain = results["monai"][2]
    for kind in [k for k in results if k != "monai"]:
        agreement = [dice(plain == c, results[kind][2] == c) for c in (1, 2)]
        print(
            f"{kind}: speed-up {results['monai'][0] / results[kind][0]:.2f}×; "
            f"Dice agreement with MONAI fp32: liver {agreement[0]:.4f}, tumour {agreement[1]:.4f}"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, images, weights, init_filters, out, bundle, extra = sys.argv[2:9]
        _child(kind, json.loads(images), weights, int(init_filters), out, Path(bundle), json.loads(extra))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="trained checkpoint (default: seeded random init)")
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--organ-roi", action="store_true", help="also run voxpipe infer --organ-roi")
    parser.add_argument(
        "--slices", type=int, default=150, help="slices of the single clinical-size case (2 mm each)"
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="that many clinical-size cases in one run per side"
    )
    parser.add_argument("--real", nargs="+", help="real CT files or DICOM series folders instead of phantoms")
    parser.add_argument(
        "--work", help="folder for cases and outputs (default: a new temporary folder; cases are reused)"
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak RSS of file-to-file runs on a 512 × 512 × 600 CT"
    )
    parser.add_argument(
        "--network-only", action="store_true", help="the network part alone, on a volume held in memory"
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=3,
        help="--memory: output classes (not 3: a random-init network with that many, voxpipe alone; budget 4 GiB)",
    )
    parser.add_argument("--no-monai", action="store_true", help="--memory: voxpipe alone")
    parser.add_argument(
        "--phantoms", help="--memory: keep the 600-slice phantom in this folder and reuse it in later runs"
    )
    parser.add_argument(
        "--size", type=int, nargs=3, default=[256, 256, 160], help="--network-only: volume size"
    )
    parser.add_argument("--roi", type=int, default=96, help="--network-only: window edge")
    parser.add_argument(
        "--precision", default="bf16", choices=["bf16", "fp32"], help="--network-only: voxpipe precision"
    )
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="--network-only: torch threads"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="--network-only: voxpipe in channels-last 3D"
    )
    parser.add_argument("--no-skip-air", action="store_true", help="--network-only: run every window")
    parser.add_argument(
        "--sides",
        help=f"file to file: these voxpipe kinds against plain MONAI ({','.join(['voxpipe', 'voxpipe-roi', *VARIANTS])}); "
        "the OpenVINO kinds run cold, then warm",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="voxpipe in fp32, bf16 and bf16 + channels-last 3D, each against plain MONAI fp32 "
        "(file to file, or with --network-only the network alone)",
    )
    args = parser.parse_args()
    if args.memory:
        memory(args)
    elif args.network_only:
        network_only(args)
    elif args.real:
        real(args)
    else:
        clinical(args)


if __name__ == "__main__":
    main()
