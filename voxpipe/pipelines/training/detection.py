"""Nodule detection training: LUNA16-layout datalists, anchors planned from the boxes, Ignite steps and a CPM metric.

The parts a detection bundle's ``train.yaml`` composes around :func:`build_trainer` (which attaches
resume, the NaN guard, the schedule, validation, best and final weights, TensorBoard and progress as
for segmentation):

* :func:`detection_datalist`: a LUNA16-style folder (``images/<seriesuid>.mha|.mhd|.nii.gz`` or
  ``subset*/``, ``annotations.csv`` with world-mm LPS centres and diameters) → one entry per scan
  with its boxes in world mm (``world_lps``, ``xyzxyz``: the cube of the nodule's diameter, as
  nnDetection and MONAI's LUNA16 tutorial read the CSV). **Scans without a nodule are kept** (empty
  box arrays): they train as negatives.
* :func:`plan_anchors`: the anchor shapes, chosen from the training boxes and written to
  ``models/anchors.json`` beside the weights (the inference config reads them back with
  :func:`read_anchors`). The rule, in the spirit of nnDetection's anchor planning: the finest level's
  anchors are ``base × 1`` and level ``l`` has ``base × feature_map_scales[l]``; among the box sizes
  divided by each scale, greedily pick the shapes that most raise the mean best IoU between each box
  and its best-fitting anchor (centred boxes). The file gives that IoU, so the choice is explained.
* :class:`DetectionTrainStep`, the trainer's ``iteration_update``: MONAI's ``RetinaNetDetector``
  computes its own focal and box losses, which ``SupervisedTrainer``'s fixed ``network → loss`` step
  cannot express. A detector error on NaN/Inf logits becomes a NaN loss, so the NaN guard stops the
  run with its usual message instead of a traceback.
* :class:`DetectionValStep` and :class:`DetectionCPM`: the evaluator detects on whole validation
  scans (sliding window), converts the boxes to world mm, and scores them by the LUNA16 rules
  (:func:`voxpipe.metrics.detection.luna16_froc`); the CPM selects ``models/model.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from monai.utils import convert_to_tensor

from voxpipe.errors import InputError
from voxpipe.metrics.detection import Finding, finding_cubes, luna16_froc, read_findings
from voxpipe.pipelines.data.splits import split_part
from voxpipe.transforms.boxes import meta_affine, voxel_boxes_to_world
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import VOLUME_SUFFIXES, case_id

logger = logging.getLogger(__name__)

ANCHORS_FILE = "anchors.json"


def _scan_images(root: Path) -> dict[str, Path]:
    """seriesuid → image file, from ``images/`` or LUNA16's ``subset*/`` folders (or the folder itself)."""
    folders = (
        [root / "images"]
        if (root / "images").is_dir()
        else sorted(p for p in root.glob("subset*") if p.is_dir()) or [root]
    )
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES):
                found.setdefault(case_id(path), path)
    return found


def _box_file(path: Path, image: Path) -> np.ndarray:
    """A box file → world LPS ``xyzxyz`` boxes; ``voxel`` boxes are placed through ``image``'s grid (its header)."""
    from voxpipe.transforms.boxes import read_boxes_json
    from voxpipe.transforms.io import read_geometry

    if not path.is_file():
        return np.zeros((0, 6))
    boxes, space, _ = read_boxes_json(path)
    if space == "voxel":
        return voxel_boxes_to_world(boxes, read_geometry(image)[1], space="world_lps")
    if space == "world_ras":  # RAS → LPS negates x and y, which swaps each box's low and high corner there
        return np.stack(
            [-boxes[:, 3], -boxes[:, 4], boxes[:, 2], -boxes[:, 0], -boxes[:, 1], boxes[:, 5]], axis=1
        )
    return boxes


def read_annotations(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """LUNA16 ``annotations.csv`` → seriesuid → world LPS ``xyzxyz`` boxes (the cube of each diameter).

    Raises:
        InputError: no such file, missing columns, a cell that is not a number (with its line), or a
            diameter that is not positive (a training box needs a size).
    """
    findings = read_findings(path, value="diameter_mm")
    bad = next((f for f in findings if not f.value > 0), None)
    if bad is not None:
        raise InputError(
            f"{str(path)!r}: expected a positive diameter_mm for every nodule, found {bad.value} for "
            f"{bad.series} at ({bad.x}, {bad.y}, {bad.z})"
        )
    return finding_cubes(findings)


def detection_datalist(
    dataset: str | os.PathLike[str],
    *,
    part: str = "train",
    val_fraction: float = 0.2,
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    fold: int | None = None,
    annotations: str = "annotations.csv",
    require_annotations: bool = True,
    boxes: str = "auto",
) -> list[dict[str, Any]]:
    """Entries ``{"image", "case", "seriesuid", "box" (N, 6) world LPS xyzxyz, "label" (N,), "centres", "diameters"}``.

    ``part``: ``train`` or ``val`` (a seeded split of the scans, or ``split_file``/``fold`` from
    ``voxpipe data split``), or ``all``. Scans without annotations have empty boxes.
    ``boxes``: where the boxes come from: ``annotations`` (the CSV), ``files`` (``boxes/<seriesuid>.json``
    box files in any space and mode, :mod:`voxpipe.transforms.boxes`; a scan without a file has no
    nodule), or ``auto`` (the CSV if there is one, else the box files).

    Raises:
        InputError: no images, or no annotations file when ``require_annotations``.
    """
    root = Path(dataset)
    if not root.is_dir():
        raise InputError(
            f"{str(root)!r}: expected a detection dataset folder (images/ and annotations.csv), found no folder"
        )
    images = _scan_images(root)
    if not images:
        raise InputError(
            f"{str(root)!r}: expected scans ({', '.join(VOLUME_SUFFIXES)}) in images/ or subset*/, found none"
        )
    table, box_dir = root / annotations, root / "boxes"
    from_boxes = boxes == "files" or (boxes == "auto" and not table.is_file() and box_dir.is_dir())
    if boxes not in ("auto", "files", "annotations"):
        raise InputError(f"detection datalist boxes: expected auto, files or annotations, found {boxes!r}")
    nodules = (
        {} if from_boxes else read_annotations(table) if (require_annotations or table.is_file()) else {}
    )
    unmatched = sorted(set(nodules) - set(images))
    if unmatched:
        logger.info(
            "%s: %d annotated scans have no image here (skipped), e.g. %s",
            table,
            len(unmatched),
            unmatched[0],
        )
    entries = []
    for uid, image in images.items():
        if from_boxes:
            world = _box_file(box_dir / f"{uid}.json", image)
        else:
            world = nodules.get(uid, np.zeros((0, 6)))
        centres, extents = (world[:, :3] + world[:, 3:]) / 2, world[:, 3:] - world[:, :3]
        entries.append(
            {
                "image": str(image),
                "case": uid,
                "seriesuid": uid,
                "box": world.astype(np.float32),
                "label": np.zeros(len(world), dtype=np.int64),
                "centres": centres.tolist(),
                "diameters": extents.mean(axis=1).tolist(),
            }
        )
    if part == "all":
        return entries
    if part not in ("train", "val"):
        raise InputError(f"detection datalist part: expected train, val or all, found {part!r}")
    return split_part(
        entries, part, val_fraction=val_fraction, seed=seed, split_file=split_file, fold=fold, source=root
    )


def _centred_iou(sizes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of centred boxes: (N, 3) sizes × (M, 3) sizes → (N, M)."""
    inter = np.prod(np.minimum(sizes[:, None, :], anchors[None, :, :]), axis=2)
    return inter / (np.prod(sizes, axis=1)[:, None] + np.prod(anchors, axis=1)[None, :] - inter)


def plan_anchors(
    *,
    datalist: Sequence[Mapping[str, Any]],
    pixdim: Sequence[float],
    feature_map_scales: Sequence[int] = (1, 2, 4),
    n_shapes: int = 3,
    base_anchor_shapes: Any = "auto",
    output_dir: str | os.PathLike[str] | None = None,
) -> list[list[float]]:
    """The finest level's anchor shapes (voxels at ``pixdim``) for the training boxes (module docstring).

    ``base_anchor_shapes`` other than ``"auto"`` is used as given (and still written and scored).
    Writes ``output_dir/models/anchors.json`` when ``output_dir`` is given.

    Raises:
        InputError: ``auto`` with no box in the datalist.
    """
    spacing = np.asarray(pixdim, dtype=float)
    boxes = [np.asarray(e["box"], dtype=float).reshape(-1, 6) for e in datalist]
    world = np.concatenate(boxes) if boxes else np.zeros((0, 6))
    sizes = np.maximum((world[:, 3:] - world[:, :3]) / spacing, 1.0)
    scales = np.asarray(feature_map_scales, dtype=float)
    if isinstance(base_anchor_shapes, str):
        if base_anchor_shapes != "auto":
            raise InputError(
                f"base_anchor_shapes: expected 'auto' or a list of (x, y, z) shapes, found {base_anchor_shapes!r}"
            )
        if not len(sizes):
            raise InputError(
                "anchor planning: expected at least one annotated nodule in the training scans, found none",
                hint="check annotations.csv, or give base_anchor_shapes explicitly",
            )
        candidates = np.unique(np.round(np.concatenate([sizes / s for s in scales]), 2), axis=0)
        chosen: list[np.ndarray] = []
        for _ in range(n_shapes):
            best, best_score = None, -1.0
            for candidate in candidates:
                anchors = np.concatenate([np.asarray(chosen + [candidate]) * s for s in scales])
                score = float(_centred_iou(sizes, anchors).max(axis=1).mean())
                if score > best_score:
                    best, best_score = candidate, score
            chosen.append(best)  # type: ignore[arg-type]
        shapes = sorted(
            [[round(float(v), 2) for v in shape] for shape in chosen], key=lambda s: float(np.prod(s))
        )
        rule = (
            "greedy: the box sizes divided by each level scale are the candidates; each pick most raises the mean "
            "best IoU of the boxes with anchors base x scale (centred boxes)"
        )
    else:
        shapes = [[float(v) for v in shape] for shape in base_anchor_shapes]
        rule = "given in the config"
    anchors = np.concatenate([np.asarray(shapes) * s for s in scales])
    best_iou = _centred_iou(sizes, anchors).max(axis=1) if len(sizes) else np.zeros(0)
    summary = {
        "base_anchor_shapes": shapes,
        "feature_map_scales": [int(s) for s in feature_map_scales],
        "pixdim": [float(v) for v in spacing],
        "units": "voxels at pixdim, RAS (x, y, z); level l anchors = base x scale[l]",
        "rule": rule,
        "boxes": int(len(sizes)),
        "mean_best_iou": round(float(best_iou.mean()), 4) if len(sizes) else None,
        "boxes_with_best_iou_below_0.3": int((best_iou < 0.3).sum()),
        "box_size_voxels_min_median_max": (
            [
                np.round(sizes.min(axis=0), 2).tolist(),
                np.round(np.median(sizes, axis=0), 2).tolist(),
                np.round(sizes.max(axis=0), 2).tolist(),
            ]
            if len(sizes)
            else None
        ),
    }
    logger.info("anchors %s (mean best IoU %s over %d boxes)", shapes, summary["mean_best_iou"], len(sizes))
    if output_dir is not None:
        write_text_atomic(Path(output_dir) / "models" / ANCHORS_FILE, json.dumps(summary, indent=2) + "\n")
    return shapes


def read_anchors(*, checkpoint: str | os.PathLike[str], fallback: Any = None) -> list[list[float]]:
    """The anchor shapes trained with ``checkpoint``: ``anchors.json`` beside it, else ``fallback`` (a list).

    Raises:
        InputError: neither (names the file looked for), or a malformed file.
    """
    path = Path(checkpoint).parent / ANCHORS_FILE
    if path.is_file():
        try:
            shapes = json.loads(path.read_text())["base_anchor_shapes"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"{str(path)!r}: expected JSON with 'base_anchor_shapes', found {type(error).__name__}: {error}"
            ) from None
        return _anchor_shapes(shapes, path)
    if isinstance(fallback, (list, tuple)) and fallback:
        return [[float(v) for v in shape] for shape in fallback]
    raise InputError(
        f"{str(path)!r}: expected the anchor shapes the weights were trained with (written by training "
        "beside models/model.pt), found no file",
        hint="copy anchors.json next to the weights, or set base_anchor_shapes",
    )


def _anchor_shapes(shapes: Any, path: Path) -> list[list[float]]:
    """``base_anchor_shapes`` checked: a non-empty list of (x, y, z) sizes in voxels, each positive and finite.

    Raises:
        InputError: anything else, naming the file (not the config that read it).
    """
    problem = None
    if not isinstance(shapes, list) or not shapes:
        problem = f"found {shapes!r}"
    else:
        for shape in shapes:
            ok = isinstance(shape, list) and len(shape) == 3
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in shape)
            if not ok or not all(math.isfinite(v) and v > 0 for v in shape):
                problem = f"found the entry {shape!r}"
                break
    if problem:
        raise InputError(
            f"{str(path)!r}: base_anchor_shapes: expected a list of [x, y, z] anchor sizes in voxels (positive "
            f"numbers), {problem}"
        )
    return [[float(v) for v in shape] for shape in shapes]


def _items(batch: Any) -> list[dict[str, Any]]:
    """A ``no_collation`` batch (a list of dicts, or of lists of dicts from multi-sample crops) as one flat list."""
    flat: list[dict[str, Any]] = []
    for item in batch if isinstance(batch, list) else [batch]:
        flat.extend(_items(item) if isinstance(item, list) else [item])
    return flat


def _device(engine: Any) -> torch.device:
    """A MONAI workflow's device (kept on its state)."""
    return torch.device(getattr(engine.state, "device", None) or getattr(engine, "device", "cpu"))


class DetectionTrainStep:
    """The trainer's ``iteration_update``: one optimizer step of a ``RetinaNetDetector`` on a batch of patches.

    Items need ``image`` (C, X, Y, Z), ``box`` (N, 6) voxel ``xyzxyz`` and ``label`` (N,); N may be 0.
    Returns ``{"loss", "classification", "box_regression"}`` (float tensors) for the handlers.
    """

    def __init__(self, detector: Any, *, box_loss_weight: float = 1.0) -> None:
        self.detector, self.box_loss_weight = detector, float(box_loss_weight)

    def __call__(self, engine: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Ignite process function (engine: MONAI ``SupervisedTrainer``)."""
        import ignite.distributed as idist

        if (
            idist.get_world_size() > 1
        ):  # the detector holds the bare network: DDP would not synchronise its gradients
            raise InputError(
                "detection training: expected a single process, found a torchrun launch of "
                f"{idist.get_world_size()}",
                hint="train the detection bundle without torchrun",
            )
        items = _items(batch)
        device = _device(engine)
        images = torch.stack([convert_to_tensor(item["image"], track_meta=False) for item in items]).to(
            device
        )
        targets = [
            {
                "box": torch.as_tensor(item["box"], dtype=torch.float32).reshape(-1, 6).to(device),
                "label": torch.as_tensor(item["label"], dtype=torch.long).reshape(-1).to(device),
            }
            for item in items
        ]
        self.detector.train()
        engine.optimizer.zero_grad(set_to_none=True)
        try:
            losses = self.detector(images, targets)
        except ValueError as error:
            if "NaN or Inf" not in str(error):
                raise
            nan = torch.tensor(float("nan"))
            return {"loss": nan, "classification": nan, "box_regression": nan}
        cls_loss = losses[self.detector.cls_key]
        box_loss = losses[self.detector.box_reg_key].to(cls_loss.device)
        loss = cls_loss + self.box_loss_weight * box_loss
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        return {
            "loss": loss.detach(),
            "classification": cls_loss.detach(),
            "box_regression": box_loss.detach(),
        }


def detect_boxes(detector: Any, image: Any, *, device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window detection on one preprocessed scan (C, X, Y, Z): ``(voxel boxes (N, 6) xyzxyz, scores (N,))``."""
    tensor = convert_to_tensor(image, track_meta=False)
    detector.eval()
    with torch.no_grad():
        found = detector([tensor.to(device)], use_inferer=True)[0]
    return found["box"].float().cpu().numpy().reshape(-1, 6), found[
        "label_scores"
    ].float().cpu().numpy().reshape(-1)


def world_centres(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel boxes (N, 6) on the grid of ``affine`` → box centres (N, 3) in world mm, LPS (LUNA16's convention)."""
    world = voxel_boxes_to_world(boxes, affine, space="world_lps")
    return (world[:, :3] + world[:, 3:]) / 2


class DetectionValStep:
    """The evaluator's ``iteration_update``: detect on whole scans; candidates and truths in world mm (LPS)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def __call__(self, engine: Any, batch: Any) -> dict[str, list[Finding]]:
        """→ ``{"candidates": [Finding], "nodules": [Finding], "scans": [seriesuid]}`` for :class:`DetectionCPM`."""
        candidates, nodules, scans = [], [], []
        for item in _items(batch):
            uid = str(item["seriesuid"])
            boxes, scores = detect_boxes(self.detector, item["image"], device=_device(engine))
            for centre, score in zip(world_centres(boxes, meta_affine(item["image"])), scores, strict=True):
                candidates.append(Finding(uid, *map(float, centre), float(score)))
            for centre, diameter in zip(item["centres"], item["diameters"], strict=True):
                nodules.append(Finding(uid, *map(float, centre), float(diameter)))
            scans.append(uid)
        return {"candidates": candidates, "nodules": nodules, "scans": scans}


class DetectionCPM(Metric):
    """LUNA16 CPM (mean sensitivity at 1/8–8 FPs per scan) over the scans an evaluator saw; an Ignite metric.

    Thin adapter over :func:`voxpipe.metrics.detection.luna16_froc` (no bootstrap during training).
    A validation set without nodules gives NaN, which never counts as an improvement.
    """

    def reset(self) -> None:
        """Forget the scans seen."""
        self._candidates: list[Finding] = []
        self._nodules: list[Finding] = []
        self._scans: list[str] = []

    def iteration_completed(self, engine: Any) -> None:
        """Take the step's whole output dict (Ignite's default wants a ``(y_pred, y)`` pair)."""
        self.update(self._output_transform(engine.state.output))

    def update(self, output: Mapping[str, Any]) -> None:
        """Add one batch's ``candidates``, ``nodules`` and ``scans``."""
        self._candidates += output["candidates"]
        self._nodules += output["nodules"]
        self._scans += output["scans"]

    def compute(self) -> float:
        """The CPM of everything seen since :meth:`reset`."""
        if not self._scans:
            return float("nan")
        return float(luna16_froc(self._candidates, self._nodules, seriesuids=self._scans, n_bootstrap=0).cpm)
