"""3D Slicer segmentation files (``.seg.nrrd``): label maps with named, coloured segments.

Why our own: MONAI, SimpleITK and nibabel read the voxels of a ``.seg.nrrd`` but not what makes it
a Slicer segmentation: the per-segment metadata (``Segment<i>_Name``, ``_LabelValue``, ``_Layer``,
``_Color``, ``_Extent``, ``_Tags`` ...) in NRRD key/value fields, as
``vtkMRMLSegmentationStorageNode`` writes them. pynrrd reads and writes the NRRD; this module maps
those fields to label values and back.

Writing: one layer (a label map, segments never overlap), ``unsigned char`` (``unsigned short``
above 255), gzip, in LPS space like Slicer, on exactly the grid of the label map. Each segment gets
its name, its label value, a colour, its extent (bounding box in voxels; ``0 -1 0 -1 0 -1`` when empty,
as Slicer writes), and a DICOM terminology tag (SNOMED CT category and type), so Slicer shows it as
a named, coloured segment over the image.

Reading: what Slicer saves. That is 3D single-layer files, or 4D files with overlapping segments in
several layers (the first axis of kind ``list``). The stored array may be cropped to the segments'
extent, so its own origin is used (the caller places it on the image grid, exactly or not at all).
Each segment is the voxels of its ``LabelValue`` in its ``Layer``
(:func:`read_slicer_segments`). :func:`read_slicer_seg` makes one label map of them, and there
voxels that two segments claim are an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxpipe.errors import InputError
from voxpipe.transforms.io import LPS_TO_RAS

# Slicer's General Anatomy colours for the structures voxpipe's bundles segment; others cycle through a palette.
NAMED_COLOURS = {
    "liver": (0.86, 0.59, 0.49),
    "tumour": (0.78, 0.27, 0.27),
    "tumor": (0.78, 0.27, 0.27),
    "lung": (0.77, 0.67, 0.91),
    "nodule": (0.9, 0.8, 0.2),
}
PALETTE = ((0.5, 0.68, 0.5), (0.95, 0.84, 0.57), (0.69, 0.48, 0.39), (0.44, 0.71, 0.83), (0.85, 0.4, 0.77))


@dataclass(frozen=True)
class SlicerSegmentation:
    """A ``.seg.nrrd`` read as a label map on its own grid, with ``names`` (label value → segment name)."""

    path: Path
    label: np.ndarray  # (x, y, z), uint8/uint16
    affine: np.ndarray  # RAS, 4×4
    names: dict[int, str]


def _colour(name: str, index: int) -> tuple[float, float, float]:
    lowered = name.lower()
    for word, colour in NAMED_COLOURS.items():
        if word in lowered:
            return colour
    return PALETTE[index % len(PALETTE)]


def _extent(mask: np.ndarray) -> str:
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds += [int(present[0]), int(present[-1])]
    return " ".join(str(b) for b in bounds)


def _terminology(name: str) -> str:
    """Slicer's ``TerminologyEntry`` tag for a structure (SNOMED CT category, type and laterality
    modifier, as in DICOM-SEG)."""
    from voxpipe.transforms.dicom_seg import structure_concept

    concept = structure_concept(name)
    code = lambda c: f"{c.scheme_designator}^{c.value}^{c.meaning}" if c is not None else "^^"  # noqa: E731
    return (
        f"TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list~{code(concept.category)}"
        f"~{code(concept.type)}~{code(concept.modifier)}~Anatomic codes - DICOM master list"
        f"~{code(concept.region)}~{code(concept.region_modifier)}|"
    )


def write_slicer_seg(
    label: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str], *, names: dict[int, str]
) -> Path:
    """Write ``label`` (x, y, z integer label map on the RAS ``affine``) as a Slicer ``.seg.nrrd``, atomically.

    Every named non-zero label becomes a segment (absent ones too, empty, so the reviewer can paint them).

    Raises:
        InputError: the label map holds values without a name.
    """
    import nrrd

    from voxpipe.transforms.files import atomic_path

    label = np.asarray(label)
    present = sorted(int(v) for v in np.unique(label) if v)
    unnamed = [v for v in present if v not in names]
    if unnamed:
        raise InputError(f"{str(path)!r}: label values {unnamed} have no name; expected names for {present}")
    values = sorted(int(v) for v in names if int(v))
    dtype = np.uint8 if max(values, default=0) <= 255 else np.uint16
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    header: dict[str, object] = {
        "type": "unsigned char" if dtype == np.uint8 else "unsigned short",
        "dimension": 3,
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, value in enumerate(values):
        name = names[value]
        fields = {
            "ID": f"Segment_{value}",
            "Name": name,
            "NameAutoGenerated": "0",
            "LabelValue": str(value),
            "Layer": "0",
            "Color": " ".join(f"{c:.6g}" for c in _colour(name, index)),
            "ColorAutoGenerated": "0",
            "Extent": _extent(label == value),
            "Tags": _terminology(name),
        }
        header.update({f"Segment{index}_{key}": text for key, text in fields.items()})
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), label.astype(dtype, copy=False), header, index_order="F")
    return Path(path)


def is_slicer_seg(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.lower().endswith(".seg.nrrd")


def read_slicer_segments(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every segment of a Slicer segmentation (3D, or 4D with layers) as a mask on the file's own grid.

    Returns:
        ``({segment name: boolean mask (x, y, z)}, RAS affine)``, in the file's segment order.

    Raises:
        InputError: not readable, no segments, a segment without an integer label value or layer.
    """
    import nrrd

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as error:  # pynrrd raises several types for bad files
        raise InputError(f"{str(path)!r}: could not be read as a 3D Slicer segmentation ({error})") from error
    kinds = list(header.get("kinds", []))
    if data.ndim == 4 and kinds and kinds[0] in ("list", "vector", "complex"):
        layers = data
    elif data.ndim == 3:
        layers = data[None]
    else:
        raise InputError(
            f"{str(path)!r}: expected a 3D segmentation (or 4D with layers first), found shape {data.shape}"
        )
    directions = np.asarray(header.get("space directions"), dtype=float)
    directions = (
        directions[-3:] if directions.shape[0] == 4 else directions
    )  # a 4D file's list axis has 'none'
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise InputError(
            f"{str(path)!r}: expected 'space directions' for 3 axes, found {header.get('space directions')}"
        )
    space = str(header.get("space", "left-posterior-superior")).lower()
    lps = np.eye(4)
    lps[:3, :3] = directions.T
    lps[:3, 3] = np.asarray(header.get("space origin", [0, 0, 0]), dtype=float)
    if space in ("right-anterior-superior", "ras"):
        lps = LPS_TO_RAS @ lps
    elif space not in ("left-posterior-superior", "lps"):
        raise InputError(f"{str(path)!r}: expected space LPS or RAS, found {space!r}")
    segments: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        if key.startswith("Segment") and "_" in key and key[len("Segment") : key.index("_")].isdigit():
            index, field = int(key[len("Segment") : key.index("_")]), key[key.index("_") + 1 :]
            segments.setdefault(index, {})[field] = str(value)
    if not segments:
        raise InputError(
            f"{str(path)!r}: expected Slicer segment fields (Segment0_Name, Segment0_LabelValue, ...), found none"
        )
    masks: dict[str, np.ndarray] = {}
    for index, fields in sorted(segments.items()):
        name = fields.get("Name", fields.get("ID", f"Segment_{index}"))
        try:
            value, layer = int(fields.get("LabelValue", 1)), int(fields.get("Layer", 0))
        except ValueError:
            raise InputError(
                f"{str(path)!r}: segment {name!r}: expected integer LabelValue and Layer, found "
                f"{fields.get('LabelValue')!r}, {fields.get('Layer')!r}"
            ) from None
        if not 0 <= layer < layers.shape[0]:
            raise InputError(
                f"{str(path)!r}: segment {name!r}: layer {layer} does not exist (the file has {layers.shape[0]})"
            )
        if name in masks:
            raise InputError(f"{str(path)!r}: two segments are named {name!r}; expected unique names")
        masks[name] = layers[layer] == value
    return masks, LPS_TO_RAS @ lps


def read_slicer_seg(path: str | os.PathLike[str]) -> SlicerSegmentation:
    """Read a Slicer segmentation as one label map on its own grid (segments numbered 1.. in file order).

    Raises:
        InputError: as :func:`read_slicer_segments`, or segments that overlap (a label map holds one
            label per voxel; :func:`voxpipe.pipelines.annotation.ingest.read_correction` resolves overlaps by
            the bundle's label order instead).
    """
    masks, affine = read_slicer_segments(path)
    label = np.zeros(next(iter(masks.values())).shape, dtype=np.uint16)
    names: dict[int, str] = {}
    for number, (name, mask) in enumerate(masks.items(), start=1):
        clash = mask & (label > 0)
        if clash.any():
            other = names[int(label[clash][0])]
            raise InputError(
                f"{str(path)!r}: segments {other!r} and {name!r} overlap in {int(clash.sum())} voxels; "
                "expected non-overlapping segments (a label map holds one label per voxel)"
            )
        label[mask] = number
        names[number] = name
    return SlicerSegmentation(Path(path), label, affine, names)
