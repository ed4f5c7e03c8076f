"""``voxpipe data ...``: convert, list DICOM series, check, split, fingerprint and download datasets.

:func:`voxpipe.cli.main.build_parser` calls :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_convert(args: argparse.Namespace) -> int:
    from voxpipe.transforms.io import load_volume, write_volume

    volume = load_volume(args.input, label=args.label, series_uid=args.series)
    out = write_volume(volume.array, volume.affine, args.output)
    spacing = " × ".join(f"{s:.4g}" for s in volume.spacing)
    print(
        f"wrote {out}: {' × '.join(map(str, volume.array.shape))} voxels, {spacing} mm, {volume.array.dtype}"
    )
    return 0


def _cmd_series(args: argparse.Namespace) -> int:
    from voxpipe.transforms.dicom import discover_series

    series = discover_series(args.folder)
    if args.json:
        print(
            json.dumps(
                [
                    {"uid": s.uid, "modality": s.modality, "description": s.description, "slices": s.n_slices}
                    for s in series
                ],
                indent=2,
            )
        )
    else:
        print(f"{'SeriesInstanceUID':<64} {'mod':4s} {'slices':>6}  description")
        for s in series:
            print(f"{s.uid:<64} {s.modality:4s} {s.n_slices:>6}  {s.description}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.data.check import check_dataset, write_report

    labels = [int(v) for v in args.labels.split(",")] if args.labels else None
    report = check_dataset(
        args.dataset,
        layout=args.layout,
        modality=args.modality,
        labels=labels,
        tolerance_mm=args.tolerance,
        progress=not args.no_progress,
    )
    print(report.table())
    if args.json:
        print(f"wrote {write_report(report, args.json)}")
    return 0 if report.ok else 2


def _cmd_split(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.data.datalists import load_datalist
    from voxpipe.pipelines.data.splits import make_split, save_split

    split = make_split(
        load_datalist(args.dataset, layout=args.layout),
        val=args.val,
        test=args.test,
        folds=args.folds,
        seed=args.seed,
        group_key=args.group_by,
    )
    path = save_split(split, args.output)
    if "folds" in split:
        sizes = ", ".join(
            f"fold {k}: {len(f['train'])}/{len(f['val'])}" for k, f in enumerate(split["folds"])
        )
        print(f"wrote {path}: {len(split['folds'])} folds (train/val {sizes}), test {len(split['test'])}")
    else:
        print(
            f"wrote {path}: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])}"
        )
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.data.fingerprint import compute_fingerprint, save_fingerprint

    fingerprint = compute_fingerprint(args.dataset, progress=not args.no_progress)
    path = save_fingerprint(fingerprint, args.output)
    intensity = fingerprint["foreground_intensity"]
    print(
        f"{fingerprint['n_cases']} cases; median spacing {fingerprint['spacing']['median']} mm; "
        f"foreground intensity 0.5–99.5%: {intensity['percentile_00_5']:.1f}..{intensity['percentile_99_5']:.1f}; "
        f"suggested spacing {fingerprint['suggested']['spacing']} mm"
    )
    print(f"wrote {path}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from voxpipe.pipelines.data.download import download_msd

    target = download_msd(
        args.task,
        args.output,
        url=args.url,
        md5=args.md5,
        keep_archive=args.keep_archive,
        progress=not args.no_progress,
    )
    print(f"{args.task} is in {target}")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``voxpipe data`` and its actions on the top-level subparsers."""
    data = commands.add_parser(
        "data", help="datasets: convert, DICOM series, check, split, fingerprint, download"
    )
    actions = data.add_subparsers(dest="data_action", required=True, metavar="ACTION")

    convert = actions.add_parser(
        "convert",
        help="DICOM series folder / NRRD / MHA / NIfTI → NIfTI, NRRD or MHA",
        description="Load with voxpipe's checked readers (DICOM geometry validated) and write atomically.",
    )
    convert.add_argument("input", help="image file or DICOM folder")
    convert.add_argument("-o", "--output", required=True, help="output file (.nii.gz, .nii, .nrrd or .mha)")
    convert.add_argument(
        "--series", help="SeriesInstanceUID when the folder holds several series (default: most slices)"
    )
    convert.add_argument(
        "--label",
        action="store_true",
        help="the input is a label map: check integral values, store as integers",
    )
    convert.set_defaults(func=_cmd_convert)

    series = actions.add_parser(
        "series", help="list the DICOM series under a folder (UID, modality, slices, description)"
    )
    series.add_argument("folder")
    series.add_argument("--json", action="store_true", help="print JSON instead of a table")
    series.set_defaults(func=_cmd_series)

    check = actions.add_parser(
        "check",
        help="read every case and report all problems; exit 2 on any error",
        description="Checks: missing files and pairs, unreadable files, image/label shape, spacing, "
        "origin and direction, label values vs dataset.json, non-integral labels, NaN/Inf, "
        "empty labels (warning), HU range for CT, duplicate cases.",
    )
    check.add_argument(
        "dataset", help="MSD folder (dataset.json), LiTS folder, folder with images/ + labels/, or CSV"
    )
    check.add_argument("--json", help="also write the report as JSON here")
    check.add_argument(
        "--layout",
        choices=["msd", "nnunet", "lits", "folder", "csv"],
        help="force a layout (default: detected)",
    )
    check.add_argument(
        "--modality", help="CT enables the HU-range check (default: from dataset.json; LiTS is CT)"
    )
    check.add_argument("--labels", help="allowed label values, e.g. 0,1,2 (default: dataset.json labels)")
    check.add_argument(
        "--tolerance", type=float, default=1e-3, help="image/label geometry tolerance in mm (default: 0.001)"
    )
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_cmd_check)

    split = actions.add_parser(
        "split", help="seeded train/val/test or k-fold split, grouped by patient, saved as JSON"
    )
    split.add_argument("dataset", help="dataset folder or CSV")
    split.add_argument(
        "-o", "--output", required=True, help="split JSON to write (training reads it: --set split_file=...)"
    )
    split.add_argument("--val", type=float, default=0.2, help="validation fraction (default: 0.2)")
    split.add_argument("--test", type=float, default=0.0, help="held-out test fraction (default: 0)")
    split.add_argument(
        "--folds", type=int, help="k-fold cross-validation over the non-test cases instead of --val"
    )
    split.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    split.add_argument(
        "--group-by",
        default="patient",
        help="entry key grouping cases, e.g. a CSV 'patient' column (default: patient)",
    )
    split.add_argument(
        "--layout",
        choices=["msd", "nnunet", "lits", "folder", "csv"],
        help="force a layout (default: detected)",
    )
    split.set_defaults(func=_cmd_split)

    fingerprint = actions.add_parser(
        "fingerprint", help="spacing, sizes, foreground intensity percentiles, label volumes → JSON"
    )
    fingerprint.add_argument("dataset", help="dataset folder or CSV")
    fingerprint.add_argument("-o", "--output", required=True, help="fingerprint JSON to write")
    fingerprint.add_argument("--no-progress", action="store_true", help="no progress bar")
    fingerprint.set_defaults(func=_cmd_fingerprint)

    download = actions.add_parser(
        "download",
        help="download and verify an MSD archive (any of the ten tasks, Task01_BrainTumour ... Task10_Colon)",
    )
    download.add_argument(
        "task", help="an MSD task name, e.g. Task03_Liver, Task05_Prostate, Task01_BrainTumour"
    )
    download.add_argument("-o", "--output", default="data", help="parent folder (default: data)")
    download.add_argument("--url", help="archive URL override (mirror or file:// path)")
    download.add_argument("--md5", help="expected MD5 override")
    download.add_argument("--keep-archive", action="store_true", help="keep the .tar after extraction")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(func=_cmd_download)
