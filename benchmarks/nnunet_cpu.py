"""nnU-Net's own predictor against voxpipe's nnU-Net path: same model folder, same CT, file to file, on the CPU.

Each side runs in its own process (peak RSS from ``VmHWM``): nnunetv2 2.8.1's ``nnUNetPredictor``
(from the oracle packages ``make oracle`` installs into ``.oracle/nnunet``; the network built by
dynamic-network-architectures and handed over with ``manual_initialization``, as
tests/oracles/nnunet_predict.py does) and ``voxpipe.pipelines.inference.nnunet_predict``. Printed per
side: seconds (reading to written label map), peak RSS, and the voxels whose label differs.

The model is a random-init PlainConvUNet folder of the real layout (two folds), sized for this
2-core CPU unless told otherwise; the CT is a 512 × 512 × N clinical-size phantom
(``voxpipe.phantoms.clinical``) or ``--image FILE``.

    python benchmarks/nnunet_cpu.py [--slices 120] [--features 16] [--patch 64] [--mirroring] [--image CT.nii.gz]
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


def _peak_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(side: str, folder: str, image: str, out: str, mirroring: bool) -> None:
    started = time.perf_counter()
    if side == "nnunet":
        subprocess_args = [folder, out, image] + (["--mirroring"] if mirroring else [])
        sys.argv = ["nnunet_predict.py", *subprocess_args]
        sys.path.insert(0, str(ROOT / "tests" / "oracles"))
        import nnunet_predict  # the oracle script: nnUNetPredictor.predict_single_npy_array

        nnunet_predict.main()
        segmentation = np.load(out)["segmentation"]
    else:
        from voxpipe.pipelines.inference.nnunet_predict import NnUNetPredictor

        predictor = NnUNetPredictor(folder, mirroring=mirroring)
        segmentation, _ = predictor.predict([image])
        np.savez_compressed(out, segmentation=segmentation)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mib": _peak_mib()}))


def run_side(side: str, folder: Path, image: Path, out: Path, mirroring: bool) -> dict:
    env = dict(os.environ)
    if side == "nnunet":
        env["PYTHONPATH"] = os.pathsep.join([str(ORACLE), str(ROOT)])
    command = [sys.executable, __file__, "--child", side, str(folder), str(image), str(out)] + (
        ["--mirroring"] if mirroring else []
    )
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{side} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, folder, image, out = sys.argv[2:6]
        _child(side, folder, image, out, "--mirroring" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument(
        "--features", type=int, default=16, help="features of the first stage (x2 per stage, at most 8x)"
    )
    parser.add_argument("--patch", type=int, default=64, help="patch edge (voxels)")
    parser.add_argument("--mirroring", action="store_true")
    parser.add_argument("--image", help="a CT file instead of the phantom")
    args = parser.parse_args()
    if not (ORACLE / "skimage").is_dir():
        sys.exit(f"the nnU-Net oracle is not installed in {ORACLE}: make oracle")
    sys.path.insert(0, str(ROOT / "tests"))
    from test_nnunet_predict import make_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.image:
            image = Path(args.image)
        else:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from infer_cpu import clinical_case

            image, _ = clinical_case(
                work, 100, spacing_xy=0.8, spacing_z=2.0, slices=args.slices, name="ct_0000"
            )
        features = [min(args.features * 2**i, args.features * 8) for i in range(5)]
        folder = make_model(
            work / "model",
            spacing=[1.5, 1.5, 1.5],
            patch=[args.patch] * 3,
            schemes=["CTNormalization"],
            labels={"background": 0, "liver": 1, "tumour": 2},
            folds=(0, 1),
        )
        plans = json.loads((folder / "plans.json").read_text())
        arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        arch.update(
            n_stages=5,
            features_per_stage=features,
            kernel_sizes=[[3, 3, 3]] * 5,
            strides=[[1, 1, 1]] + [[2, 2, 2]] * 4,
            n_conv_per_stage=[2] * 5,
            n_conv_per_stage_decoder=[2] * 4,
        )
        (folder / "plans.json").write_text(json.dumps(plans))
        import torch

        from voxpipe.networks.nnunet import network_from_plans

        for fold in (0, 1):  # weights of the resized network
            torch.manual_seed(fold)
            network = network_from_plans(
                plans, plans["configurations"]["3d_fullres"], input_channels=1, num_classes=3
            )
            path = folder / f"fold_{fold}" / "checkpoint_final.pth"
            checkpoint = torch.load(path, weights_only=False)
            checkpoint["network_weights"] = network.state_dict()
            torch.save(checkpoint, path)
        print(
            f"image {image.name}; random-init PlainConvUNet {features}, patch {args.patch}³, 1.5 mm, 2 folds, "
            f"mirroring {'on' if args.mirroring else 'off'}"
        )
        results, maps = {}, {}
        for side in ("nnunet", "voxpipe"):
            out = work / f"{side}.npz"
            results[side] = run_side(side, folder, image, out, args.mirroring)
            maps[side] = np.load(out)["segmentation"]
            print(
                f"  {side:8s} {results[side]['seconds']:7.1f} s   peak RSS {results[side]['peak_mib']:7.0f} MiB"
            )
        differ = int((maps["nnunet"] != maps["voxpipe"]).sum())
        print(
            f"speed-up {results['nnunet']['seconds'] / results['voxpipe']['seconds']:.2f}x, "
            f"peak RSS ratio {results['voxpipe']['peak_mib'] / results['nnunet']['peak_mib']:.2f}, "
            f"voxels differing {differ} of {maps['nnunet'].size}"
        )


if __name__ == "__main__":
    main()
