"""``voxpipe annotate ingest``: take the reviewer's corrections in, keep both versions, and measure the edit.

Corrections may be 3D Slicer ``.seg.nrrd`` files (segments mapped back to label values by *name*;
overlapping segments, which Slicer allows, resolve to the higher label value: a tumour inside its organ),
DICOM-SEG (by segment label), or label-map images (NIfTI, NRRD, MHA: values as they are), one per
case, named after the case. Each must lie on the image's voxel grid: a cropped or re-oriented
lattice is placed exactly (:func:`voxpipe.transforms.io.place_on_grid`), and any other grid is
refused. As MONAI Label's datastore does, ``labels/original/<case>.nii.gz`` keeps the pre-label and
``labels/final/<case>.nii.gz`` the correction.

The edit-effort report (``edit_effort.csv``, ``.json``, ``.html``) gives, per case and structure, how far
the correction moved the pre-label. Dice and HD95 come from :mod:`voxpipe.metrics`. The report also
gives the volume added and removed (mL), lesions added, removed or changed (26-connected components;
lesion classes only), the axial slices touched, and whether the structure was accepted unchanged.
Conventions where the metrics are undefined: two empty masks have Dice 1 and HD95 0 (nothing to
edit); HD95 is empty when only one side is empty (infinite distance).
"""

from __future__ import annotations

import html
import json
import logging
import os
import statistics as stats
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from voxpipe.errors import InputError, UserError
from voxpipe.pipelines.annotation.prelabel import read_manifest
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import load_volume

logger = logging.getLogger(__name__)

CORRECTION_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_FULL = ndimage.generate_binary_structure(3, 3)


class IngestFailed(InputError):
    """Some corrections were refused; the others were ingested and are in the report. ``failures``: case → reason."""

    def __init__(self, message: str, *, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures


def _find_correction(folder: Path, case: str) -> Path | None:
    for suffix in CORRECTION_SUFFIXES:
        candidate = folder / f"{case}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_correction(
    path: Path,
    *,
    names: Mapping[int, str],
    shape: tuple[int, ...],
    affine: np.ndarray,
    series_uid: str | None = None,
) -> np.ndarray:
    """A correction file as a label map of the bundle's values on the image grid (``shape``, ``affine``).

    A DICOM-SEG must reference ``series_uid`` (the DICOM series the case was pre-labelled from, when
    it was one): a SEG of another series on the same grid (a second reconstruction, another study)
    would otherwise be ingested as this case's truth.

    Raises:
        InputError: unreadable, a segment name or label value the bundle does not have, another grid,
            or a DICOM-SEG that references another series.
    """
    from voxpipe.transforms.dicom_seg import is_dicom_seg, read_seg, seg_to_label_map
    from voxpipe.transforms.io import place_on_grid
    from voxpipe.transforms.slicer_seg import is_slicer_seg, read_slicer_segments

    by_name = {name.strip().casefold(): int(value) for value, name in names.items()}
    expected = ", ".join(f"{names[v]!r}" for v in sorted(names))

    def value_of(name: str, present: bool) -> int | None:
        """The bundle's label value for a segment name; an unknown name is refused unless its segment is empty."""
        value = by_name.get(str(name).strip().casefold())
        if value is None and present:
            raise InputError(
                f"{str(path)!r}: segment {name!r} is not a structure of this bundle; expected "
                f"segments named {expected}",
                hint="rename the segment in Slicer, or delete it",
            )
        return value  # None: an empty segment the reviewer added and left empty

    def remap(own: np.ndarray, own_names: Mapping[int, str]) -> np.ndarray:
        lookup = np.zeros(int(max(own_names, default=0)) + 1, dtype=np.uint16)
        for number, name in own_names.items():
            value = value_of(name, bool(np.any(own == number)))
            if value is not None:
                lookup[number] = value
        return lookup[own]

    if is_slicer_seg(path):
        masks, own_affine = read_slicer_segments(path)
        values = {name: value_of(name, bool(mask.any())) for name, mask in masks.items()}
        # Overlapping segments (Slicer allows them: a liver painted over its tumour) resolve by label value,
        # the higher wins: the MSD/LiTS convention of a tumour inside its organ.
        label = np.zeros(tuple(shape), dtype=np.uint16)
        known = sorted(
            ((values[n], m) for n, m in masks.items() if values[n] is not None), key=lambda item: item[0]
        )
        for value, mask in known:
            label[place_on_grid(mask.astype(np.uint8), own_affine, shape, affine, path=path) > 0] = value
        return label
    if path.suffix.lower() == ".dcm":
        if not is_dicom_seg(path):
            raise InputError(
                f"{str(path)!r}: expected a DICOM-SEG (Modality SEG), found another DICOM object or no DICOM"
            )
        seg = read_seg(path)
        if series_uid is not None and series_uid not in seg.referenced_series:
            raise InputError(
                f"{str(path)!r}: the DICOM-SEG references series {list(seg.referenced_series) or 'none'}; "
                f"expected the case's series {series_uid!r}",
                hint="export the segmentation from the series that was pre-labelled",
            )
        return remap(seg_to_label_map(seg, shape, affine), seg.labels)
    volume = load_volume(path, label=True)
    unknown = sorted(int(v) for v in np.unique(volume.array) if v and int(v) not in names)
    if unknown:
        raise InputError(
            f"{str(path)!r}: label values {unknown} are not structures of this bundle; expected values "
            f"{sorted(int(v) for v in names)} ({expected})"
        )
    return place_on_grid(volume.array.astype(np.uint16), volume.affine, shape, affine, path=path)


def structure_effort(
    original: np.ndarray, final: np.ndarray, spacing: tuple[float, float, float], *, lesions: bool
) -> dict[str, Any]:
    """How much one structure's mask changed between pre-label (``original``) and correction (``final``)."""
    from voxpipe.metrics.overlap import dice, volume_ml
    from voxpipe.metrics.surface import hausdorff, surface_distances

    o, f = np.asarray(original, dtype=bool), np.asarray(final, dtype=bool)
    both_empty = not o.any() and not f.any()
    if both_empty:
        distance: float | None = 0.0
    elif o.any() and f.any():
        distance = float(hausdorff(surface_distances(o, f, spacing), 95))
    else:
        distance = None
    differs = o != f
    row: dict[str, Any] = {
        "dice": 1.0 if both_empty else float(dice(o, f)),
        "hd95_mm": distance,
        "volume_original_ml": volume_ml(o, spacing),
        "volume_final_ml": volume_ml(f, spacing),
        "added_ml": volume_ml(f & ~o, spacing),
        "removed_ml": volume_ml(o & ~f, spacing),
        "slices_touched": int(differs.any(axis=(0, 1)).sum()),
        "unchanged": not differs.any(),
    }
    if lesions:
        row.update(lesion_edits(o, f))
    return row


def lesion_edits(original: np.ndarray, final: np.ndarray) -> dict[str, int]:
    """Lesions (26-connected components) added (in ``final`` only), removed (in ``original`` only) and
    changed (in both, but not voxel for voxel the same), plus the counts before and after."""
    o_labels, n_o = ndimage.label(original, structure=_FULL)
    f_labels, n_f = ndimage.label(final, structure=_FULL)
    added = sum(1 for k in range(1, n_f + 1) if not original[f_labels == k].any())
    removed = sum(1 for k in range(1, n_o + 1) if not final[o_labels == k].any())
    changed = 0
    for k in range(1, n_f + 1):
        component = f_labels == k
        touching = np.unique(o_labels[component])
        touching = touching[touching > 0]
        if len(touching) and not np.array_equal(np.isin(o_labels, touching), component):
            changed += 1
    return {
        "lesions_original": int(n_o),
        "lesions_final": int(n_f),
        "lesions_added": int(added),
        "lesions_removed": int(removed),
        "lesions_changed": int(changed),
    }


def ingest(workdir: str | os.PathLike[str], corrected_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Ingest every correction found for the work folder's cases and write the edit-effort report.

    Returns:
        ``{"rows": [...], "summary": {...}, "missing": [cases without a correction], "failures": {}}``.

    Raises:
        InputError: no work folder, no corrections folder, or none of its files is a case's.
        IngestFailed: some corrections were refused (their reasons); the others were ingested first.
    """
    from voxpipe.pipelines.bundles.config import find_config
    from voxpipe.transforms.io import write_label_like

    root, corrected = Path(workdir), Path(corrected_dir)
    manifest = read_manifest(root)
    if not corrected.is_dir():
        raise InputError(f"{str(corrected)!r}: expected a folder of corrected segmentations, found no folder")
    names = {int(k): v for k, v in manifest["names"].items()}
    lesion_values = _lesion_labels(find_config(manifest["bundle"], "inference"), names)
    rows, failures, missing = [], {}, []
    for case, entry in sorted(manifest["cases"].items()):
        path = _find_correction(corrected, case)
        if path is None:
            missing.append(case)
            continue
        prelabel_file = root / entry["label"]
        try:
            original = load_volume(prelabel_file, label=True)
            final = read_correction(
                path,
                names=names,
                shape=original.array.shape,
                affine=original.affine,
                series_uid=_series_uid(entry.get("image")),
            )
        except UserError as error:
            failures[case] = str(error).splitlines()[0]
            logger.error("%s: not ingested (%s)", path, failures[case])
            continue
        write_label_like(original.array, prelabel_file, root / "labels" / "original" / f"{case}.nii.gz")
        write_label_like(
            final.astype(original.array.dtype), prelabel_file, root / "labels" / "final" / f"{case}.nii.gz"
        )
        spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(original.affine)[:3, :3], axis=0))
        for value, name in sorted(names.items()):
            row = {"case": case, "structure": name, "correction": str(path)}
            row.update(
                structure_effort(
                    original.array == value, final == value, spacing, lesions=value in lesion_values
                )
            )
            rows.append(row)
        entry["correction"] = str(path.resolve())
    known = set(manifest["cases"])
    strangers = sorted(
        p.name
        for p in corrected.iterdir()
        if p.is_file()
        and not any(p.name == f"{c}{s}" for c in known for s in CORRECTION_SUFFIXES)
        and not p.name.startswith(".")
    )
    if strangers:
        logger.warning(
            "%s: files that match no case of the work folder were ignored: %s",
            corrected,
            ", ".join(strangers),
        )
    if not rows and not failures:
        raise InputError(
            f"{str(corrected)!r}: expected corrections named <case>{{{', '.join(CORRECTION_SUFFIXES)}}} for the "
            f"cases {sorted(known)}, found none"
        )
    summary = _summary(rows, names, n_cases=len({r["case"] for r in rows}), missing=missing)
    _write_report(root, rows, summary)
    write_text_atomic(root / "annotation.json", json.dumps(manifest, indent=2) + "\n")
    result = {"rows": rows, "summary": summary, "missing": missing, "failures": failures}
    if failures:
        listing = "\n  ".join(f"{case}: {reason}" for case, reason in failures.items())
        raise IngestFailed(
            f"{len(failures)} correction(s) refused (the other {summary['cases']} were ingested):\n  {listing}",
            failures=failures,
        )
    return result


def _series_uid(image: str | None) -> str | None:
    """The SeriesInstanceUID a case was pre-labelled from, when its image is a DICOM folder (the series
    voxpipe loads from it: the one with most slices); None for image files."""
    if not image or not Path(image).is_dir():
        return None
    from voxpipe.transforms.dicom import choose_series, discover_series

    try:
        return choose_series(discover_series(image), folder=image).uid
    except InputError:
        return None  # the image is gone or changed: the grid check still applies


def _lesion_labels(inference_config: Path, names: Mapping[int, str]) -> set[int]:
    """The bundle's ``lesion_labels`` (as for statistics), else the structures named like lesions."""
    from voxpipe.pipelines.bundles.config import read_config

    configured = read_config(inference_config).get("lesion_labels")
    if isinstance(configured, list) and configured:
        return {int(v) for v in configured}
    words = ("tumour", "tumor", "lesion", "nodule", "metastas")
    return {v for v, n in names.items() if any(w in n.lower() for w in words)}


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(stats.median(finite)) if finite else None


def _summary(
    rows: list[dict[str, Any]], names: Mapping[int, str], *, n_cases: int, missing: list[str]
) -> dict[str, Any]:
    cases: dict[str, bool] = {}
    for row in rows:
        cases[row["case"]] = cases.get(row["case"], True) and row["unchanged"]
    per_structure = {}
    for name in (names[v] for v in sorted(names)):
        mine = [r for r in rows if r["structure"] == name]
        per_structure[name] = {
            "median_dice": _median([r["dice"] for r in mine]),
            "median_hd95_mm": _median([r["hd95_mm"] for r in mine]),
            "median_added_ml": _median([r["added_ml"] for r in mine]),
            "median_removed_ml": _median([r["removed_ml"] for r in mine]),
            "median_slices_touched": _median([r["slices_touched"] for r in mine]),
            "accepted_unchanged": sum(r["unchanged"] for r in mine),
        }
        if mine and "lesions_added" in mine[0]:
            for key in ("lesions_added", "lesions_removed", "lesions_changed"):
                per_structure[name][key] = int(sum(r[key] for r in mine))
    unchanged = sum(cases.values())
    return {
        "cases": n_cases,
        "cases_accepted_unchanged": unchanged,
        "share_accepted_unchanged": unchanged / n_cases if n_cases else None,
        "not_corrected_yet": missing,
        "structures": per_structure,
    }


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _write_report(root: Path, rows: list[dict[str, Any]], summary: Mapping[str, Any]) -> None:
    from voxpipe.pipelines.training.handlers import rows_to_csv

    write_text_atomic(
        root / "edit_effort.csv", rows_to_csv([{k: _format(v) for k, v in row.items()} for row in rows])
    )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_text_atomic(
        root / "edit_effort.json", json.dumps({"summary": summary, "cases": rows}, indent=2) + "\n"
    )
    shown = [c for c in columns if c != "correction"]
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in shown) + "</tr>"
        for row in rows
    )
    structures = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{html.escape(_format(v))}</td>" for v in figures.values())
        + "</tr>"
        for name, figures in summary["structures"].items()
    )
    heads = next(iter(summary["structures"].values()), {})
    share = summary["share_accepted_unchanged"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>voxpipe edit effort</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;
padding:3px 7px;font-size:13px}}th{{background:#f3f3f3}}</style></head><body><h1>Edit effort</h1>
<p>{summary["cases"]} case(s) corrected; {summary["cases_accepted_unchanged"]} accepted unchanged
({"" if share is None else f"{100 * share:.0f}%"}); not corrected yet: {html.escape(", ".join(summary["not_corrected_yet"]) or "none")}.</p>
<table><tr><th>structure</th>{"".join(f"<th>{html.escape(k)}</th>" for k in heads)}</tr>{structures}</table>
<table><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in shown)}</tr>{table}</table></body></html>
"""
    write_text_atomic(root / "edit_effort.html", page)
