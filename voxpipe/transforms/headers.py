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

import contextlib
import gzip
import logging
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterator
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


def check_header(path: str | os.PathLike[str]) -> None:
    """Everything checked from an image file's header before its voxels are read.

    :func:`check_declared_size`, and for NIfTI :func:`nifti_geometry_note`; the NIfTI header is read
    once, as stored.

    Raises:
        InputError / GeometryError: see those functions.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        check_declared_size(path)
        return
    try:
        header = raw_nifti_header(path)
    except Exception:
        return  # the reader reports an unreadable header
    check_declared_size(path, nifti_header=header)
    nifti_geometry_note(path, header)


def check_declared_size(path: str | os.PathLike[str], *, nifti_header: Any = None) -> None:
    """Refuse a file whose header declares more voxels than it holds, more than :data:`MAX_VOXELS`,
    or more than the memory available can load.

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
        if data_file and (data_file.upper() == "LIST" or "%" in data_file or " " in data_file.strip()):
            return  # several data files: left to the reader
        source = (path.parent / data_file) if data_file else path
        if not source.is_file():
            raise InputError(
                f"{str(path)!r}: the header names the data file {data_file!r}, found no such file beside it"
            )
        offset = 0 if data_file else header_bytes
        if compressed:
            return  # the maximum was checked; the reader checks the compressed stream itself
        _refuse_short(path, shape, itemsize, source.stat().st_size - offset, data_bytes)


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
    """Refuse or explain the geometry of a NIfTI file that has neither a qform nor an sform.

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


def itk_reason(error: BaseException) -> str:
    """The one line of reason in an ITK exception (``ITK ERROR: ImageFileReader(0x..): <reason>``)."""
    text = str(error)
    match = re.search(r"ITK ERROR: [^:]*\): *(.+)", text)
    reason = match.group(1) if match else next((line for line in text.splitlines() if line.strip()), text)
    return " ".join(reason.split())[:300]


@contextlib.contextmanager
def native_output_captured(lines: list[str]) -> Iterator[None]:
    """Collect what C++ code (ITK's MetaIO, NRRD IO) writes to the process's stdout/stderr into ``lines``.

    Those libraries print their parse errors straight to file descriptors 1 and 2, around Python's
    own streams; the caller folds the first line into its one-line error instead.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real descriptors (an embedded interpreter): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(
                line.strip() for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip()
            )


def with_native_reason(reason: str, lines: list[str]) -> str:
    """``reason`` preceded by the first line a native library printed, when it printed one."""
    first = next((line for line in lines if "warning" not in line.lower()), None)
    return f"{first.rstrip('.')}; {reason}" if first and first not in reason else reason
