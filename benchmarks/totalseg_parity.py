"""Every open TotalSegmentator task on every test case: voxpipe against TotalSegmentator 2.18.0 itself.

For each task, a weights folder of TotalSegmentator's layout with seeded networks (the task's models
and its crop models, heads fitted to intensity bands so the maps have structures:
``tests/totalseg_weights.py``), and five scans (``tests/totalseg_oracle.py``): CT phantoms stored RAS,
LPS and LAS, an anisotropic one (0.8 × 0.8 × 5 mm), and a DICOM series (compared in world space:
TotalSegmentator reads it through dicom2nifti). TotalSegmentator runs offline in a child process on
the oracle packages ``make oracle`` installs; voxpipe runs ``voxpipe infer TASK`` in this one.

Printed: a table of task × case with the voxels that differ in the multilabel map (``identical``
when none; ``both fail`` where TotalSegmentator and voxpipe both refuse the input, with the reason),
then the options (``--fast``, ``--fastest``, ``--roi-subset``, ``--body-seg``, ``--force-split``,
``--remove-small-blobs``, ``--resampling-order 3``, ``--save-lowres``, ``--statistics``) on one case.

    python benchmarks/totalseg_parity.py [--tasks total body ...] [--cases RAS LPS ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

OPTIONS = {
    # name: (task, case, TotalSegmentator's options, voxpipe's flags)
    "total --fast": ("total", "LPS", {"fast": True}, ["--fast"]),
    "total --fastest": ("total", "LAS", {"fastest": True}, ["--fastest"]),
    "total --fast --save-lowres": ("total", "RAS", {"fast": True, "save_lowres": True}, ["--fast", "--save-lowres"]),
    "total --roi-subset": ("total", "LPS", {"roi_subset": ["liver", "spleen"]}, ["--roi-subset", "liver", "spleen"]),
    "total --body-seg": ("total", "RAS", {"body_seg": True}, ["--body-seg"]),
    "total --force-split": ("total", "tall", {"force_split": True}, ["--force-split"]),
    "total --force-split (too few slices)": ("total", "anisotropic", {"force_split": True}, ["--force-split"]),
    "total --remove-small-blobs": ("total", "RAS", {"remove_small_blobs": 200.0}, ["--remove-small-blobs"]),
    "total --resampling-order 3": ("total", "LAS", {"resampling_order": 3}, ["--resampling-order", "3"]),
    "total --statistics": ("total", "RAS", {"statistics": True}, ["--statistics"]),
    "total --higher-order-resampling": ("total", "LPS", {"higher_order_resampling": True}, ["--higher-order-resampling"]),
    "total --fast --statistics": ("total", "RAS", {"fast": True, "statistics": True}, ["--fast", "--statistics"]),
    "lung_vessels --robust-crop": ("lung_vessels", "RAS", {"robust_crop": True}, ["--robust-crop"]),
    "total_mr --roi-subset": ("total_mr", "RAS", {"roi_subset": ["liver"]}, ["--roi-subset", "liver"]),
    "body --fast": ("body", "LPS", {"fast": True}, ["--fast"]),
}  # fmt: skip


def _prefer(task: str) -> list[str]:
    """Structures the crop models should find for ``task`` (its crop, or its subtask's)."""
    from voxpipe.pipelines.inference.totalseg import tasks

    if task.startswith("vertebrae_pp"):  # bodies of bone only: L1 in bone, L2 at its rim (they touch)
        return ["background"] * 4 + ["vertebrae_L2", "vertebrae_L1"]
    spec = tasks.task(task)
    names = list(spec.crop or ())
    if spec.crop_model:
        names += list(tasks.task(spec.crop_model).crop or ())
    return names + ["liver", "spleen", "lung_upper_lobe_left", "brain", "skull"]


def run_task(task: str, cases: list[str], scratch: Path, extra: dict | None = None) -> dict[str, str]:
    """``task`` on each case (or one option set): {case: outcome}."""
    import nibabel as nib
    import numpy as np
    from totalseg_oracle import (
        CASES,
        case_affine,
        differing,
        phantom_array,
        run_oracle,
        voxpipe_infer,
        write_case,
    )
    from totalseg_weights import make_weights

    from voxpipe.phantoms.dicom import write_dicom_series
    from voxpipe.pipelines.inference.totalseg import tasks

    spec = tasks.task(task)
    fine = min(spec.resample or (1.5,)) < 1.0
    weights = scratch / "weights"
    options, flags = (extra or {}).get("options", {}), (extra or {}).get("flags", [])
    make_weights(
        weights,
        task,
        patch=(32, 32, 32) if fine else (16, 16, 16),
        prefer=_prefer(task) + list(options.get("roi_subset") or []),
        fast=bool(options.get("fast")),
        fastest=bool(options.get("fastest")),
    )
    if options.get("body_seg") or options.get("roi_subset") or options.get("robust_crop"):
        for mode in ({"fast": True}, {"fastest": True}):
            try:
                make_weights(
                    weights,
                    "body" if options.get("body_seg") else task,
                    **mode,
                    prefer=_prefer(task) + list(options.get("roi_subset") or []),
                )
            except Exception:
                pass
    inputs = {}
    # vertebrae_pp numbers separate bodies (TotalSegmentator 2.18.0 itself fails on a single one)
    spine = task.startswith("vertebrae_pp")
    for index, case in enumerate(cases):
        if case == "DICOM":
            _, spacing, shape = CASES["LPS"]
            inputs[case] = scratch / "DICOM"
            write_dicom_series(
                phantom_array(shape, seed=7, spine=spine).astype(np.int16),
                case_affine("LPS", spacing, shape),
                inputs[case],
            )
        else:
            inputs[case] = write_case(scratch, case, seed=index, spine=spine)
    jobs = [
        {"input": str(inputs[c]), "output": str(scratch / "ts" / f"{c}.nii.gz"), "task": task,
         "options": {**options, "ml": True}}
        for c in cases
    ]  # fmt: skip
    started = time.perf_counter()
    outcomes = run_oracle(jobs, weights, scratch / "home", scratch)
    seconds_ts = time.perf_counter() - started
    results = {}
    started = time.perf_counter()
    for case, outcome in zip(cases, outcomes, strict=True):
        out = scratch / "voxpipe"
        code = voxpipe_infer(task, inputs[case], out, weights, *flags)
        name = inputs[case].name.replace(".nii.gz", "")
        if not outcome["ok"] and code != 0:
            results[case] = f"both fail ({outcome['error'][:60]})"
        elif not outcome["ok"]:
            results[case] = f"TotalSegmentator fails only ({outcome['error'][:80]})"
        elif code != 0:
            results[case] = "voxpipe fails only"
        else:
            ours = nib.load(out / f"{name}.nii.gz")
            theirs = nib.load(scratch / "ts" / f"{case}.nii.gz")
            labels = len(np.unique(np.asarray(ours.dataobj))) - 1
            n = differing(ours, theirs)
            results[case] = ("identical" if n == 0 else f"{n} differ") + f" ({labels} structures)"
            if options.get("statistics"):
                mine = json.loads((out / f"{name}_statistics.json").read_text())
                reference = json.loads((scratch / "ts" / "statistics.json").read_text())
                results[case] += ", statistics equal" if mine == reference else ", STATISTICS DIFFER"
    results["_seconds"] = (
        f"TotalSegmentator {seconds_ts:.0f} s, voxpipe {time.perf_counter() - started:.0f} s"
    )
    return results


def main() -> None:
    from voxpipe.pipelines.inference.totalseg.tasks import OPEN_TASKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(OPEN_TASKS))
    parser.add_argument("--cases", nargs="+", default=["RAS", "LPS", "LAS", "anisotropic", "DICOM"])
    parser.add_argument(
        "--options", nargs="*", default=list(OPTIONS), help="option sets to run (none: --options)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    table: dict[str, dict[str, str]] = {}
    print("| task | " + " | ".join(args.cases) + " | time |")
    print("|---|" + "---|" * (len(args.cases) + 1))
    for task in args.tasks:
        with tempfile.TemporaryDirectory(prefix=f"parity-{task}.") as tmp:
            try:
                table[task] = run_task(task, args.cases, Path(tmp))
            except Exception as error:  # a task that cannot be set up is reported, the others go on
                table[task] = {c: f"setup failed: {error}"[:100] for c in args.cases} | {"_seconds": ""}
        print(
            f"| {task} | "
            + " | ".join(table[task][c] for c in args.cases)
            + f" | {table[task]['_seconds']} |",
            flush=True,
        )
    print("\n| options | case | result | time |\n|---|---|---|---|")
    for name in args.options:
        task, case, options, flags = OPTIONS[name]
        with tempfile.TemporaryDirectory(prefix="parity-options.") as tmp:
            try:
                result = run_task(task, [case], Path(tmp), {"options": options, "flags": flags})
            except Exception as error:
                result = {case: f"setup failed: {error}"[:100], "_seconds": ""}
        table[name] = result
        print(f"| {name} | {case} | {result[case]} | {result['_seconds']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
