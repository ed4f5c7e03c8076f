"""nnU-Net's own predictor against voxpipe's nnU-Net path: same model folder, same CT, file to file, on the CPU.

Each side runs in its own process (peak RSS from ``VmHWM``): nnunetv2 2.8.1's ``nnUNetPredictor``
(from the oracle packages ``make oracle`` installs into ``.oracle/nnunet``; the network built by
dynamic-network-architectures and handed over with ``manual_initialization``, as
tests/oracles/nnunet_predict.py does), voxpipe's reference path (``NnUNetModel``) and voxpipe's
fast path (``fast=True``: bf16 where the CPU runs it natively, windows without body skipped).
Printed per side: seconds (reading to label map), peak RSS, and against nnU-Net's labels the voxels
that differ and the Dice of every foreground class.

The model is a PlainConvUNet folder of the real layout at 1.5 mm, sized for a 2-core CPU unless told
otherwise. Agreement figures of a random-init network say little (its logits are near-tied
everywhere, so bf16 flips voxels a trained network would hold), so by default the network is first
trained for ``--train`` seconds on liver phantoms preprocessed as nnU-Net does, which gives it the
confident logits of a trained model. The CT is a 512 × 512 × N clinical-size phantom (a body with
arms in air, ``voxpipe.phantoms.clinical``) or ``--image FILE``.

    python benchmarks/nnunet_cpu.py [--slices 120] [--features 16] [--patch 64] [--train 240] [--mirroring]
    python benchmarks/nnunet_cpu.py --slices 300 --spacing-z 1.5 --stages 6 --features 32 --most 320 \
        --patch 128 --train 0 --sides nnunet,voxpipe,voxpipe-fast,voxpipe-openvino,voxpipe-int8
                                               # the issue's case: nnU-Net's default 3d_fullres network
    python benchmarks/nnunet_cpu.py --memory [--classes 3] [--sides voxpipe,voxpipe-fast,voxpipe-openvino]
                                               # voxpipe alone: 118 classes, 512 × 512 × 600, peak RSS
    python benchmarks/nnunet_cpu.py --totalseg [--slices 300] [--features 32] [--patch 128] [--sides voxpipe,voxpipe-openvino]

``--totalseg``: TotalSegmentator 2.18.0 itself (the oracle ``make oracle`` installs, offline) against
``voxpipe infer total``, each in its own process, on a 512 × 512 × ``--slices`` CT (0.8 × 0.8 × 1.5 mm):
``total``'s five models in TotalSegmentator's weights layout with networks of the real size (6 stages,
``--features`` 32 → 320, patch ``--patch``³, 1.5 mm, TotalSegmentator's label counts), random weights.
Printed: seconds and peak RSS (of the process and its children) per side, the voxels that differ and
the lowest Dice per structure. OpenVINO sides (``--sides``) run twice: cold (the five models converted,
int8 calibrated on this CT) and warm (from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("VOXPIPE_NNUNET_ORACLE", ROOT / ".oracle" / "nnunet"))
SIDES = ("nnunet", "voxpipe", "voxpipe-fast")
#: more sides (--sides): the windows run by OpenVINO, float32 or NNCF int8 (voxpipe infer --runtime)
RUNTIME_SIDES = {"voxpipe-openvino": "openvino", "voxpipe-int8": "openvino-int8"}


def _peak_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(side: str, folder: str, image: str, out: str, mirroring: bool) -> None:
    started = time.perf_counter()
    extra = {}
    if side == "nnunet":
        sys.argv = ["nnunet_predict.py", folder, out, image] + (["--mirroring"] if mirroring else [])
        sys.path.insert(0, str(ROOT / "tests" / "oracles"))
        import nnunet_predict  # the oracle script: nnUNetPredictor.predict_single_npy_array

        nnunet_predict.main()
    else:
        from voxpipe.pipelines.inference.nnunet.model import NnUNetModel

        runtime = RUNTIME_SIDES.get(side, "torch")
        predictor = NnUNetModel(folder, mirroring=mirroring, fast=side == "voxpipe-fast", runtime=runtime)
        segmentation, _ = predictor.predict([image])
        np.savez_compressed(out, segmentation=segmentation)
        extra = {
            "precision": predictor.precision if runtime == "torch" else runtime,
            "skipped": predictor.skipped,
        }
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mib": _peak_mib(), **extra}))


def run_side(side: str, folder: Path, image: Path, out: Path, mirroring: bool) -> dict:
    env = dict(os.environ)
    if side == "nnunet":
        env["PYTHONPATH"] = os.pathsep.join([str(ORACLE), str(ROOT)])
    command = [sys.executable, __file__, "--child", side, str(folder), str(image), str(out)]
    done = subprocess.run(
        command + (["--mirroring"] if mirroring else []), capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        sys.exit(f"{side} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_folder(
    work: Path, *, classes: int, features: int, patch: int, folds: int, stages: int = 5, most: int = 0
) -> Path:
    """A random-init PlainConvUNet folder: ``stages`` stages from ``features`` (×2 per stage, at most
    ``most``, by default ×8); ``--stages 6 --features 32 --most 320 --patch 128`` is nnU-Net's default
    3d_fullres network for a 1.5 mm CT."""
    most = most or features * 8
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from test_nnunet_predict import make_model

    from voxpipe.networks.nnunet import network_from_plans

    labels = {"background": 0, "liver": 1, "tumour": 2} if classes == 3 else {"background": 0}
    labels.update({f"class_{c}": c for c in range(1, classes) if classes != 3})
    folder = make_model(
        work / "model",
        spacing=[1.5, 1.5, 1.5],
        patch=[patch] * 3,
        schemes=["CTNormalization"],
        labels=labels,
        folds=tuple(range(folds)),
    )
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=stages,
        features_per_stage=[min(features * 2**i, most) for i in range(stages)],
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        n_conv_per_stage=[2] * stages,
        n_conv_per_stage_decoder=[2] * (stages - 1),
    )
    (folder / "plans.json").write_text(json.dumps(plans))
    for fold in range(folds):
        torch.manual_seed(fold)
        network = network_from_plans(
            plans, plans["configurations"]["3d_fullres"], input_channels=1, num_classes=classes
        )
        save_weights(folder, fold, network.state_dict())
    return folder


def save_weights(folder: Path, fold: int, weights: dict) -> None:
    import torch

    path = folder / f"fold_{fold}" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["network_weights"] = weights
    torch.save(checkpoint, path)


def train(folder: Path, work: Path, *, seconds: float, patch: int, folds: int) -> str:
    """Train the folder's network on liver phantoms, preprocessed by voxpipe's nnU-Net path (nnU-Net's
    own rules), with Dice + cross-entropy on random patches (two in three centred on foreground)."""
    import torch
    from monai.losses import DiceCELoss
    from scipy import ndimage

    from voxpipe.pipelines.inference.nnunet.model import NnUNetModel
    from voxpipe.pipelines.inference.nnunet.readers import read_case

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from infer_cpu import clinical_case

    predictor = NnUNetModel(folder)
    samples = []
    for seed in (11, 12, 13):
        image, truth = clinical_case(work / "train", seed, spacing_xy=0.8, spacing_z=2.0, slices=70)
        case = read_case([image])
        data = predictor.preprocess(case)
        label = read_case([truth]).data[0]
        box = tuple(slice(a, b) for a, b in case.properties["box"])
        label = label[box]
        zoom = [n / o for n, o in zip(data.shape[1:], label.shape, strict=True)]
        samples.append((data, ndimage.zoom(label, zoom, order=0, grid_mode=True, mode="nearest")))
    network = predictor.network.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    started, steps, last = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - started < seconds:
        images, labels = [], []
        for _ in range(2):
            data, label = samples[int(rng.integers(len(samples)))]
            shape = np.array(label.shape)
            if rng.random() < 2 / 3 and label.any():
                centre = np.argwhere(label > 0)[int(rng.integers(int((label > 0).sum())))]
            else:
                centre = rng.integers(0, shape)
            low = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
            crop = tuple(slice(int(a), int(a) + patch) for a in low)
            pad = [(0, max(patch - s, 0)) for s in shape]
            images.append(np.pad(data[(slice(None), *crop)], [(0, 0), *pad]))
            labels.append(np.pad(label[crop], pad)[None])
        x = torch.from_numpy(np.stack(images)).float()
        y = torch.from_numpy(np.stack(labels).astype(np.int64))
        optimiser.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimiser.step()
        steps, last = steps + 1, float(loss.detach())
    weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
    for fold in range(folds):
        save_weights(folder, fold, weights)
    return f"trained {steps} steps in {seconds:.0f} s (last loss {last:.3f})"


def _size(image: Path) -> str:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    reader.ReadImageInformation()
    return " x ".join(str(n) for n in reader.GetSize())


def dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    found = {}
    for value in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        x, y = a == value, b == value
        found[int(value)] = 2 * float((x & y).sum()) / max(float(x.sum() + y.sum()), 1.0)
    return found


def compare(args: argparse.Namespace) -> None:
    if not (ORACLE / "skimage").is_dir():
        sys.exit(f"the nnU-Net oracle is not installed in {ORACLE}: make oracle")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from infer_cpu import clinical_case

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.image:
            image = Path(args.image)
        else:
            image, _ = clinical_case(
                work, 100, spacing_xy=0.8, spacing_z=args.spacing_z, slices=args.slices, name="ct_0000"
            )
        classes = args.classes or 3
        folder = make_folder(
            work,
            classes=classes,
            features=args.features,
            patch=args.patch,
            folds=args.folds,
            stages=args.stages,
            most=args.most,
        )
        trained = (
            train(folder, work, seconds=args.train, patch=args.patch, folds=args.folds)
            if args.train and classes == 3
            else "random init"
        )
        print(
            f"image {image.name} ({_size(image)}); PlainConvUNet of {args.stages} stages from "
            f"{args.features} features (at most {args.most or 8 * args.features}), "
            f"{classes} classes, patch {args.patch}³, 1.5 mm, "
            f"{args.folds} fold(s), {trained}; mirroring {'on' if args.mirroring else 'off'}"
        )
        results, maps = {}, {}
        os.environ["VOXPIPE_CACHE"] = str(work / "cache")  # the OpenVINO sides convert on their first run
        for side in (args.sides or ",".join(SIDES)).split(","):
            out = work / f"{side}.npz"
            cold = run_side(side, folder, image, out, args.mirroring) if side in RUNTIME_SIDES else None
            results[side] = run_side(side, folder, image, out, args.mirroring)
            if cold is not None:  # the figures of the second run, from the cache; the first's said
                results[side]["cold"] = f"; first run with conversion {cold['seconds']:.1f} s"
            maps[side] = np.load(out)["segmentation"]
            line = f"  {side:16s} {results[side]['seconds']:7.1f} s   peak RSS {results[side]['peak_mib']:7.0f} MiB"
            if side != "nnunet" and "nnunet" in maps:
                differ = int((maps["nnunet"] != maps[side]).sum())
                dice = dice_per_class(maps["nnunet"], maps[side])
                line += (
                    f"   speed-up {results['nnunet']['seconds'] / results[side]['seconds']:.2f}x"
                    f"   RSS ratio {results[side]['peak_mib'] / results['nnunet']['peak_mib']:.2f}"
                    f"   differ {differ} of {maps[side].size}   Dice "
                    + " ".join(f"{k}:{v:.4f}" for k, v in dice.items())
                )
            if "precision" in results[side]:
                line += (
                    f"   ({results[side]['precision']}, {results[side]['skipped']} windows skipped"
                    f"{results[side].get('cold', '')})"
                )
            print(line, flush=True)


def memory(args: argparse.Namespace) -> None:
    """voxpipe's peak RSS on a 512 × 512 × 600 CT with a random-init model of ``--classes`` outputs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from infer_cpu import clinical_case

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = Path(args.phantoms) if args.phantoms else work  # the phantom takes minutes to build
        image, _ = clinical_case(cases, 300, spacing_xy=0.75, spacing_z=0.8, slices=600, name="ct_0000")
        folder = make_folder(work, classes=args.classes, features=args.features, patch=args.patch, folds=1)
        print(
            f"image 512 x 512 x 600 (0.75 x 0.75 x 0.8 mm); random-init PlainConvUNet from {args.features} "
            f"features, {args.classes} classes, patch {args.patch}³, 1.5 mm"
        )
        for side in (args.sides or "voxpipe").split(","):
            result = run_side(side, folder, image, work / f"{side}.npz", False)
            print(
                f"  {side:16s} {result['seconds']:7.1f} s   peak RSS {result['peak_mib']:7.0f} MiB",
                flush=True,
            )


def _totalseg_weights(root: Path, *, features: int, patch: int) -> None:
    """``total``'s five models of the real size in TotalSegmentator's layout, random weights."""
    import shutil

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from test_nnunet_predict import make_model
    from totalseg_weights import model_labels

    from voxpipe.networks.nnunet import network_from_plans
    from voxpipe.pipelines.inference.totalseg import tasks

    spec = tasks.task("total")
    for task_id in spec.task_ids:
        labels = model_labels(task_id)
        built = make_model(
            root / f".build{task_id}",
            spacing=[1.5, 1.5, 1.5],
            patch=[patch] * 3,
            schemes=["CTNormalization"],
            labels={"background": 0, **{name: value for value, name in sorted(labels.items())}},
        )
        plans = json.loads((built / "plans.json").read_text())
        arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        arch.update(
            n_stages=6,
            features_per_stage=[min(features * 2**i, 320) for i in range(6)],
            kernel_sizes=[[3, 3, 3]] * 6,
            strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
            n_conv_per_stage=[2] * 6,
            n_conv_per_stage_decoder=[2] * 5,
        )
        (built / "plans.json").write_text(json.dumps(plans))
        torch.manual_seed(task_id)
        network = network_from_plans(
            plans, plans["configurations"]["3d_fullres"], input_channels=1, num_classes=len(labels) + 1
        )
        checkpoint_path = built / "fold_0" / "checkpoint_final.pth"
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        # (the checkpoint keeps trainer_name "nnUNetTrainer": nnU-Net finds a variant by importing every
        # trainer module, and some import timm, which the oracle cannot have beside the CPU torch)
        checkpoint.update(network_weights=network.state_dict())
        checkpoint["init_args"]["plans"] = plans
        torch.save(checkpoint, checkpoint_path)
        target = root / tasks.dataset_folder(task_id) / f"{spec.trainer}__nnUNetPlans__3d_fullres"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), str(target))
        shutil.rmtree(root / f".build{task_id}")


_WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": done.returncode, "seconds": time.perf_counter() - started, "peak_mib": peak,
                  "stderr": done.stderr[-2000:]}))
"""


def _measured(command: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the command's largest process), measured in a fresh process so that
    one side's peak is not the other's."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], env=env, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        sys.exit(f"{command[:3]} failed: {result['stderr']}")
    return result["seconds"], result["peak_mib"]


def totalseg(args: argparse.Namespace) -> None:
    """TotalSegmentator itself against ``voxpipe infer total`` (see the module docstring)."""
    import nibabel as nib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "tests"))
    from infer_cpu import clinical_case
    from totalseg_oracle import oracle_site
    from totalseg_weights import write_config

    site = oracle_site()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image, _ = clinical_case(work, 100, spacing_xy=0.8, spacing_z=1.5, slices=args.slices, name="ct")
        weights, home = work / "weights", work / "home"
        _totalseg_weights(weights, features=args.features, patch=args.patch)
        write_config(home)
        print(
            f"image {image.name} ({_size(image)}); total: 5 PlainConvUNets of 6 stages from {args.features} "
            f"features, patch {args.patch}³, 1.5 mm, random weights; device cpu"
        )
        env = {
            **os.environ,
            "TOTALSEG_HOME_DIR": str(home),
            "TOTALSEG_WEIGHTS_PATH": str(weights),
            "HOME": str(home),
        }
        jobs = work / "jobs.json"
        jobs.write_text(
            json.dumps(
                [
                    {
                        "input": str(image),
                        "output": str(work / "ts.nii.gz"),
                        "task": "total",
                        "options": {"ml": True},
                    }
                ]
            )
        )
        ts_env = {**env, "PYTHONPATH": os.pathsep.join([*map(str, site), str(ROOT)])}
        command = [
            sys.executable,
            str(ROOT / "tests" / "oracles" / "totalseg_run.py"),
            str(jobs),
            str(work / "r.json"),
        ]
        ts_seconds, ts_peak = _measured(command, ts_env)
        outcome = json.loads((work / "r.json").read_text())[0]
        if not outcome["ok"]:
            sys.exit(f"TotalSegmentator failed: {outcome['error']}\n{outcome.get('trace', '')}")
        print(f"  TotalSegmentator {ts_seconds:7.1f} s   peak RSS {ts_peak:7.0f} MiB", flush=True)
        theirs = np.asarray(nib.load(work / "ts.nii.gz").dataobj)
        for side in (args.sides or "voxpipe").split(","):
            runtime = RUNTIME_SIDES.get(side, "torch")
            command = [
                str(Path(sys.executable).parent / "voxpipe"),
                "infer",
                "total",
                str(image),
                "-o",
                str(work / side),
                "--ml",
                "--device",
                "cpu",
                "--runtime",
                runtime,
            ]
            side_env = {**env, "VOXPIPE_CACHE": str(work / "cache")}  # converted models: this run's
            runs = ["cold", "warm"] if runtime != "torch" else [""]
            for run in runs:  # OpenVINO: converted (int8: calibrated) in the cold run, cached for the warm
                vp_seconds, vp_peak = _measured(command, side_env)
                ours = np.asarray(nib.load(work / side / "ct.nii.gz").dataobj)
                print(
                    f"  {side:16s} {run:4s} {vp_seconds:7.1f} s   peak RSS {vp_peak:7.0f} MiB   speed-up "
                    f"{ts_seconds / vp_seconds:.2f}x   RSS ratio {vp_peak / ts_peak:.2f}   "
                    f"differ {int((ours != theirs).sum())} of {ours.size}   {_structure_dice(ours, theirs)}",
                    flush=True,
                )


def _structure_dice(ours: np.ndarray, theirs: np.ndarray) -> str:
    """Dice per structure present in either map: the lowest, and how many are below 0.99."""
    values = list(dice_per_class(ours, theirs).values())
    if not values:
        return "no structures"
    return f"Dice per structure: min {min(values):.4f}, {sum(v < 0.99 for v in values)} of {len(values)} below 0.99"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, folder, image, out = sys.argv[2:6]
        _child(side, folder, image, out, "--mirroring" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--features", type=int, default=16, help="features of the first stage")
    parser.add_argument("--patch", type=int, default=64, help="patch edge (voxels)")
    parser.add_argument("--stages", type=int, default=5, help="stages of the network")
    parser.add_argument(
        "--most", type=int, default=0, help="most features of a stage (default 8 × --features)"
    )
    parser.add_argument("--spacing-z", type=float, default=2.0, help="slice spacing of the phantom CT (mm)")
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--train", type=float, default=240, help="seconds of training first (0: random init)")
    parser.add_argument("--mirroring", action="store_true")
    parser.add_argument("--image", help="a CT file instead of the phantom")
    parser.add_argument(
        "--sides",
        help=f"some of {','.join([*SIDES, *RUNTIME_SIDES])}, in order (default: {','.join(SIDES)}; "
        "--memory: voxpipe)",
    )
    parser.add_argument("--memory", action="store_true", help="voxpipe's peak RSS with --classes outputs")
    parser.add_argument(
        "--phantoms", help="--memory: keep the 600-slice phantom in this folder for later runs"
    )
    parser.add_argument(
        "--totalseg", action="store_true", help="TotalSegmentator itself against voxpipe infer total"
    )
    parser.add_argument(
        "--classes",
        type=int,
        help="outputs of the network (default 3, trained; 118 with --memory; others random init)",
    )
    args = parser.parse_args()
    if args.totalseg:
        totalseg(args)
    elif args.memory:
        args.classes = args.classes or 118
        memory(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
