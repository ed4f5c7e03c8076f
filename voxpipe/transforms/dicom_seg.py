"""Read DICOM Segmentation objects (DICOM-SEG) as label maps on a given voxel grid.

Why our own: MONAI reads no DICOM-SEG, and highdicom (which does) is not a voxpipe dependency for
one read path; pydicom gives the frames and the functional groups, and what is needed on top is
small: which segment each frame belongs to, where the frame lies (ImagePositionPatient of each
frame, shared orientation and pixel spacing), and placing its pixels on the grid of the image the
SEG annotates. That placement is exact or refused: a frame must lie on the target lattice (its
rows and columns along target axes, its position on whole voxels, within 1e-2 voxel), otherwise a
:class:`~voxpipe.errors.GeometryError` names both geometries. Each segment becomes the label value
of its SegmentNumber; FRACTIONAL segmentations are thresholded at one half; voxels claimed by two
segments are an error (a label map cannot hold both).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from voxpipe.errors import GeometryError, InputError
from voxpipe.transforms.io import LPS_TO_RAS

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LATTICE_TOL = 1e-2  # voxels


@dataclass(frozen=True)
class SegFrames:
    """The frames of a DICOM-SEG: masks (n, rows, cols), their segment numbers and LPS positions."""

    path: Path
    masks: np.ndarray
    segments: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray  # row direction, column direction (LPS)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_spacing: float | None
    labels: dict[int, str]
    referenced_series: tuple[str, ...] = ()  # SeriesInstanceUIDs of ReferencedSeriesSequence


def is_dicom_seg(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM file holding a Segmentation object (header read only)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # not DICOM at all
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"


def _group(ds: pydicom.Dataset, frame: pydicom.Dataset, name: str, path: Path) -> pydicom.Dataset:
    """A functional group item from the frame, else from the shared groups."""
    if name in frame:
        return frame[name].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and name in shared[0]:
        return shared[0][name].value[0]
    raise InputError(f"{str(path)!r}: DICOM-SEG frame has no {name} (per-frame or shared); expected one")


def read_seg(path: str | os.PathLike[str]) -> SegFrames:
    """Frames, segments and frame geometry of a DICOM-SEG file.

    Raises:
        InputError: not a SEG, unreadable, or missing the functional groups that place frames.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for bad files
        raise InputError(f"{str(path)!r}: could not be read as DICOM-SEG ({error})") from error
    if str(ds.get("Modality", "")) != "SEG":
        raise InputError(
            f"{str(path)!r}: expected a DICOM-SEG (Modality SEG), found Modality {ds.get('Modality', '?')!r}"
        )
    pixels = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        masks = pixels >= float(ds.get("MaximumFractionalValue", 255)) / 2.0
    else:
        masks = pixels != 0
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(frames) != len(masks):
        raise InputError(
            f"{str(path)!r}: {len(masks)} frames but {len(frames)} per-frame functional groups; expected one per frame"
        )
    segments, positions, orientations, spacings = [], [], [], []
    for frame in frames:
        segments.append(int(_group(ds, frame, "SegmentIdentificationSequence", path).ReferencedSegmentNumber))
        positions.append(
            [float(v) for v in _group(ds, frame, "PlanePositionSequence", path).ImagePositionPatient]
        )
        orientations.append(
            [float(v) for v in _group(ds, frame, "PlaneOrientationSequence", path).ImageOrientationPatient]
        )
        measures = _group(ds, frame, "PixelMeasuresSequence", path)
        spacings.append([float(v) for v in measures.PixelSpacing])
    orientation, spacing = np.asarray(orientations), np.asarray(spacings)
    if (
        np.abs(orientation - orientation[0]).max(initial=0) > 1e-4
        or np.abs(spacing - spacing[0]).max(initial=0) > 1e-4
    ):
        raise InputError(
            f"{str(path)!r}: frames with different orientation or pixel spacing; expected one plane geometry"
        )
    measures = _group(ds, frames[0], "PixelMeasuresSequence", path) if frames else None
    between = measures.get("SpacingBetweenSlices") if measures is not None else None
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
    return SegFrames(
        path,
        masks,
        np.asarray(segments),
        np.asarray(positions),
        orientation[0] if len(orientation) else np.zeros(6),
        (float(spacing[0][0]), float(spacing[0][1])) if len(spacing) else (1.0, 1.0),
        float(between) if between else None,
        labels,
        tuple(str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])),
    )


def seg_grid(seg: SegFrames) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid holding every frame: the SEG's own lattice (columns, rows, slices) and its RAS affine.

    Used when no image grid is at hand (a missing prediction). The slice step is SpacingBetweenSlices
    when given, else the smallest step between frame positions (1 mm for a single position).
    """
    row, col = seg.orientation[:3], seg.orientation[3:]
    normal = np.cross(row, col)
    along = seg.positions @ normal
    distinct = np.unique(np.round(along, 4))
    steps = np.diff(distinct)
    step = seg.slice_spacing or (float(steps.min()) if steps.size else 1.0)
    first = seg.positions[int(np.argmin(along))]
    lps = np.eye(4)
    lps[:3, 0] = row * seg.pixel_spacing[1]
    lps[:3, 1] = col * seg.pixel_spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = first
    depth = int(round((distinct[-1] - distinct[0]) / step)) + 1 if distinct.size else 1
    return (int(seg.masks.shape[2]), int(seg.masks.shape[1]), depth), LPS_TO_RAS @ lps


def seg_to_label_map(seg: SegFrames, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The SEG as a label map (segment number per voxel) on the grid ``shape`` (x, y, z) / RAS ``affine``.

    Raises:
        GeometryError: a frame is off the grid's lattice or outside it (both geometries named).
        InputError: two segments claim the same voxel.
    """
    shape = tuple(int(n) for n in shape[:3])
    top = int(seg.segments.max(initial=0))
    label = np.zeros(shape, dtype=np.uint8 if top < 256 else np.int16)
    to_index = np.linalg.inv(LPS_TO_RAS @ np.asarray(affine, dtype=float))
    row, col = seg.orientation[:3], seg.orientation[3:]
    step_c = to_index[:3, :3] @ (row * seg.pixel_spacing[1])  # index change per frame column
    step_r = to_index[:3, :3] @ (col * seg.pixel_spacing[0])  # index change per frame row
    for name, step in (("row direction", step_c), ("column direction", step_r)):
        if np.abs(step - np.round(step)).max() > LATTICE_TOL or np.abs(np.round(step)).sum() != 1:
            raise GeometryError(
                f"{str(seg.path)!r}: SEG frames ({name} {np.round(step, 4).tolist()} voxels per pixel, pixel spacing "
                f"{seg.pixel_spacing} mm) do not lie on the image grid (shape {shape}, spacing "
                f"{np.round(np.linalg.norm(affine[:3, :3], axis=0), 4).tolist()} mm); expected the SEG's source image grid"
            )
    step_c, step_r = np.round(step_c).astype(np.int64), np.round(step_r).astype(np.int64)
    for mask, segment, position in zip(seg.masks, seg.segments, seg.positions, strict=True):
        start = to_index[:3, :3] @ position + to_index[:3, 3]
        if np.abs(start - np.round(start)).max() > LATTICE_TOL:
            raise GeometryError(
                f"{str(seg.path)!r}: a SEG frame at {np.round(position, 3).tolist()} mm (LPS) falls between voxels of the "
                f"image grid (index {np.round(start, 3).tolist()}); expected the SEG's source image grid"
            )
        rows, cols = np.nonzero(mask)
        if not rows.size:
            continue
        index = np.round(start).astype(np.int64) + np.outer(cols, step_c) + np.outer(rows, step_r)
        if index.min() < 0 or np.any(index.max(axis=0) >= shape):
            raise GeometryError(
                f"{str(seg.path)!r}: segment {segment} reaches voxel {index.max(axis=0).tolist()} / {index.min(axis=0).tolist()}, "
                f"outside the image grid of shape {shape}; expected the SEG's source image grid"
            )
        where = tuple(index.T)
        taken = label[where]
        clash = (taken != 0) & (taken != segment)
        if clash.any():
            raise InputError(
                f"{str(seg.path)!r}: segments {int(taken[clash][0])} and {segment} overlap in {int(clash.sum())} voxels of one "
                "frame; a label map cannot hold both (evaluate them as separate SEG files)"
            )
        label[where] = segment
    return label


_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


_DATE_TIME = ("DA", "TM", "DT")


def _parses(ds: pydicom.Dataset, keyword: str) -> bool:
    """Whether a date/time attribute converts to its pydicom value type (what highdicom does when copying it)."""
    from pydicom import valuerep

    value = ds[keyword].value
    if not value:
        return True
    kind = {"DA": valuerep.DA, "TM": valuerep.TM, "DT": valuerep.DT}[ds[keyword].VR]
    try:
        kind(str(value))
    except (ValueError, TypeError):
        return False
    return True


#: TotalSegmentator-style names whose SNOMED concept in pydicom's dictionary is named otherwise
#: (checked by the tests: every target exists in ``pydicom.sr.codedict.codes.SCT``).
_SYNONYMS = {
    "small_bowel": "SmallIntestine",
    "urinary_bladder": "Bladder",
    "thyroid_gland": "Thyroid",
    "clavicula": "Clavicle",
    "costal_cartilages": "CostalCartilage",
    "autochthon": "ErectorSpinaeMuscle",
    "portal_vein_and_splenic_vein": "PortalVein",
    "iliac_vena": "CommonIliacVein",
    "iliac_artery": "CommonIliacArtery",
    "hip": "Hip",
    "lung_middle_lobe": "MiddleLobeOfRightLung",
    "lung_upper_lobe": "LobeOfLung",
    "lung_lower_lobe": "LobeOfLung",
    "rib": "Rib",
    "gluteus_maximus": "SkeletalMuscle",
    "gluteus_medius": "SkeletalMuscle",
    "gluteus_minimus": "SkeletalMuscle",
    "iliopsoas": "SkeletalMuscle",
    "atrial_appendage": "Heart",
    "vertebrae_S1": "Sacrum",
}


#: SNOMED laterality modifiers (segmented property type modifier).
_SIDES = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}


@functools.cache
def _published_codes() -> dict[str, dict[str, tuple[str, str, str] | None]]:
    """TotalSegmentator 2.18.0's coding of its structures (``structure_codes.csv``, Apache-2.0: the
    table its own DICOM-SEG writer uses, from the DCMQI/3D Slicer mapping): structure name → the
    category, type and type modifier (laterality) as (scheme, value, meaning)."""
    import csv
    from importlib import resources

    text = resources.files("voxpipe.transforms").joinpath("structure_codes.csv").read_text()

    def concept(row: dict[str, str], prefix: str) -> tuple[str, str, str] | None:
        value = row[f"{prefix}.CodeValue"]
        return (
            (row[f"{prefix}.CodingSchemeDesignator"], value, row[f"{prefix}.CodeMeaning"]) if value else None
        )

    return {
        row["Structure"]: {
            "category": concept(row, "SegmentedPropertyCategoryCodeSequence"),
            "type": concept(row, "SegmentedPropertyTypeCodeSequence"),
            "modifier": concept(row, "SegmentedPropertyTypeModifierCodeSequence"),
            "region": concept(row, "AnatomicRegionSequence"),
            "region_modifier": concept(row, "AnatomicRegionModifierSequence"),
        }
        for row in csv.DictReader(text.splitlines())
    }


@dataclass(frozen=True)
class Concept:
    """A structure's coded concepts, as a DICOM-SEG segment carries them."""

    category: Any
    type: Any
    modifier: Any | None = None  # laterality of the type (a left kidney: Kidney, Left)
    region: Any | None = None  # where a finding lies (a kidney cyst: Kidney)
    region_modifier: Any | None = None  # the region's laterality


def structure_concept(name: str) -> Concept:
    """The coded concepts of a structure name.

    TotalSegmentator's structures get the codes its own DICOM-SEG writer gives them (a left kidney is
    Kidney with the type modifier Left; a left kidney cyst is Cyst in the region Kidney, modified Left);
    other names get :func:`structure_codes`' concept and, when they end in ``_left``/``_right``
    (``_left_3``...), that side as the type modifier.
    """
    import re

    from highdicom.sr import CodedConcept

    def coded(code: tuple[str, str, str] | None) -> Any | None:
        return CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2]) if code else None

    published = _published_codes().get(name.strip())
    if published is not None and published["category"] and published["type"]:
        return Concept(
            *(coded(published[k]) for k in ("category", "type", "modifier", "region", "region_modifier"))
        )
    category, kind = structure_codes(name)
    side = re.search(r"_(left|right)(_\d+)?$", name.strip().lower())
    modifier = None
    if side:
        value, meaning = _SIDES[side.group(1)]
        modifier = CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)
    return Concept(category, kind, modifier)


def structure_codes(name: str) -> tuple[Any, Any]:
    """(segmented property category, type) SNOMED codes for a structure name.

    Tumours, lesions, nodules and cysts are morphologically abnormal structures. Other names (the
    TotalSegmentator style: ``kidney_right``, ``vertebrae_L1``, ``rib_left_3``) lose their side and
    number and are looked up in pydicom's SNOMED dictionary as written (``kidney`` → Kidney,
    ``vertebrae_L1`` → L1 vertebra) or through :data:`_SYNONYMS`; what is found there is an
    anatomical structure, anything else the generic Tissue (the segment's label keeps the name).
    """
    import re

    from pydicom.sr.codedict import codes

    lowered = name.lower()
    if any(word in lowered for word in ("tumour", "tumor", "lesion", "nodule", "cancer", "neoplasm")):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    if "cyst" in lowered:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst
    base = re.sub(r"(_(left|right))?(_\d+)?$", "", name.strip())
    vertebra = re.fullmatch(r"vertebrae?_([CTL]\d{1,2})", base, flags=re.IGNORECASE)
    candidates = [_SYNONYMS.get(base), _SYNONYMS.get(base.lower())]
    if vertebra:
        candidates.append(f"{vertebra.group(1).upper()}Vertebra")
    candidates.append("".join(word.capitalize() for word in re.split(r"[_\s]+", base) if word))
    for candidate in candidates:
        if candidate and candidate in dir(codes.SCT):
            return codes.SCT.AnatomicalStructure, getattr(codes.SCT, candidate)
    for word, code in (("liver", codes.SCT.Liver), ("lung", codes.SCT.Lung)):
        if word in lowered:
            return codes.SCT.AnatomicalStructure, code
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_dicom_seg(
    label: np.ndarray,
    series_folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    names: dict[int, str],
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    seg_series_uid: str | None = None,
) -> Path:
    """Write ``label`` (x, y, z, on the grid voxpipe loads the series with) as a DICOM-SEG of that series.

    highdicom builds the object: one segment per named non-zero label, numbered 1..n in label-value
    order and SNOMED-coded from its name (:func:`structure_concept`: TotalSegmentator's own codes for
    its structures, laterality as the type modifier; liver, lung, tumour/lesion/nodule, else tissue), frames
    referencing the source slices, empty frames omitted, BINARY. The file is written atomically.
    ``sop_instance_uid`` and ``seg_series_uid`` (the SEG's own UIDs) are generated unless given: a
    caller that may write the same result twice (the DICOM node, after a restart) passes fixed ones.

    Raises:
        GeometryError: the label is not on the series' grid, or the series was resampled on loading
            (gantry tilt, non-uniform spacing), so its voxels are not the source slices' pixels.
    """
    from pydicom.sr.codedict import codes

    from voxpipe import __version__
    from voxpipe.runtime import optional_module

    hd = optional_module("highdicom", extra="dicom", feature="writing DICOM-SEG")
    from voxpipe.transforms.dicom import choose_series, discover_series, series_geometry
    from voxpipe.transforms.files import atomic_path

    folder = Path(series_folder)
    info = choose_series(discover_series(folder), series_uid, folder=folder)
    headers = [copy.copy(ds) for ds in info.headers]  # defaults are filled in below; keep the originals
    geometry = series_geometry(headers, info.files)
    for ds in headers:  # type-2 attributes highdicom copies into the SEG; empty is legal, absent is not
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
            elif ds[keyword].VR in _DATE_TIME and not _parses(ds, keyword):
                setattr(
                    ds, keyword, ""
                )  # a malformed date (1961-07-14) would stop highdicom; type 2 may be empty
        for keyword in ("SOPClassUID", "SOPInstanceUID"):  # anonymisers sometimes blank the root copies
            if (
                not ds.get(keyword)
                and ds.get("file_meta") is not None
                and ds.file_meta.get(f"MediaStorage{keyword}")
            ):
                setattr(ds, keyword, ds.file_meta.get(f"MediaStorage{keyword}"))
        if "FrameOfReferenceUID" not in ds or "StudyInstanceUID" not in ds:
            raise InputError(
                f"{str(info.files[0])!r}: expected FrameOfReferenceUID and StudyInstanceUID, which a DICOM-SEG must reference"
            )
    if geometry.resample_z or np.any(geometry.offsets):
        raise GeometryError(
            f"{str(folder)!r}: the series was resampled on loading (gantry tilt or non-uniform spacing); a DICOM-SEG must "
            "follow the source slices, so write NIfTI for this series instead"
        )
    if tuple(label.shape) != tuple(geometry.shape):
        raise GeometryError(
            f"{str(folder)!r}: label shape {tuple(label.shape)} does not match the series grid {geometry.shape}"
        )
    present = sorted(int(v) for v in np.unique(label) if v)
    unnamed = [v for v in present if v not in names]
    if unnamed:
        raise InputError(f"{str(path)!r}: label values {unnamed} have no name; expected names for {present}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="voxpipe", family=codes.DCM.ArtificialIntelligence, version=__version__
    )
    described = sorted(v for v in names if v)
    descriptions = []
    for number, value in enumerate(
        described, start=1
    ):  # highdicom numbers segments 1..n: label values in order
        concept = structure_concept(names[value])
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[value],
            segmented_property_category=concept.category,
            segmented_property_type=concept.type,
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            anatomic_regions=[concept.region] if concept.region is not None else None,
        )
        if concept.modifier is not None:  # laterality: a left kidney is Kidney, modified Left
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                concept.modifier
            ]
        if concept.region_modifier is not None:
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [concept.region_modifier]
        descriptions.append(description)
    remap = np.zeros(int(max(described, default=0)) + 1, dtype=np.uint16)
    remap[described] = np.arange(1, len(described) + 1)
    frames = np.stack([remap[label[:, :, k]].T for k in range(label.shape[2])])
    seg = hd.seg.Segmentation(
        source_images=[headers[i] for i in geometry.order],
        pixel_array=frames,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=seg_series_uid or hd.UID(),
        series_number=900,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="voxpipe",
        manufacturer_model_name="voxpipe",
        software_versions=__version__,
        device_serial_number="0",
        series_description="voxpipe segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
