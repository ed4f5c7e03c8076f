"""``voxpipe detect``: find lung nodules with a detection bundle; world-mm tables, LUNA16 candidates, DICOM-SEG.

Per scan (``<case>`` is the file name without its suffix, LUNA16's seriesuid for its ``.mhd`` files):

* ``<case>.json``: a box file (:mod:`voxpipe.transforms.boxes`) in ``world_lps`` mm, ``cccwhd``
  (centre, then extents), each box with its ``score``, ``diameter_mm`` (the mean of the three
  extents: LUNA16 boxes are cubes of the nodule's diameter), ``side`` (the patient's left or right of the
  body's midline) and, with ``--classify``, ``malignancy``;
* ``<case>.csv``: the same as a table, one row per nodule, highest score first;
* with ``--dicom-seg`` and a DICOM series input: ``<case>_nodules.dcm``, one segment per nodule above
  the bundle's ``seg_score_threshold`` (a sphere of the estimated diameter) on the series' grid.

For the run: ``candidates.csv`` (LUNA16's ``seriesuid,coordX,coordY,coordZ,probability``, world mm LPS),
which ``voxpipe evaluate-detections`` scores, and ``detections.json`` (what was run, with which
settings). Coordinates are LPS because LUNA16's are: the ``.mhd`` files' ITK physical space.

Inference: MONAI's ``RetinaNetDetector`` with its sliding-window inferer (maps stitched on the CPU)
on the bundle's grid; the boxes go back to world mm through that grid's affine, so they land in the
input's physical space whatever its orientation. Test-time augmentation flips the scan along every
combination of axes (8 views) and merges the views' boxes by weighted box clustering (nnDetection's
rule; :func:`voxpipe.transforms.boxes.weighted_box_clustering`) or by MONAI's NMS.

``--classify BUNDLE`` chains a nodule classifier (:mod:`voxpipe.pipelines.inference.classify`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.cases import run_cases
from voxpipe.pipelines.inference.classify import NoduleClassifier
from voxpipe.pipelines.training.detection import detect_boxes
from voxpipe.transforms.boxes import (
    meta_affine,
    points_to_voxel,
    points_to_world,
    voxel_boxes_to_world,
    weighted_box_clustering,
    write_boxes_json,
)
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import case_id, read_geometry, save_nifti

logger = logging.getLogger(__name__)

MERGES = ("wbc", "nms")
CANDIDATES = "candidates.csv"
BODY_HU = -500.0  # the body is what is denser than this (for the midline)


def _views() -> list[tuple[int, ...]]:
    return [tuple(a for a in range(3) if mask >> a & 1) for mask in range(8)]


def detect_scan(
    detector: Any,
    image: Any,
    *,
    device: str | torch.device,
    tta: bool = False,
    merge: str = "wbc",
    merge_iou: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes on the preprocessed grid (voxel ``xyzxyz``) and scores; with ``tta``, 8 flipped views merged."""
    if merge not in MERGES:
        raise InputError(f"tta_merge: expected one of {', '.join(MERGES)}, found {merge!r}")
    if not tta:
        return detect_boxes(detector, image, device=device)
    from monai.apps.detection.transforms.box_ops import flip_boxes
    from monai.data.box_utils import non_max_suppression

    size = tuple(int(n) for n in image.shape[1:])
    tensor = convert_to_tensor(image, track_meta=False)
    all_boxes, all_scores = [], []
    for axes in _views():
        view = torch.flip(tensor, dims=[a + 1 for a in axes]) if axes else tensor
        boxes, scores = detect_boxes(detector, view, device=device)
        if axes and len(boxes):
            boxes = np.asarray(flip_boxes(torch.as_tensor(boxes), size, flip_axes=list(axes)), dtype=float)
        all_boxes.append(boxes)
        all_scores.append(scores)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    if merge == "wbc":
        return weighted_box_clustering(boxes, scores, iou_threshold=merge_iou, n_views=len(all_boxes))
    if not len(boxes):
        return boxes, scores
    keep = (
        non_max_suppression(torch.as_tensor(boxes), torch.as_tensor(scores), nms_thresh=merge_iou)
        .cpu()
        .numpy()
    )
    return boxes[keep], scores[keep]


def _midline_x(image: Any, affine: np.ndarray, hu_window: Sequence[float] | None) -> float | None:
    """World LPS x (mm) of the middle of the body's bounding box, from the preprocessed scan (windowed to [0, 1])."""
    array = image[0].cpu().numpy() if hasattr(image, "cpu") else np.asarray(image)[0]
    threshold = 0.5 if hu_window is None else (BODY_HU - hu_window[0]) / (hu_window[1] - hu_window[0])
    body = np.argwhere(array > threshold)
    if not len(body):
        return None
    centre = (body.min(axis=0) + body.max(axis=0)) / 2
    return float(points_to_world(centre, affine, space="world_lps")[0, 0])


def _rows(uid: str, boxes: np.ndarray, scores: np.ndarray, midline: float | None) -> list[dict[str, Any]]:
    """One record per box (world LPS xyzxyz), highest score first."""
    order = np.argsort(-scores, kind="stable")
    rows = []
    for rank, k in enumerate(order, start=1):
        box = boxes[k]
        centre, extent = (box[:3] + box[3:]) / 2, box[3:] - box[:3]
        side = (
            None if midline is None else ("left" if centre[0] > midline else "right")
        )  # LPS: +x is the patient's left
        rows.append(
            {
                "seriesuid": uid,
                "rank": rank,
                "box": box,
                "centre": centre,
                "extent": extent,
                "diameter_mm": float(extent.mean()),
                "score": float(scores[k]),
                "side": side,
            }
        )
    return rows


TABLE_COLUMNS = (
    "rank",
    "coordX",
    "coordY",
    "coordZ",
    "extent_x_mm",
    "extent_y_mm",
    "extent_z_mm",
    "diameter_mm",
    "score",
    "side",
    "malignancy",
)


def write_case(
    out_dir: Path, case: str, rows: Sequence[Mapping[str, Any]], *, image: str
) -> tuple[Path, Path]:
    """``<case>.json`` (box file, world_lps cccwhd) and ``<case>.csv`` (the readable table), atomically."""
    boxes = np.asarray([r["box"] for r in rows], dtype=float).reshape(-1, 6)
    extra = [
        {
            "rank": r["rank"],
            "diameter_mm": round(r["diameter_mm"], 3),
            "side": r["side"],
            **({"malignancy": round(r["malignancy"], 4)} if r.get("malignancy") is not None else {}),
        }
        for r in rows
    ]
    json_path = write_boxes_json(
        out_dir / f"{case}.json",
        boxes,
        space="world_lps",
        mode="cccwhd",
        labels=[1] * len(rows),
        scores=[r["score"] for r in rows],
        image=image,
        extra=extra,
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(TABLE_COLUMNS)
    for r in rows:
        malignancy = r.get("malignancy")
        writer.writerow(
            [
                r["rank"],
                *(f"{v:.2f}" for v in r["centre"]),
                *(f"{v:.2f}" for v in r["extent"]),
                f"{r['diameter_mm']:.1f}",
                f"{r['score']:.4f}",
                r["side"] or "",
                "" if malignancy is None else f"{malignancy:.4f}",
            ]
        )
    return json_path, write_text_atomic(out_dir / f"{case}.csv", buffer.getvalue())


def read_case(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A ``<case>.json`` written by :func:`write_case` → its records (world LPS boxes), in rank order."""
    from voxpipe.transforms.boxes import read_boxes_json

    boxes, space, items = read_boxes_json(path)
    if space != "world_lps":
        raise InputError(f"{str(path)!r}: expected boxes in world_lps, found {space}")
    rows = []
    for box, item in zip(boxes, items, strict=True):
        centre, extent = (box[:3] + box[3:]) / 2, box[3:] - box[:3]
        rows.append(
            {
                "seriesuid": Path(path).stem,
                "rank": item.get("rank"),
                "box": box,
                "centre": centre,
                "extent": extent,
                "diameter_mm": float(item.get("diameter_mm", extent.mean())),
                "score": float(item.get("score", 0.0)),
                "side": item.get("side"),
                "malignancy": item.get("malignancy"),
            }
        )
    return rows


def write_candidates(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """The run's LUNA16 candidate list: ``seriesuid,coordX,coordY,coordZ,probability`` (world mm, LPS)."""
    lines = ["seriesuid,coordX,coordY,coordZ,probability\n"]
    lines += [
        f"{r['seriesuid']},{r['centre'][0]:.4f},{r['centre'][1]:.4f},{r['centre'][2]:.4f},{r['score']:.6f}\n"
        for r in rows
    ]
    return write_text_atomic(out_dir / CANDIDATES, "".join(lines))


def nodule_label_map(
    rows: Sequence[Mapping[str, Any]], shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Spheres of each record's diameter at its world centre, on the grid ``(shape, affine)``; nodule k → value k."""
    label = np.zeros(tuple(shape), dtype=np.uint8)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for value, row in enumerate(rows, start=1):
        centre = points_to_voxel(np.asarray(row["centre"]), affine, space="world_lps")[0]
        radius = max(row["diameter_mm"] / 2, float(spacing.max()) / 2)
        reach = np.ceil(radius / spacing).astype(int) + 1  # the sphere's box; only it is measured
        low = np.clip(np.floor(centre).astype(int) - reach, 0, label.shape)
        high = np.clip(np.ceil(centre).astype(int) + reach + 1, 0, label.shape)
        if np.any(high <= low):
            continue  # centred outside the grid by more than its radius
        grid = np.indices(tuple(high - low), sparse=True)
        offset = [g + lo - c for g, lo, c in zip(grid, low, centre, strict=True)]
        world = [
            sum(affine[i, j] * offset[j] for j in range(3)) for i in range(3)
        ]  # mm through the affine: oblique too
        inside = (world[0] ** 2 + world[1] ** 2 + world[2] ** 2) <= radius**2
        block = label[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
        block[inside & (block == 0)] = value
    return label


def _preprocess(preprocessing: Any, image: str) -> dict[str, Any]:
    """The bundle's transforms on one scan; a scan they cannot take is that scan's error (:class:`InputError`).

    MONAI wraps what a transform raises ("applying transform ..."); the cause is unwrapped, so a
    truncated file or NaN voxels fail that scan, named, and the others still run.
    """
    from voxpipe.errors import VoxpipeError
    from voxpipe.pipelines.bundles.run import innermost_error

    try:
        return preprocessing({"image": image})
    except Exception as error:  # a transform failing on this input: the input's problem, reported per scan
        root = innermost_error(error)
        if isinstance(root, VoxpipeError):
            raise InputError(str(root)) from error
        raise InputError(
            f"{image!r}: the bundle's preprocessing failed ({type(root).__name__}: {str(root).splitlines()[0]})"
        ) from error


def _case_name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("seriesuid") or case_id(entry["image"]))


def run_detection(
    *,
    detector: Any,
    network: torch.nn.Module,
    checkpoint: str | os.PathLike[str],
    preprocessing: Any,
    datalist: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    hu_window: Sequence[float] | None = None,
    tta: bool = False,
    tta_merge: str = "wbc",
    tta_merge_iou: float = 0.1,
    min_score: float = 0.0,
    dicom_seg: bool = False,
    seg_score_threshold: float = 0.5,
    resume: bool = False,
) -> dict[str, Any]:
    """Detect nodules in every scan of ``datalist`` (entries with ``image``); the inference config's ``run``.

    The network and its weights are loaded once; the scans run through the inference engine's case
    loop (:func:`voxpipe.pipelines.inference.engine.run_cases`: the next scan is loaded and resampled
    while the detector runs on this one). Cases that fail are logged and listed (``failures``) after
    every other case was written; the candidate list holds the cases that finished. Returns
    ``{"cases", "failures", "candidates"}``.
    """
    from voxpipe.networks.transfer import read_state_dict

    out_dir = Path(output_dir)
    try:
        network.load_state_dict(read_state_dict(checkpoint))
    except RuntimeError as error:
        raise InputError(
            f"{str(checkpoint)!r}: expected weights of this bundle's detection network, found others "
            f"({str(error).splitlines()[0]})"
        ) from None
    from voxpipe.pipelines.inference.engine import EngineStats

    stats = EngineStats(builds=1, weight_loads=1)  # the bundle built the detector; the scans reuse it
    detector.eval()
    all_rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    finished: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    pending = []
    for entry in datalist:
        case = _case_name(entry)
        done = out_dir / f"{case}.json"
        if resume and done.is_file():
            finished[case] = read_case(done)
        else:
            pending.append(entry)

    def detect(prepared: tuple[Mapping[str, Any], dict[str, Any]]) -> None:
        entry, item = prepared
        case = _case_name(entry)
        image = item["image"]
        affine = meta_affine(image)
        boxes, scores = detect_scan(
            detector, image, device=device, tta=tta, merge=tta_merge, merge_iou=tta_merge_iou
        )
        keep = scores >= min_score
        world = voxel_boxes_to_world(boxes[keep], affine, space="world_lps")
        rows = _rows(case, world, scores[keep], _midline_x(image, affine, hu_window))
        if dicom_seg:
            _write_seg(
                Path(entry["image"]), out_dir, case, [r for r in rows if r["score"] >= seg_score_threshold]
            )
        write_case(out_dir, case, rows, image=str(entry["image"]))
        finished[case] = rows
        stats.cases += 1
        logger.info(
            "%s: %d candidates (%d with score >= 0.5)", case, len(rows), sum(r["score"] >= 0.5 for r in rows)
        )

    results = run_cases(
        pending, prepare=lambda entry: (entry, _preprocess(preprocessing, entry["image"])), execute=detect
    )
    for result in results:
        if not result.ok:
            failures[_case_name(result.case)] = result.reason
            logger.error("%s: skipped (%s)", result.case["image"], result.reason)
    cases = [_case_name(e) for e in datalist if _case_name(e) in finished]
    for case in cases:
        all_rows += finished[case]
    candidates = write_candidates(out_dir, all_rows)
    summary = {
        "cases": cases,
        "failures": failures,
        "candidates": str(candidates),
        "checkpoint": str(checkpoint),
        "tta": bool(tta),
        "tta_merge": tta_merge if tta else None,
        "min_score": min_score,
        "coordinates": "world mm, LPS (ITK/DICOM/LUNA16 physical space); boxes cccwhd",
        "seconds": round(time.perf_counter() - started, 3),
        "engine": {"builds": stats.builds, "weight_loads": stats.weight_loads, "cases": stats.cases},
    }
    write_text_atomic(out_dir / "detections.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_seg(source: Path, out_dir: Path, case: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """``<case>_nodules.dcm`` for a DICOM series input; a NIfTI ``<case>_nodules.nii.gz`` beside it either way."""
    shape, affine = read_geometry(source)
    label = nodule_label_map(rows, shape, affine)
    save_nifti(label, affine, out_dir / f"{case}_nodules.nii.gz")
    if source.is_dir() and rows:
        from voxpipe.transforms.dicom_seg import write_dicom_seg

        write_dicom_seg(
            label,
            source,
            out_dir / f"{case}_nodules.dcm",
            names={k: f"nodule {k}" for k in range(1, len(rows) + 1)},
        )


def classify_outputs(
    classifier: NoduleClassifier,
    output_dir: str | os.PathLike[str],
    images: Mapping[str, str],
    *,
    top: int = 20,
) -> dict[str, str]:
    """Add ``malignancy`` to the ``top`` candidates of every ``<case>.json``/``.csv`` of a detection run; failures by case.

    The others keep an empty malignancy: LUNA16-style candidate lists run to 100 per scan, and a
    reader looks at the first few.
    """
    out_dir = Path(output_dir)
    failures: dict[str, str] = {}
    for case, image in images.items():
        path = out_dir / f"{case}.json"
        if not path.is_file():
            continue
        try:
            rows = read_case(path)
            probabilities = classifier(image, np.asarray([r["centre"] for r in rows[:top]]))
        except InputError as error:
            failures[case] = str(error)
            logger.error("%s: not classified (%s)", case, error)
            continue
        for row, probability in zip(rows[:top], probabilities, strict=True):
            row["malignancy"] = float(probability)
        write_case(out_dir, case, rows, image=image)
    return failures


def _tabulate(rows: Sequence[Mapping[str, Any]], limit: int) -> str:
    header = (
        f"{'#':>3} {'x mm':>8} {'y mm':>8} {'z mm':>8} {'diam mm':>8} {'side':>6} {'score':>6} {'malig.':>6}"
    )
    lines = [header]
    for r in rows[:limit]:
        malignancy = "" if r.get("malignancy") is None else f"{r['malignancy']:.3f}"
        lines.append(
            f"{r['rank']:>3} {r['centre'][0]:8.1f} {r['centre'][1]:8.1f} {r['centre'][2]:8.1f} {r['diameter_mm']:8.1f} "
            f"{r['side'] or '':>6} {r['score']:6.3f} {malignancy:>6}"
        )
    return "\n".join(lines)


def case_table(output_dir: str | os.PathLike[str], case: str, *, limit: int = 10) -> str:
    """The first ``limit`` nodules of a case, as a fixed-width table (world LPS mm)."""
    return _tabulate(read_case(Path(output_dir) / f"{case}.json"), limit)


def detect_with_bundle(
    bundle_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    tta: bool | None = None,
    dicom_seg: bool = False,
    classify: str | os.PathLike[str] | None = None,
    classifier_weights: str | os.PathLike[str] | None = None,
    classify_top: int = 20,
    resume: bool = False,
    device: str | None = None,
    safe: bool = False,
) -> dict[str, Any]:
    """Run a detection bundle's inference config on images and series (module docstring); its summary.

    Raises:
        InputError: bad inputs, missing weights or anchors, a classifier that is not one (before anything runs).
        InferenceFailed: some cases failed; every other case was written first.
    """
    from voxpipe.pipelines.bundles.run import run_bundle
    from voxpipe.pipelines.inference.cases import InferenceFailed, collect_inputs
    from voxpipe.pipelines.inference.infer import weights_path

    images = collect_inputs(inputs)
    if dicom_seg:
        from voxpipe.pipelines.inference.cases import require_series

        require_series(images)
    checkpoint = weights_path(bundle_dir, weights)
    from voxpipe.runtime import select_device

    classifier_device = select_device(device) if device is not None else torch.device("cpu")
    classifier = (
        NoduleClassifier(classify, weights=classifier_weights, safe=safe, device=classifier_device)
        if classify
        else None
    )
    by_case = {case_id(p): str(p) for p in images}  # type: ignore[arg-type]
    datalist = [{"image": image, "seriesuid": case} for case, image in by_case.items()]
    values: dict[str, Any] = {
        "datalist": datalist,
        "output_dir": str(Path(output_dir).resolve()),
        "checkpoint": str(checkpoint.resolve()),
        "dicom_seg": bool(dicom_seg),
        "resume": bool(resume),
        **(overrides or {}),
    }
    if tta is not None:
        values["tta"] = bool(tta)
    if device is not None:
        values["device#preference"] = device
    workflow = run_bundle(bundle_dir, config="inference", overrides=values, safe=safe)
    [summary] = [dict(output) for output in workflow.outputs]  # run_detection's, from the one run
    failures = dict(summary["failures"])
    if classifier is not None:
        finished = {case: by_case[case] for case in summary["cases"]}
        failures.update(classify_outputs(classifier, output_dir, finished, top=classify_top))
        summary["classifier"] = classifier.source
    if failures:
        outputs = [Path(output_dir) / f"{c}.json" for c in summary["cases"] if c not in failures]
        raise InferenceFailed.of(
            failures,
            total=len(images),
            outputs=outputs,
            where=f"were written to {str(output_dir)!r}",
            noun="scans",
        )
    return summary
