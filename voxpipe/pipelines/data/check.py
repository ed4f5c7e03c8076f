"""Dataset integrity check: read every case and report every problem at once.

nnU-Net's ``verify_dataset_integrity`` is the model (it stops at the first failing assertion on
some checks; this one collects all). MONAI has no equivalent. Each problem names the case, the
file, a stable code and what was expected and found; ``voxpipe data check`` prints them as a table,
writes them as JSON and exits 2 when any is an error.

Codes (severity): ``missing-file``, ``missing-pair``, ``unreadable``, ``shape-mismatch``,
``spacing-mismatch``, ``origin-mismatch``, ``direction-mismatch``, ``unexpected-label``,
``non-integral-label``, ``nan-inf``, ``hu-range``, ``duplicate-case``, ``duplicate-image`` (errors);
``empty-label`` (warning: a case without foreground is legal but usually a mistake).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voxpipe.errors import InputError
from voxpipe.pipelines.data.datalists import (
    dataset_label_values,
    dataset_modality,
    detect_layout,
    load_datalist,
)
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import Volume, load_channels, load_volume

logger = logging.getLogger(__name__)

# A CT in HU has air or fat (≤ -200) and soft tissue or bone (≥ 0); raw stored values (0..4095),
# normalised [0, 1] images and MRI all fail one of these.
CT_LOW_HU, CT_HIGH_HU = -200.0, 0.0


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``"error"`` or ``"warning"``; ``code`` is stable (see module doc)."""

    case: str
    path: str
    severity: str
    code: str
    message: str


@dataclass
class CheckReport:
    """All problems of a dataset, and how many cases were read."""

    dataset: str
    layout: str
    n_cases: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def n_errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def to_json(self) -> str:
        payload = {
            "dataset": self.dataset,
            "layout": self.layout,
            "n_cases": self.n_cases,
            "n_errors": self.n_errors,
            "n_warnings": len(self.problems) - self.n_errors,
            "problems": [asdict(p) for p in self.problems],
        }
        return json.dumps(payload, indent=2) + "\n"

    def table(self) -> str:
        if not self.problems:
            return f"{self.dataset}: {self.n_cases} cases, no problems"
        width = max(len(p.case) for p in self.problems)
        rows = [f"{'case':{width}s}  {'severity':8s} {'code':20s} message"]
        rows += [f"{p.case:{width}s}  {p.severity:8s} {p.code:20s} {p.message}" for p in self.problems]
        rows.append(
            f"{self.dataset}: {self.n_cases} cases, {self.n_errors} errors, {len(self.problems) - self.n_errors} warnings"
        )
        return "\n".join(rows)


def _dataset_info(source: Path, layout: str) -> tuple[set[int] | None, str | None]:
    """Allowed label values and modality from an MSD dataset.json (None when unknown)."""
    manifest = source / "dataset.json" if source.is_dir() else source
    if layout == "lits":
        return {0, 1, 2}, "CT"
    if layout != "msd" or not manifest.is_file():
        return None, None
    try:
        info = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{str(manifest)!r}: could not read dataset.json ({error})") from error
    labels = set(dataset_label_values(info, source=manifest)) or None
    modalities = dataset_modality(info)
    return labels, ("CT" if modalities == ["CT"] else (modalities[0] if modalities else None))


def check_dataset(
    source: str | os.PathLike[str],
    *,
    layout: str | None = None,
    modality: str | None = None,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 1e-3,
    progress: bool = False,
) -> CheckReport:
    """Read every image and label of a dataset and collect every problem.

    Args:
        source: dataset folder, MSD ``dataset.json`` or CSV (see :func:`voxpipe.pipelines.data.datalists.load_datalist`).
        layout: force a layout instead of detecting it.
        modality: ``"CT"`` enables the HU-range check (default: from dataset.json; LiTS is CT).
        labels: allowed label values (default: the keys of dataset.json ``labels``; LiTS {0, 1, 2}).
        tolerance_mm: largest accepted image/label difference in spacing and origin (mm); direction
            cosines are compared with the same number as an absolute tolerance.
        progress: progress bar over cases.
    """
    source = Path(source)
    layout = layout or detect_layout(source)
    entries = load_datalist(source, layout=layout, check_files=False)
    known_labels, known_modality = _dataset_info(source, layout)
    allowed = set(labels) if labels is not None else known_labels
    modality = (modality or known_modality or "").upper()
    report = CheckReport(str(source), layout, len(entries))
    add = report.problems.append
    seen_cases: dict[str, int] = {}
    seen_images: dict[str, str] = {}
    for entry in tqdm(entries, desc="checking cases", unit="case", disable=not progress):
        case = str(entry["case"])
        seen_cases[case] = seen_cases.get(case, 0) + 1
        if seen_cases[case] == 2:
            add(
                Problem(
                    case,
                    entry.get("image", ""),
                    "error",
                    "duplicate-case",
                    f"case id {case!r} is listed more than once",
                )
            )
        image = _read_image(entry.get("image"), case, add)
        label = _read(entry.get("label"), case, "label", add, label=True) if "label" in entry else None
        if entry.get("image") and "label" not in entry and layout in ("lits", "folder"):
            add(
                Problem(
                    case,
                    entry["image"],
                    "error",
                    "missing-pair",
                    "image has no label file with the same case id",
                )
            )
        if not entry.get("image") and entry.get("label"):
            add(
                Problem(
                    case,
                    entry["label"],
                    "error",
                    "missing-pair",
                    "label has no image file with the same case id",
                )
            )
        if image is not None:
            _check_image(image, case, modality, add)
            digest = hashlib.sha1(np.ascontiguousarray(image.array).tobytes()).hexdigest() + str(
                image.array.shape
            )
            if digest in seen_images:
                add(
                    Problem(
                        case,
                        str(image.path),
                        "error",
                        "duplicate-image",
                        f"voxel data identical to case {seen_images[digest]!r}",
                    )
                )
            seen_images.setdefault(digest, case)
        if label is not None:
            _check_label(label, case, allowed, add)
        if image is not None and label is not None:
            _check_geometry(image, label, case, tolerance_mm, add)
    return report


def _read_image(paths: str | list[str] | None, case: str, add: Any) -> Volume | None:
    """The case's image: one file (a 4D NIfTI is read with its channels) or one file per channel (nnU-Net)."""
    if not paths or isinstance(paths, str):
        return _read(paths, case, "image", add, label=False, channels=True)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        add(Problem(case, missing[0], "error", "missing-file", "image channel file does not exist"))
        return None
    try:
        return load_channels(paths, finite=False)
    except InputError as error:
        add(Problem(case, paths[0], "error", "unreadable", str(error)))
        return None


def _read(
    path: str | None, case: str, key: str, add: Any, *, label: bool, channels: bool = False
) -> Volume | None:
    if not path:
        return None
    if not Path(path).exists():
        add(Problem(case, path, "error", "missing-file", f"{key} file does not exist"))
        return None
    try:
        return load_volume(
            path, finite=False, channels=channels
        )  # NaN/Inf are reported below, with the other problems
    except InputError as error:
        add(Problem(case, path, "error", "unreadable", str(error)))
        return None


def _check_image(image: Volume, case: str, modality: str, add: Any) -> None:
    data = np.asarray(image.array)
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            add(Problem(case, str(image.path), "error", "nan-inf", f"image has {bad} NaN/Inf voxels"))
            data = data[np.isfinite(data)]
    if modality == "CT" and data.size:
        sample = data.reshape(-1)[:: max(1, data.size // 200_000)]
        low, high = np.percentile(sample, [0.5, 99.5])
        if low > CT_LOW_HU or high < CT_HIGH_HU:
            add(
                Problem(
                    case,
                    str(image.path),
                    "error",
                    "hu-range",
                    f"intensities {low:.4g}..{high:.4g} (0.5–99.5th percentile) are implausible for CT in HU; "
                    f"expected air/fat below {CT_LOW_HU:g} and tissue above {CT_HIGH_HU:g} (missing RescaleIntercept? already normalised?)",
                )
            )


def _check_label(label: Volume, case: str, allowed: set[int] | None, add: Any) -> None:
    data = np.asarray(label.array)
    path = str(label.path)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            add(Problem(case, path, "error", "nan-inf", f"label has {int((~finite).sum())} NaN/Inf voxels"))
            data = np.where(finite, data, 0)
        fractional = data != np.round(data)
        if fractional.any():
            add(
                Problem(
                    case,
                    path,
                    "error",
                    "non-integral-label",
                    f"{int(fractional.sum())} label voxels are not integers (e.g. {float(data[fractional].flat[0]):g})",
                )
            )
            data = np.round(data)
    values = set(int(v) for v in np.unique(data))
    if allowed is not None and values - allowed:
        add(
            Problem(
                case,
                path,
                "error",
                "unexpected-label",
                f"label values {sorted(values - allowed)} not in dataset labels {sorted(allowed)}",
            )
        )
    if values <= {0}:
        add(Problem(case, path, "warning", "empty-label", "label map has no foreground"))


def _check_geometry(image: Volume, label: Volume, case: str, tol: float, add: Any) -> None:
    path = str(label.path)
    spatial = image.array.shape[-3:]  # a multi-channel image is (C, X, Y, Z)
    if spatial != label.array.shape:
        add(
            Problem(
                case,
                path,
                "error",
                "shape-mismatch",
                f"label shape {label.array.shape} differs from image shape {spatial}",
            )
        )
    spacing_i, spacing_l = np.asarray(image.spacing), np.asarray(label.spacing)
    if np.abs(spacing_i - spacing_l).max() > tol:
        add(
            Problem(
                case,
                path,
                "error",
                "spacing-mismatch",
                f"label spacing {np.round(spacing_l, 5).tolist()} mm differs from image spacing {np.round(spacing_i, 5).tolist()} mm",
            )
        )
    origin_diff = float(np.abs(image.affine[:3, 3] - label.affine[:3, 3]).max())
    if origin_diff > tol:
        add(
            Problem(
                case,
                path,
                "error",
                "origin-mismatch",
                f"label origin differs from the image origin by {origin_diff:.4g} mm",
            )
        )
    direction_i = image.affine[:3, :3] / spacing_i
    direction_l = label.affine[:3, :3] / spacing_l
    if np.abs(direction_i - direction_l).max() > tol:
        add(
            Problem(
                case,
                path,
                "error",
                "direction-mismatch",
                f"label direction {np.round(direction_l, 4).tolist()} differs from image direction {np.round(direction_i, 4).tolist()}",
            )
        )


def write_report(report: CheckReport, path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON (atomically)."""
    return write_text_atomic(path, report.to_json())
