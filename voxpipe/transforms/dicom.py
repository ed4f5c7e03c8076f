"""DICOM series: discovery, choice of one series, slice ordering, geometry checks and loading.

Why our own reader: MONAI's ``PydicomReader``/``ITKReader`` and SimpleITK's ``ImageSeriesReader``
stack whatever files they are given and derive one slice spacing from them: a gapped series, a
non-uniform one or a gantry-tilted (sheared) stack comes out with a silently wrong affine (ITK only
prints a warning to stderr). Here every series is checked first, and each case is either handled
in a documented, correct way or refused with an error naming the files:

============================  ================================================================
case                          handling
============================  ================================================================
several series in a folder    ``series_uid`` picks one; without it the series with most slices
                              is used (ties: smallest UID) and the others are listed in a
                              warning. Series are never mixed.
slice order                   by position along the slice normal (ImagePositionPatient ·
                              (row × column)); file names and InstanceNumber are ignored.
RescaleSlope/Intercept        applied per slice; integer result → int16/int32, else float32;
                              a Modality LUT Sequence is applied as pydicom applies it.
compressed transfer syntaxes  decoded by pydicom with its Pillow / pylibjpeg plugins.
duplicate positions           error (usually two acquisitions in one series).
missing slices                error when a gap exceeds 1.5 × the median spacing.
non-uniform spacing           resampled linearly onto the median spacing, with a warning
                              (``nonuniform="error"`` refuses instead).
gantry tilt (sheared stack)   each slice is shifted in-plane onto an orthogonal grid (linear
                              interpolation; outside the field of view = series minimum), with
                              a warning giving the angle (``tilt="error"`` refuses instead).
mixed orientation / pixel     error.
spacing / matrix size /
modality
MONOCHROME1                   stored values go through the modality LUT as MONOCHROME2 ones do
                              (the photometric interpretation is a display matter, not HU).
single slice                  error: not a volume.
multi-frame objects           error (enhanced multi-frame and DICOM-SEG are not slice series).
============================  ================================================================

For well-formed series the result agrees with SimpleITK's ``ImageSeriesReader`` on spacing, origin
and direction (tested). The array contract is the one of :mod:`voxpipe.transforms.io`: indexed
``(x, y, z)`` = (column, row, slice) with a RAS affine in mm.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from voxpipe.errors import GeometryError, InputError
from voxpipe.transforms.io import LPS_TO_RAS

logger = logging.getLogger(__name__)

ORIENTATION_TOL = 1e-4  # direction cosines
SPACING_REL_TOL = 1e-3  # pixel spacing and slice spacing, relative
GAP_FACTOR = 1.5  # a step above this × median spacing means missing slices
TILT_TOL_MM = 0.01  # in-plane offset between slices above which the stack is sheared


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found on disk: its UID, description, modality and slice files."""

    uid: str
    description: str
    modality: str
    files: tuple[Path, ...]
    headers: tuple[pydicom.Dataset, ...] = field(default=(), repr=False, compare=False)  # read at discovery

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        return f"{self.uid}  {self.modality or '?':4s} {self.n_slices:5d} slices  {self.description!r}"


@dataclass
class SeriesGeometry:
    """How the slices of a series map to a regular grid (computed from headers only)."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # RAS, 4×4, mm
    order: list[int]  # header indices sorted along the slice normal
    positions: np.ndarray  # slice positions along the normal (mm), sorted, relative to the first
    offsets: np.ndarray  # (n, 2) in-plane offset of each sorted slice from the stack axis (pixels: x, y)
    spacing: float  # output slice spacing (mm)
    resample_z: bool = False
    warnings: list[str] = field(default_factory=list)


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header (everything before the pixel data), with ``voxpipe_pixel_offset``: where the pixel
    data element starts in the file (pydicom stops reading there)."""
    try:
        with open(path, "rb") as file:
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            ds.voxpipe_pixel_offset = file.tell()
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, KeyError):
        return None
    if "SeriesInstanceUID" not in ds or "Rows" not in ds or "Columns" not in ds:
        return None
    return ds


def _pixels_at_offset(path: Path, header: pydicom.Dataset) -> np.ndarray | None:
    """Uncompressed pixels read straight from where the header pass found the pixel data element.

    Why our own: pydicom can only reach the pixels by parsing the whole header again, which was half
    of the series' load time; the header is already parsed. Only for native little-endian
    single-frame slices whose element is where it was and as long as expected; None otherwise (the
    caller then reads the file with pydicom, which also gives the precise error for a bad file).
    """
    offset = getattr(header, "voxpipe_pixel_offset", None)
    layout = _native_layout(header)
    if (
        offset is None
        or layout is None
        or str(header.get("PhotometricInterpretation", "MONOCHROME2")) not in ("MONOCHROME1", "MONOCHROME2")
        or "ModalityLUTSequence" in header
    ):
        return None
    syntax, rows, columns, stored, dtype = layout
    if stored != 8 * dtype.itemsize:  # masked or sign-extended stored bits: _native_pixels does that
        return None
    expected = rows * columns * dtype.itemsize
    explicit = syntax == "1.2.840.10008.1.2.1"
    with open(path, "rb") as file:
        file.seek(offset)
        head = file.read(12 if explicit else 8)
        if (
            len(head) < (12 if explicit else 8) or head[:4] != b"\xe0\x7f\x10\x00"
        ):  # (7FE0,0010) little endian
            return None
        length = int.from_bytes(head[8:12] if explicit else head[4:8], "little")
        if explicit and head[4:6] not in (b"OW", b"OB"):
            return None
        if length < expected or length == 0xFFFFFFFF:
            return None
        data = file.read(expected)
    if len(data) < expected:
        return None
    return np.frombuffer(data, dtype=dtype).reshape(rows, columns)


def discover_series(root: str | os.PathLike[str]) -> list[SeriesInfo]:
    """All DICOM image series under ``root`` (searched recursively), largest first.

    Files that are not DICOM (licences, DICOMDIR indexes without pixels) are skipped. Files without
    the 128-byte preamble are accepted (read with ``force=True``) when they carry a series UID and
    a pixel matrix.

    Raises:
        InputError: ``root`` is not a folder, or holds no DICOM image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{str(root)!r}: expected a folder of DICOM files, found no such folder")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        ds = _read_header(path)
        if ds is not None:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if not groups:
        raise InputError(f"{str(root)!r}: expected DICOM image files, found none (searched recursively)")
    series = [
        SeriesInfo(
            uid=uid,
            description=str(items[0][1].get("SeriesDescription", "")),
            modality=str(items[0][1].get("Modality", "")),
            files=tuple(p for p, _ in items),
            headers=tuple(ds for _, ds in items),
        )
        for uid, items in groups.items()
    ]
    return sorted(series, key=lambda s: (-s.n_slices, s.uid))


def choose_series(
    series: Sequence[SeriesInfo], uid: str | None = None, *, folder: str | os.PathLike[str] = ""
) -> SeriesInfo:
    """Pick ``uid`` from ``series``; without one, the series with most slices (warning if several).

    Raises:
        InputError: ``uid`` is not among the series (the message lists them).
    """
    listing = "\n  ".join(s.summary() for s in series)
    if uid is not None:
        for info in series:
            if info.uid == uid:
                return info
        raise InputError(f"{str(folder)!r}: expected series {uid!r}, found only:\n  {listing}")
    chosen = series[0]
    if len(series) > 1:
        logger.warning(
            "%s: %d DICOM series; using %s (most slices). Choose another with --series UID:\n  %s",
            folder,
            len(series),
            chosen.uid,
            listing,
        )
    return chosen


def _vector(ds: pydicom.Dataset, keyword: str, size: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != size:
        raise InputError(f"{str(path)!r}: expected {keyword} with {size} numbers, found {value!r}")
    return np.asarray([float(v) for v in value], dtype=float)


def series_geometry(
    headers: Sequence[pydicom.Dataset],
    files: Sequence[Path],
    *,
    tilt: str = "resample",
    nonuniform: str = "resample",
) -> SeriesGeometry:
    """Check a series' geometry from its headers and plan the regular grid it is loaded onto.

    Raises:
        GeometryError: any of the refused cases in the module table; the message names files.
    """
    if tilt not in ("resample", "error") or nonuniform not in ("resample", "error"):
        raise InputError(
            f"tilt / nonuniform: expected 'resample' or 'error', found {tilt!r} / {nonuniform!r}"
        )
    folder = files[0].parent
    for ds, path in zip(headers, files, strict=True):
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise GeometryError(
                f"{str(path)!r}: multi-frame object ({frames} frames, SOP class {ds.get('SOPClassUID', '?')}); "
                "expected single-frame slices of one image series"
            )
    modalities: dict[str, list[Path]] = {}
    for ds, path in zip(headers, files, strict=True):
        modalities.setdefault(str(ds.get("Modality", "")), []).append(path)
    if len(modalities) > 1:
        listing = "; ".join(
            f"{modality or '(none)'} in {len(paths)} slice(s), e.g. {str(paths[0])!r}"
            for modality, paths in sorted(modalities.items(), key=lambda item: -len(item[1]))
        )
        raise GeometryError(
            f"{str(folder)!r}: slices of one series (SeriesInstanceUID) have different Modality values: "
            f"{listing}; expected one modality per series"
        )
    if len(headers) < 2:
        raise GeometryError(
            f"{str(files[0])!r}: the series has 1 slice; expected a volume of at least 2 slices"
        )
    orientations = np.stack(
        [_vector(ds, "ImageOrientationPatient", 6, p) for ds, p in zip(headers, files, strict=True)]
    )
    pixel_spacings = np.stack(
        [_vector(ds, "PixelSpacing", 2, p) for ds, p in zip(headers, files, strict=True)]
    )
    positions = np.stack(
        [_vector(ds, "ImagePositionPatient", 3, p) for ds, p in zip(headers, files, strict=True)]
    )
    by_size: dict[tuple[int, int], list[Path]] = {}
    for ds, path in zip(headers, files, strict=True):
        by_size.setdefault((int(ds.Rows), int(ds.Columns)), []).append(path)
    if len(by_size) > 1:
        listing = "; ".join(
            f"{rows}×{columns} in {len(paths)} slice(s), e.g. {str(paths[0])!r}"
            for (rows, columns), paths in sorted(by_size.items(), key=lambda item: -len(item[1]))
        )
        raise GeometryError(
            f"{str(folder)!r}: slices of one series have different matrix sizes (rows×columns): {listing}"
        )
    bad = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOL)
    if bad.size:
        raise GeometryError(
            f"{str(files[bad[0]])!r}: ImageOrientationPatient {orientations[bad[0]].tolist()} differs from "
            f"{orientations[0].tolist()} in {str(files[0])!r}; expected one orientation per series"
        )
    bad = np.flatnonzero(
        np.abs(pixel_spacings - pixel_spacings[0]).max(axis=1) > SPACING_REL_TOL * pixel_spacings[0].min()
    )
    if bad.size:
        raise GeometryError(
            f"{str(files[bad[0]])!r}: PixelSpacing {pixel_spacings[bad[0]].tolist()} differs from "
            f"{pixel_spacings[0].tolist()} in {str(files[0])!r}; expected one pixel spacing per series"
        )
    row, col = orientations[0, :3], orientations[0, 3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise GeometryError(
            f"{str(files[0])!r}: ImageOrientationPatient {orientations[0].tolist()} is not two orthogonal unit vectors"
        )
    normal = np.cross(row, col)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along = along[order]
    steps = np.diff(along)
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        a, b = order[duplicate[0]], order[duplicate[0] + 1]
        raise GeometryError(
            f"{str(files[a])!r} and {str(files[b])!r}: two slices at the same position "
            f"{positions[a].tolist()} mm; expected one slice per position (two acquisitions mixed in one series?)"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        k = int(gaps[0])
        raise GeometryError(
            f"{str(folder)!r}: missing slices between {files[order[k]].name} and {files[order[k + 1]].name}: "
            f"a step of {steps[k]:.4g} mm where the median slice spacing is {median:.4g} mm "
            f"(about {round(steps[k] / median) - 1} slices missing); expected a complete series"
        )
    warnings: list[str] = []
    resample_z = bool(np.abs(steps - median).max() > SPACING_REL_TOL * median)
    if resample_z:
        message = f"{str(folder)!r}: non-uniform slice spacing ({steps.min():.4g}–{steps.max():.4g} mm)"
        if nonuniform == "error":
            raise GeometryError(message + "; expected uniform spacing")
        warnings.append(message + f"; resampled linearly onto {median:.4g} mm")
    rel = positions[order] - positions[order[0]]
    in_plane = rel - np.outer(rel @ normal, normal)
    shear = float(np.linalg.norm(in_plane, axis=1).max())
    dx, dy = float(pixel_spacings[0, 1]), float(pixel_spacings[0, 0])  # column spacing, row spacing
    offsets = np.stack([in_plane @ row / dx, in_plane @ col / dy], axis=1)
    if shear > TILT_TOL_MM:
        angle = float(np.degrees(np.arctan2(shear, along[-1] - along[0])))
        message = f"{str(folder)!r}: gantry tilt / sheared stack ({angle:.2f}° from the slice normal)"
        if tilt == "error":
            raise GeometryError(message + "; expected slices stacked along their normal")
        warnings.append(message + "; slices shifted in-plane onto an orthogonal grid")
    else:
        offsets = np.zeros_like(offsets)
    n_out = int(round((along[-1] - along[0]) / median)) + 1 if resample_z else len(order)
    spacing = median if resample_z else float((along[-1] - along[0]) / (len(order) - 1))
    lps = np.eye(4)
    lps[:3, 0] = row * dx
    lps[:3, 1] = col * dy
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = positions[order[0]]
    shape = (int(headers[0].Columns), int(headers[0].Rows), n_out)
    return SeriesGeometry(
        shape, LPS_TO_RAS @ lps, order, along - along[0], offsets, spacing, resample_z, warnings
    )


_NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
)  # implicit / explicit VR little endian


def _native_layout(ds: pydicom.Dataset) -> tuple[str, int, int, int, np.dtype] | None:
    """(transfer syntax, rows, columns, bits stored, pixel dtype) of an uncompressed little-endian
    single-frame single-channel slice; None for anything pydicom must decode."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
    if (
        syntax not in _NATIVE_SYNTAXES
        or int(ds.get("SamplesPerPixel", 1)) != 1
        or int(ds.get("NumberOfFrames", 1) or 1) != 1
    ):
        return None
    bits, signed = int(ds.get("BitsAllocated", 16)), int(ds.get("PixelRepresentation", 0)) == 1
    if bits not in (8, 16, 32):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    return syntax, int(ds.Rows), int(ds.Columns), int(ds.get("BitsStored", bits)), dtype


def _native_pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    """The pixel matrix of an uncompressed little-endian single-frame slice without pydicom's
    conversion machinery (a view of the element's bytes); None where pydicom must decode it."""
    layout = _native_layout(ds)
    if layout is None or "PixelData" not in ds:
        return None
    _, rows, columns, stored, dtype = layout
    data = ds.PixelData
    if len(data) < rows * columns * dtype.itemsize:
        return None  # pydicom's own error names what is missing
    array = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    bits = 8 * dtype.itemsize
    if stored < bits:  # high bits may hold overlays or garbage: keep the stored bits, sign-extended
        pattern = array.view(f"<u{dtype.itemsize}")
        if dtype.kind == "i":  # sign-extend from the stored width: the top stored bit is the sign
            shift = 64 - stored
            array = ((pattern.astype(np.int64) << shift) >> shift).astype(np.int32)
        else:
            array = pattern & ((1 << stored) - 1)
    return array


def _pixels(path: Path) -> tuple[np.ndarray, float, float]:
    """Stored pixel values of one slice (rows, columns) and its RescaleSlope / RescaleIntercept.

    Call inside :func:`_quiet_pydicom`.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as error:  # pydicom raises many types for corrupt files
        raise InputError(f"{str(path)!r}: could not be read as DICOM ({_one_line(error)})") from error
    try:
        array = _native_pixels(ds)
        if array is None:
            array = ds.pixel_array  # some decoders log a traceback through pydicom's logger before raising
    except Exception as error:  # and for undecodable pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        reason = _one_line(error)
        missing = any(
            words in reason.lower()
            for words in (
                "no pixel data handler",
                "missing required",
                "not installed",
                "no plugins",
                "no available",
            )
        )
        raise InputError(
            f"{str(path)!r}: could not decode the pixel data (transfer syntax {syntax}: {reason})"
            + (
                "; compressed syntaxes need Pillow (JPEG, JPEG 2000) or pylibjpeg plugins installed"
                if missing
                else "; the slice's compressed data are damaged or truncated"
                if getattr(syntax, "is_compressed", False)
                else "; the slice's pixel data are missing or truncated"
            )
        ) from error
    if int(ds.get("SamplesPerPixel", 1)) != 1 or array.ndim != 2:
        raise InputError(
            f"{str(path)!r}: expected a single-channel 2D slice, found pixel array shape {array.shape}"
        )
    # The modality LUT (rescale or LUT sequence) maps stored values to HU whatever the photometric
    # interpretation: MONOCHROME1 only says how a viewer shows grey levels, so nothing is inverted here.
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(array, ds), dtype=np.float32), 1.0, 0.0
    return array, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def slice_hu(path: str | os.PathLike[str]) -> np.ndarray:
    """One slice's pixels (rows, columns) rescaled to modality units (HU for CT).

    Raises:
        InputError: the file is not DICOM or its pixel data cannot be decoded (the message names it).
    """
    with _quiet_pydicom():
        return _rescaled(*_pixels(Path(path)))


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom logs decoder failures with a traceback; voxpipe raises one line naming the slice instead."""
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        pydicom_logger.setLevel(level)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def _rescaled(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``raw × slope + intercept``, in int32 when both are integers (a quarter of float64's memory)."""
    if slope.is_integer() and intercept.is_integer():
        return raw.astype(np.int32) * int(slope) + int(intercept)
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def load_dicom_series(
    folder: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    tilt: str = "resample",
    nonuniform: str = "resample",
) -> tuple[np.ndarray, np.ndarray, SeriesInfo]:
    """Load one DICOM series as ``(array (x, y, z), RAS affine 4×4 mm, SeriesInfo)``.

    Args:
        folder: folder searched recursively for the series.
        series_uid: SeriesInstanceUID to load; default: the series with most slices.
        tilt: ``"resample"`` (default) or ``"error"`` for sheared (gantry-tilted) stacks.
        nonuniform: ``"resample"`` (default) or ``"error"`` for non-uniform slice spacing.

    Raises:
        InputError / GeometryError: see the module table; messages name the files.
    """
    info = choose_series(discover_series(folder), series_uid, folder=folder)
    headers = list(info.headers)
    geometry = series_geometry(headers, info.files, tilt=tilt, nonuniform=nonuniform)
    for message in geometry.warnings:
        logger.warning("%s", message)
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    # Slices go into a (z, y, x) C-ordered buffer, one contiguous row-major plane each, and come out as
    # its (x, y, z) view (Fortran order, as NIfTI stores voxels): no transposed copies.
    integral = all(
        np.allclose(o, np.round(o)) for o in geometry.offsets
    )  # shifts by whole pixels stay integers
    stack = np.empty((len(geometry.order), rows, columns), dtype=np.int32 if integral else np.float32)
    with _quiet_pydicom():
        for k, (index, offset) in enumerate(zip(geometry.order, geometry.offsets, strict=True)):
            raw = _pixels_at_offset(info.files[index], headers[index])
            if raw is not None:
                slope = float(headers[index].get("RescaleSlope", 1) or 1)
                intercept = float(headers[index].get("RescaleIntercept", 0) or 0)
            else:
                raw, slope, intercept = _pixels(info.files[index])
            expected = (int(headers[index].Rows), int(headers[index].Columns))
            if raw.shape != expected:
                raise InputError(
                    f"{str(info.files[index])!r}: pixel data of {raw.shape[0]}×{raw.shape[1]}; expected the "
                    f"header's Rows × Columns {expected[0]}×{expected[1]}"
                )
            if integral and not (slope.is_integer() and intercept.is_integer()):
                stack, integral = stack.astype(np.float32), False
            if np.any(offset):  # undo the in-plane shift of a tilted slice; arrays are (row=y, column=x)
                values = _rescaled(raw, slope, intercept).astype(np.float32)
                shifted = ndimage.shift(
                    values, (offset[1], offset[0]), order=1, mode="constant", cval=float(values.min())
                )
                stack[k] = np.rint(shifted) if integral else shifted
                continue
            plane = stack[k]
            plane[...] = raw  # into int32 (or float32), then rescaled in place: no per-slice temporaries
            if slope != 1:
                plane *= int(slope) if integral else np.float32(slope)
            if intercept:
                plane += int(intercept) if integral else np.float32(intercept)
    volume = stack.transpose(2, 1, 0)  # (x, y, z)
    if geometry.resample_z:
        volume = _resample_along_z(volume, geometry.positions, geometry.spacing, geometry.shape[2])
        integral = False
    if integral:
        low, high = float(volume.min()), float(volume.max())
        dtype = np.int16 if -32768 <= low and high <= 32767 else np.int32
        return volume.astype(dtype, order="K", copy=volume.dtype != dtype), geometry.affine, info
    return volume.astype(np.float32, order="K", copy=False), geometry.affine, info


def _resample_along_z(stack: np.ndarray, positions: np.ndarray, spacing: float, n_out: int) -> np.ndarray:
    """Linear interpolation of slices at ``positions`` (mm, ascending) onto ``k × spacing``."""
    targets = np.minimum(np.arange(n_out) * spacing, positions[-1])
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((targets - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    data = stack.astype(np.float32)
    return data[..., lower] * (1 - weight) + data[..., upper] * weight


def dicom_geometry(
    folder: str | os.PathLike[str], *, series_uid: str | None = None
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (x, y, z) and RAS affine a DICOM series loads with, from headers only."""
    info = choose_series(discover_series(folder), series_uid, folder=folder)
    headers = list(info.headers)
    geometry = series_geometry(headers, info.files)
    return geometry.shape, geometry.affine
