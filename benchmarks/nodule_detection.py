"""Nodule detection end to end on chest-CT phantoms: synth → train → detect [--tta] --classify → evaluate-detections.

Writes LUNA16-layout phantoms (``voxpipe synth nodules-ct``: training scans and held-out scans from
other seeds), trains ``configs/lung_nodule_ct_retinanet`` with ``voxpipe train`` (its validation CPM
selects ``models/model.pt``), trains the nodule classifier ``configs/lung_nodule_ct_densenet`` on
``voxpipe synth nodules`` patches, then on the held-out scans runs ``voxpipe detect --classify``
without and with flip TTA (weighted box clustering) and scores both with ``voxpipe
evaluate-detections`` (LUNA16 FROC, CPM, 1000-sample bootstrap CIs over scans; COCO AP at IoU 0.1
from the box files). Prints the FROC
tables, the CPMs and the stage times; every step is the CLI a user runs.

    python benchmarks/nodule_detection.py --n-train 40 --n-test 12 --epochs 60 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "voxpipe.cli", *args], capture_output=True, text=True, cwd=REPO
    )
    if done.returncode:
        raise SystemExit(f"voxpipe {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=40, help="training scans (a fifth validate)")
    parser.add_argument("--n-test", type=int, default=12, help="held-out scans")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--classifier-epochs", type=int, default=8)
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="voxpipe-detection-"))
    bundle, classifier = (
        REPO / "configs" / "lung_nodule_ct_retinanet",
        REPO / "configs" / "lung_nodule_ct_densenet",
    )
    seconds: dict[str, float] = {}

    def timed(name: str, *command: str) -> str:
        started = time.perf_counter()
        out = _run(*command)
        seconds[name] = round(time.perf_counter() - started, 1)
        return out

    train, test = work / "train", work / "test"
    timed("synth", "synth", "nodules-ct", "-o", str(train), "--n-train", str(args.n_train), "--seed", "1")
    _run("synth", "nodules-ct", "-o", str(test), "--n-train", str(args.n_test), "--seed", "2")
    run = work / "run"
    timed(
        "train detector",
        "train",
        str(bundle),
        "--set",
        f"dataset_dir={train}",
        "--set",
        f"output_dir={run}",
        "--set",
        f"max_epochs={args.epochs}",
        "--set",
        "val_interval=10",
        "--set",
        "progress=false",
        "--set",
        f"precision={args.precision}",
    )
    patches, classifier_run = work / "patches", work / "classifier"
    _run("synth", "nodules", "-o", str(patches))
    timed(
        "train classifier",
        "train",
        str(classifier),
        "--set",
        f"dataset_dir={patches}",
        "--set",
        f"output_dir={classifier_run}",
        "--set",
        f"max_epochs={args.classifier_epochs}",
        "--set",
        "progress=false",
    )
    weights = run / "models" / "model.pt"
    figures = {}
    for name, extra in (("no TTA", []), ("flip TTA + WBC", ["--tta"])):
        out = work / ("detect_tta" if extra else "detect")
        timed(
            f"detect ({name})",
            "detect",
            str(bundle),
            str(test / "images"),
            "-o",
            str(out),
            "--weights",
            str(weights),
            "--classify",
            str(classifier),
            "--classifier-weights",
            str(classifier_run / "models" / "model.pt"),
            *extra,
        )
        scored = work / ("scored_tta" if extra else "scored")
        printed = _run(
            "evaluate-detections",
            str(out / "candidates.csv"),
            str(test / "annotations.csv"),
            "--excluded",
            str(test / "annotations_excluded.csv"),
            "--seriesuids",
            str(test / "seriesuids.csv"),
            "--boxes",
            str(out),
            "-o",
            str(scored),
        )
        print(f"## {name}\n{printed}")
        figures[name] = json.loads((scored / "summary.json").read_text())
    anchors = json.loads((run / "models" / "anchors.json").read_text())
    metrics = (run / "metrics.csv").read_text().strip().splitlines()
    print(
        f"anchors {anchors['base_anchor_shapes']} x {anchors['feature_map_scales']} (mean best IoU {anchors['mean_best_iou']} "
        f"over {anchors['boxes']} training boxes)"
    )
    print(
        "validation CPM by epoch: "
        + ", ".join(
            f"{r.split(',')[0]}: {float(r.split(',')[-1]):.3f}" for r in metrics[1:] if r.split(",")[-1]
        )
    )
    for name, summary in figures.items():
        ci = summary.get("cpm_ci95", [float("nan")] * 2)
        print(
            f"held-out CPM ({name}): {summary['cpm']:.3f}  95% CI [{ci[0]:.3f}, {ci[1]:.3f}]  "
            f"({summary['scans']} scans, {summary['nodules']} nodules)"
        )
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
