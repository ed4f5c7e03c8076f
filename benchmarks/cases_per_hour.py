"""Cases per hour on a folder of clinical-size CTs: one ``voxpipe infer`` over the folder (models
loaded once, the next case read and preprocessed while the current one runs) against one
``voxpipe infer`` per case (what a shell loop over TotalSegmentator or ``nnUNetv2_predict`` per file
does: a new process, the models loaded again, nothing overlapped).

    python benchmarks/cases_per_hour.py                      # 20 CTs of 512 x 512 x 80, nnU-Net folder
    python benchmarks/cases_per_hour.py --cases 20 --slices 200 --features 16 --patch 96

The model: a random-init nnU-Net folder of the real layout (PlainConvUNet, 5 stages from
``--features``, patch ``--patch``³, 1.5 mm, one fold), so the figures weigh the network against
what surrounds it; a larger network makes the two ways closer, a smaller one further apart. The CTs:
liver phantoms in clinical geometry (0.8 × 0.8 × 1.5 mm, table and arms), int16 NIfTI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def voxpipe(*arguments: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxpipe.cli",
            "--quiet",
            "infer",
            *arguments,
            "--disable-tta",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"voxpipe infer {' '.join(arguments)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--runtime", default="torch", help="voxpipe infer --runtime for both ways")
    args = parser.parse_args()
    from infer_cpu import clinical_case
    from nnunet_cpu import make_folder

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = work / "ct"
        cases.mkdir()
        for seed in range(args.cases):
            image, _ = clinical_case(work, seed, spacing_xy=0.8, spacing_z=1.5, slices=args.slices)
            image.rename(cases / f"ct{seed:02d}_0000.nii.gz")
        folder = make_folder(work, classes=3, features=args.features, patch=args.patch, folds=1)
        runtime = ["--runtime", args.runtime]
        print(
            f"{args.cases} CTs of 512 x 512 x {args.slices} (0.8 x 0.8 x 1.5 mm); nnU-Net folder, PlainConvUNet "
            f"from {args.features} features, patch {args.patch}³; runtime {args.runtime}",
            flush=True,
        )
        if args.runtime != "torch":  # the conversion is cached before either way is timed
            voxpipe(str(folder), str(sorted(cases.iterdir())[0]), "-o", str(work / "warm"), *runtime)
        once = voxpipe(str(folder), str(cases), "-o", str(work / "once"), *runtime)
        print(
            f"  one run over the folder: {once:7.1f} s   {args.cases * 3600 / once:6.1f} cases/hour",
            flush=True,
        )
        each = 0.0
        for image in sorted(cases.iterdir()):
            each += voxpipe(str(folder), str(image), "-o", str(work / "each"), *runtime)
        print(f"  one run per case:        {each:7.1f} s   {args.cases * 3600 / each:6.1f} cases/hour")
        print(f"  {each / once:.2f}x the cases per hour in one run")


if __name__ == "__main__":
    main()
