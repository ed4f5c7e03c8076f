"""Checks on an image file made from its header alone, before any voxel is allocated or read.

A header can lie: a NIfTI that declares 1024³ int16 over 4 kB of data makes nibabel allocate 2 GiB
before failing (and 32767³ ends in a bare ``MemoryError`` that blames the machine, not the file).
:func:`check_declared_size` compares what the header declares with what the file holds, and with a
sane maximum (:data:`MAX_VOXELS`) and the memory available, and refuses with the file's name. :func:`check_affine` refuses a
geometry that cannot place voxels in space (zero or non-finite spacing), and :func:`nifti_geometry_note`
says what nibabel assumes for a NIfTI without qform/sform. :func:`itk_reason` turns ITK's multi-line
exception dump into its one line of reason.

Why our own: nibabel and SimpleITK check none of this before reading, and MONAI reads through them.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import GeometryError, InputError

logger = logging.getLogger(__name__)

MAX_VOXELS = (
    2**31
)  # 1290³: far above any CT or MRI (a 512 × 512 × 3000 CT is 0.8e9), below what a workstation holds as float32
_CHUNK = 1 << 20
_ITK_TYPES = {
    "MET_UCHAR": 1,
    "MET_CHAR": 1,
    "MET_USHORT": 2,
    "MET_SHORT": 2,
    "MET_UINT": 4,
    "MET_INT": 4,
    "MET_ULONG": 8,
    "MET_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_LONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_NRRD_TYPES = {
    "uchar": 1,
    "unsigned char": 1,
    "uint8": 1,
    "uint8_t": 1,
    "signed char": 1,
    "int8": 1,
    "int8_t": 1,
    "char": 1,
    "short": 2,
    "short int": 2,
    "signed short": 2,
    "int16": 2,
    "int16_t": 2,
    "ushort": 2,
    "unsigned short": 2,
    "uint16": 2,
    "uint16_t": 2,
    "int": 4,
    "signed int": 4,
    "int32": 4,
    "int32_t": 4,
    "uint": 4,
    "unsigned int": 4,
    "uint32": 4,
    "uint32_t": 4,
    "longlong": 8,
    "long long": 8,
    "int64": 8,
    "int64_t": 8,
    "ulonglong": 8,
    "unsigned long long": 8,
    "uint64": 8,
    "uint64_t": 8,
    "float": 4,
    "double": 8,
}


def _gzip_size_at_least(path: Path, needed: int) -> int:
    """Bytes a gzip file decompresses to, counted up to ``needed`` (stops there; corrupt data counts as the end)."""
    with path.open("rb") as handle:
        handle.seek(-4, os.SEEK_END)
        trailer = int.from_bytes(handle.read(4), "little")  # ISIZE: size mod 2**32 of the last member
    if needed < 2**32 and trailer == needed % 2**32:
        return needed
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < needed:
                block = stream.read(min(_CHUNK, needed - total))
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, zlib.error):
        pass
    return total


def _stream_size_at_least(path: Path, offset: int, needed: int) -> int:
    """Bytes a zlib or gzip stream starting at ``offset`` decompresses to, counted up to ``needed``
    (corrupt data count as the end). For MetaImage ``CompressedData`` and NRRD ``gzip`` encoding: ITK
    prints "Uncompress failed" for a damaged stream and returns an image of zeros, without raising."""
    inflater = zlib.decompressobj(wbits=47)  # zlib or gzip header, detected
    total = 0
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            while total < needed:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                total += len(inflater.decompress(chunk, needed - total + 1))
                while inflater.unconsumed_tail and total < needed:
                    total += len(inflater.decompress(inflater.unconsumed_tail, needed - total + 1))
                if inflater.eof:
                    break
    except zlib.error:
        pass
    return min(total, needed)


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux ``/proc/meminfo``), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _declared(shape: tuple[int, ...], itemsize: int) -> str:
    return f"{' × '.join(map(str, shape))} voxels of {itemsize} byte{'s' if itemsize != 1 else ''}"


def _refuse_declared(path: Path, shape: tuple[int, ...], itemsize: int) -> None:
    """Dimensions, the maximum and the memory available, from the header alone."""
    voxels = int(np.prod(shape, dtype=np.float64))
    if any(n <= 0 for n in shape):
        raise InputError(
            f"{str(path)!r}: the header declares {_declared(shape, itemsize)}; expected every dimension >= 1"
        )
    if voxels > MAX_VOXELS:
        raise InputError(
            f"{str(path)!r}: the header declares {_declared(shape, itemsize)} ({voxels * itemsize / 2**30:.1f} GiB); "
            f"expected at most {MAX_VOXELS:,} voxels (a damaged or hostile header?)"
        )
    free = available_memory()
    # Loading holds the data and a float32 copy (about twice its size). A gzip bomb is honest about its
    # size, so this is what stops it, before anything is decompressed.
    if free is not None and 2 * voxels * max(itemsize, 4) > free:
        raise InputError(
            f"{str(path)!r}: the header declares {_declared(shape, itemsize)} ({voxels * itemsize / 2**30:.1f} GiB); "
            f"loading it needs about {2 * voxels * max(itemsize, 4) / 2**30:.1f} GiB, more than the "
            f"{free / 2**30:.1f} GiB of memory available",
            hint="free memory, or crop/resample the volume first",
        )


def _refuse_short(path: Path, shape: tuple[int, ...], itemsize: int, holds: int, needed: int) -> None:
    """The file holds less than the header declares."""
    if holds < needed:
        raise InputError(
            f"{str(path)!r}: the header declares {_declared(shape, itemsize)}, which needs {needed:,} bytes, "
            f"but the file holds only {holds:,} (truncated, or the header lies)"
        )


def _text_header(path: Path, *, limit: int = 65536) -> tuple[dict[str, str], int]:
    """``key: value`` / ``key = value`` lines of a NRRD or MetaImage header and the header's byte length."""
    with path.open("rb") as handle:
        head = handle.read(limit)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").strip()
        if not line:
            if path.suffix.lower() in (".nrrd", ".nhdr"):
                break  # NRRD: a blank line ends the header
            continue
        match = re.match(r"([^:=#][^:=]*?)\s*(:=|:|=)\s*(.*)$", line)
        if not match:
            continue  # the NRRD magic line, comments
        key, value = match.group(1), match.group(3)
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break  # MetaImage: the data follow this line
    return fields, min(offset, len(head))


def check_header(path: str | os.PathLike[str], *, allow_external_data: bool = False) -> None:
    """Everything checked from an image file's header before its voxels are read.

    :func:`check_declared_size`, and for NIfTI :func:`nifti_geometry_note`; the NIfTI header is read
    once, as stored.

    Raises:
        InputError / GeometryError: see those functions.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        check_declared_size(path, allow_external_data=allow_external_data)
        return
    try:
        header = raw_nifti_header(path)
    except Exception:
        return  # the reader reports an unreadable header
    check_declared_size(path, nifti_header=header)
    nifti_geometry_note(path, header)


def check_declared_size(
    path: str | os.PathLike[str], *, nifti_header: Any = None, allow_external_data: bool = False
) -> None:
    """Refuse a file whose header declares more voxels than it holds, more than :data:`MAX_VOXELS`,
    or more than the memory available can load; and a detached header (MetaImage ``ElementDataFile``,
    NRRD ``data file``) whose data file lies outside the header's folder (``../../elsewhere/scan.raw``,
    an absolute path) unless ``allow_external_data``: a header is a few lines anyone can write, and
    it would make voxpipe read, segment and score a file the user never named.

    NIfTI (``.nii``, ``.nii.gz``), NRRD/NHDR (raw or gzip data, attached or detached) and MetaImage
    (``.mha``/``.mhd``, raw or compressed). Compressed data are counted by decompressing only up to
    the declared size, and only when the gzip trailer does not already agree. Headers that cannot
    be parsed here are left to the reader (which then fails with its own message).

    Raises:
        InputError: the declared size is impossible, too large, or larger than the data.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        try:
            header = nifti_header if nifti_header is not None else raw_nifti_header(path)
            shape = tuple(int(n) for n in header.get_data_shape())
            itemsize = int(np.dtype(header.get_data_dtype()).itemsize)
        except Exception:
            return  # the reader reports it
        needed = int(header["vox_offset"]) + int(np.prod(shape, dtype=np.float64)) * itemsize
        _refuse_declared(path, shape, itemsize)
        holds = _gzip_size_at_least(path, needed) if name.endswith(".gz") else path.stat().st_size
        _refuse_short(path, shape, itemsize, holds, needed)
        return
    if name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        fields, header_bytes = _text_header(path)
        nrrd = name.endswith((".nrrd", ".nhdr"))
        _refuse_malformed_text_header(path, fields, nrrd=nrrd)
        try:
            if nrrd:
                shape = tuple(int(v) for v in fields["sizes"].split())
                itemsize = _NRRD_TYPES[fields["type"].lower()]
                encoding = fields.get("encoding", "raw").lower()
                data_file = fields.get("data file") or fields.get("datafile")
                compressed = (
                    encoding != "raw"
                )  # gzip/bzip2/text/hex: only the maximum is checked from the header
            else:
                shape = tuple(int(v) for v in fields["dimsize"].split())
                itemsize = _ITK_TYPES[fields["elementtype"].upper()] * int(
                    fields.get("elementnumberofchannels", "1")
                )
                compressed = fields.get("compresseddata", "false").lower() == "true"
                data_file = fields.get("elementdatafile", "LOCAL")
                data_file = None if data_file.upper() == "LOCAL" else data_file
        except (KeyError, ValueError):
            return  # the reader reports a malformed header
        data_bytes = int(np.prod(shape, dtype=np.float64)) * itemsize
        _refuse_declared(path, shape, itemsize)
        if data_file and not allow_external_data and data_file.upper() != "LIST":
            named = data_file.split()[0]  # a "%03d.raw 1 10 1" pattern: its first word is the name
            where = (path.parent / named).resolve()
            if not where.is_relative_to(path.parent.resolve()):
                raise InputError(
                    f"{str(path)!r}: the header's data file {data_file!r} lies outside the header's folder "
                    f"({str(where)!r}); expected the data beside the header",
                    hint="move the data file next to the header, or allow external data files explicitly",
                )
        if data_file and (data_file.upper() == "LIST" or "%" in data_file or " " in data_file.strip()):
            return  # several data files: left to the reader
        source = (path.parent / data_file) if data_file else path
        if not source.is_file():
            raise InputError(
                f"{str(path)!r}: the header names the data file {data_file!r}, found no such file beside it"
            )
        offset = 0 if data_file else header_bytes
        if compressed:
            encoding = fields.get("encoding", "gzip").lower() if nrrd else "zlib"
            if encoding in ("gzip", "gz", "zlib"):  # ITK does not raise on a damaged stream: count it here
                holds = _stream_size_at_least(source, offset, data_bytes)
                _refuse_short(path, shape, itemsize, holds, data_bytes)
            return
        _refuse_short(path, shape, itemsize, source.stat().st_size - offset, data_bytes)


def _refuse_malformed_text_header(path: Path, fields: dict[str, str], *, nrrd: bool) -> None:
    """The fields ITK's NRRD and MetaImage readers need, checked here with a one-line message (ITK prints
    its own complaint to the process's stderr before raising, which voxpipe would have to capture).

    Raises:
        InputError: a missing or malformed dimension, size or element type.
    """
    ndims_key, sizes_key, type_key = (
        ("dimension", "sizes", "type") if nrrd else ("ndims", "dimsize", "elementtype")
    )
    types = _NRRD_TYPES if nrrd else _ITK_TYPES
    shown = {
        "dimension": "dimension",
        "sizes": "sizes",
        "type": "type",
        "ndims": "NDims",
        "dimsize": "DimSize",
    }
    shown["elementtype"] = "ElementType"
    for key in (ndims_key, sizes_key, type_key):
        if key not in fields:
            raise InputError(f"{str(path)!r}: the header has no {shown[key]} field; expected one")
    try:
        ndims = int(fields[ndims_key])
        sizes = [int(v) for v in fields[sizes_key].split()]
    except ValueError:
        raise InputError(
            f"{str(path)!r}: expected whole numbers in {shown[ndims_key]} and {shown[sizes_key]}, found "
            f"{fields[ndims_key]!r} and {fields[sizes_key]!r}"
        ) from None
    if len(sizes) != ndims or any(n <= 0 for n in sizes):
        raise InputError(
            f"{str(path)!r}: {shown[sizes_key]} {fields[sizes_key]!r}: expected {ndims} positive sizes ({shown[ndims_key]} {ndims})"
        )
    kind = fields[type_key].lower() if nrrd else fields[type_key].upper()
    if kind not in types:
        raise InputError(
            f"{str(path)!r}: {shown[type_key]} {fields[type_key]!r}: expected one of {', '.join(sorted(types))}"
        )


def check_affine(path: str | os.PathLike[str], affine: np.ndarray) -> None:
    """Refuse a voxel-to-world affine that cannot place voxels (non-finite, or a zero spacing).

    Raises:
        GeometryError: names the file and the axis.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise GeometryError(
            f"{str(path)!r}: expected a finite 4×4 voxel-to-world affine, found {affine.tolist()}"
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for axis, value in enumerate(spacing):
        if not value > 1e-9:
            raise GeometryError(
                f"{str(path)!r}: voxel spacing along axis {axis} is {value:g} mm; expected > 0 "
                f"(the header gives no usable geometry for that axis)"
            )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12 * float(np.prod(spacing)):
        raise GeometryError(
            f"{str(path)!r}: the voxel axes are parallel (singular direction matrix); expected three independent axes"
        )


def raw_nifti_header(path: str | os.PathLike[str]) -> Any:
    """The NIfTI header as stored: nibabel's loader silently "fixes" some fields (pixdim 0 becomes 1)."""
    import nibabel as nib

    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        start = handle.read(4)
        handle.seek(0)
        size = (
            int.from_bytes(start, "little")
            if int.from_bytes(start, "little") in (348, 540)
            else int.from_bytes(start, "big")
        )
        klass = nib.Nifti2Header if size == 540 else nib.Nifti1Header
        return klass.from_fileobj(handle, check=False)


def nifti_geometry_note(path: str | os.PathLike[str], header: Any = None) -> None:
    """Refuse a NIfTI whose qform and sform disagree; refuse or explain the geometry of one that has
    neither a qform nor an sform.

    nibabel then falls back to the pixdim scaling with the origin at the volume centre; with a zero
    pixdim it also sets that spacing to 1 mm with a warning that names no file. Refuse that case
    (the spacing is unknown); otherwise log, naming the file, what was assumed.

    Raises:
        GeometryError: no qform/sform and a zero, negative or non-finite pixdim.
    """
    if header is None:
        try:
            header = raw_nifti_header(path)
        except Exception:
            return  # the reader reports an unreadable header
    if int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0:
        _refuse_disagreeing_forms(path, header)
    if int(header["qform_code"]) or int(header["sform_code"]):
        return
    zooms = [float(v) for v in np.asarray(header["pixdim"][1:4], dtype=float)]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise GeometryError(
            f"{str(path)!r}: no qform or sform, and pixdim[1:4] = {zooms}; expected positive voxel "
            f"sizes in mm (the spacing is unknown, so the volume cannot be placed in space)"
        )
    logger.warning(
        "%s: no qform or sform (both codes 0): assumed voxel sizes %s mm from pixdim, axes along RAS, origin "
        "at the volume centre (nibabel's fallback)",
        path,
        zooms,
    )


FORM_DIRECTION_TOL = 1e-2  # direction cosines: 0.6°, far above the quaternion's float32 rounding
FORM_ORIGIN_TOL_MM = 1.0
FORM_SPACING_REL_TOL = 1e-2


def _refuse_disagreeing_forms(path: str | os.PathLike[str], header: Any) -> None:
    """A NIfTI whose qform and sform (both set) place the voxels differently is refused.

    nibabel (and MONAI's NibabelReader) use the sform, ITK (SimpleITK, MONAI's ITKReader) may use the
    qform: the same file would be segmented in one place and scored or exported in another.

    Raises:
        GeometryError: the two forms differ in direction, spacing or origin beyond the tolerances above.
    """
    qform = np.asarray(header.get_qform(), dtype=float)
    sform = np.asarray(header.get_sform(), dtype=float)
    if not (np.isfinite(qform).all() and np.isfinite(sform).all()):
        return  # check_affine reports non-finite geometry
    q_spacing, s_spacing = np.linalg.norm(qform[:3, :3], axis=0), np.linalg.norm(sform[:3, :3], axis=0)
    if not ((q_spacing > 0).all() and (s_spacing > 0).all()):
        return
    angle = float(np.abs(qform[:3, :3] / q_spacing - sform[:3, :3] / s_spacing).max())
    shift = float(np.linalg.norm(qform[:3, 3] - sform[:3, 3]))
    scale = float(np.abs(q_spacing / s_spacing - 1).max())
    if angle > FORM_DIRECTION_TOL or shift > FORM_ORIGIN_TOL_MM or scale > FORM_SPACING_REL_TOL:
        raise GeometryError(
            f"{str(path)!r}: the qform and sform disagree (direction cosines differ by up to {angle:.3g}, origins "
            f"by {shift:.3g} mm, spacings by {100 * scale:.3g} %); expected one geometry: readers differ in which "
            "they use, so the image would land in different places",
            hint="fix the header: set the code of the wrong form to 0 (e.g. nibabel's set_qform(None) or set_sform(None))",
        )


def itk_reason(error: BaseException) -> str:
    """The one line of reason in an ITK exception (``ITK ERROR: ImageFileReader(0x..): <reason>``)."""
    text = str(error)
    match = re.search(r"ITK ERROR: [^:]*\): *(.+)", text)
    reason = match.group(1) if match else next((line for line in text.splitlines() if line.strip()), text)
    return " ".join(reason.split())[:300]


def native_messages(
    path: str | os.PathLike[str], *, header_only: bool = False, timeout: float = 60.0
) -> list[str]:
    """What ITK's C++ readers print about ``path`` when reading it fails, from a reading in a child process.

    ITK's MetaIO and NRRD IO print their parse errors straight to file descriptors 1 and 2. Capturing
    them in this process would mean redirecting those descriptors for every thread (the prefetch
    thread, ``voxpipe serve``'s workers): their log lines would vanish or become this file's reason.
    So only after a read has failed, the file is read again in a child whose output is captured.
    """
    import subprocess

    action = "r.ReadImageInformation()" if header_only else "r.Execute()"
    code = f"import sys, SimpleITK as s; r = s.ImageFileReader(); r.SetFileName(sys.argv[1]); {action}"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    return [line for line in lines if not line.startswith(("Traceback", "File ", "RuntimeError", "^"))]


def with_native_reason(reason: str, lines: list[str]) -> str:
    """``reason`` preceded by the first line a native library printed, when it printed one."""
    first = next((line for line in lines if "warning" not in line.lower()), None)
    return f"{first.rstrip('.')}; {reason}" if first and first not in reason else reason
