"""Loading and atomic writing of volumes, and the bundle transform that writes predictions.

Contract: a volume is a numpy array indexed ``(x, y, z)`` (voxel axes as stored) plus a 4×4 affine
mapping voxel indices to RAS+ world coordinates in mm, the nibabel convention. NIfTI goes through
nibabel so the stored sform/qform is reproduced exactly; NRRD/MHA/MHD go through SimpleITK (whose LPS
direction is converted to RAS). Writers never leave a partial file: they write a temporary file next
to the target and rename it.

MONAI's ``SaveImaged`` is not used for predictions because it writes in place (a killed run leaves a
truncated file) and rebuilds the header from the resampled affine, which can drift from the source
header by floating-point error; :class:`SaveLabelLiked` copies the source header instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import MapTransform

from voxpipe.errors import GeometryError, InputError

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A loaded volume: ``array`` indexed (x, y, z) and its RAS ``affine`` (4×4, mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each stored axis."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def volume_suffix(path: str | os.PathLike[str]) -> str:
    """The image-format suffix of ``path`` (``.nii.gz`` counts as one), lower case, or ``''``."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def case_id(path: str | os.PathLike[str]) -> str:
    """The case identifier of an image file: its name without the image-format suffix."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def find_volumes(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (sorted; hidden and temporary files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{str(root)!r}: expected a folder of images, found no such folder")
    return sorted(p for p in root.iterdir() if p.is_file() and volume_suffix(p) and not p.name.startswith("."))


def load_volume(path: str | os.PathLike[str]) -> Volume:
    """Load a NIfTI, NRRD or MHA/MHD file as :class:`Volume` with a RAS affine.

    Raises:
        InputError: the file is missing, has an unknown suffix, or cannot be read; the message
            names the file and the reader's reason.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: expected an image file, found nothing at that path")
    if not suffix:
        raise InputError(
            f"{str(path)!r}: unknown image format; expected one of {', '.join(VOLUME_SUFFIXES)}"
        )
    try:
        if suffix in (".nii.gz", ".nii"):
            image = nib.load(str(path))
            return Volume(np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=float), path)
        image = sitk.ReadImage(str(path))
    except Exception as error:  # the readers raise many unrelated types for corrupt files
        raise InputError(f"{str(path)!r}: could not be read as {suffix} ({error})") from error
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(array, sitk_affine(image), path)


def sitk_affine(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """The RAS voxel-to-world affine (4×4, mm) of a 3D SimpleITK image or header (stored as LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    affine[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ affine


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same suffix); rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched, so a crash or
    a kill never leaves a half-written output under the final name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = volume_suffix(target) or target.suffix
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file (JSON, CSV, YAML) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str], *, header: Any = None
) -> Path:
    """Write ``array`` (x, y, z) with ``affine`` as NIfTI atomically; qform/sform codes = scanner."""
    image = nib.Nifti1Image(array, affine, header=header)
    if header is None:
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)


def write_label_like(
    label: np.ndarray, reference: str | os.PathLike[str], path: str | os.PathLike[str]
) -> Path:
    """Write a label map on the exact grid of the ``reference`` image file, atomically.

    The output copies the reference's geometry (NIfTI: its header affine, qform and sform; other
    formats: origin, spacing and direction through SimpleITK), so it overlays the reference voxel
    for voxel. ``label`` must be indexed (x, y, z) like the reference's stored array.

    Raises:
        GeometryError: ``label`` does not have the reference's shape.
    """
    reference = Path(reference)
    label = np.asarray(label)
    out_suffix = volume_suffix(path)
    if volume_suffix(reference) in (".nii.gz", ".nii") and out_suffix in (".nii.gz", ".nii"):
        ref_image = nib.load(str(reference))
        _check_shape(label.shape, ref_image.shape[:3], reference)
        header = ref_image.header.copy()
        header.set_data_dtype(label.dtype)
        header.set_slope_inter(1.0, 0.0)
        out = nib.Nifti1Image(label, ref_image.affine, header=header)
        out.set_qform(ref_image.get_qform(), code=int(ref_image.header["qform_code"]) or 1)
        out.set_sform(ref_image.get_sform(), code=int(ref_image.header["sform_code"]) or 1)
        with atomic_path(path) as tmp:
            nib.save(out, str(tmp))
        return Path(path)
    shape, affine = read_geometry(reference)
    _check_shape(label.shape, shape, reference)
    return write_volume(label, affine, path)


def write_volume(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` (x, y, z) with a RAS ``affine`` to NIfTI, NRRD or MHA (by suffix), atomically."""
    suffix = volume_suffix(path)
    if suffix in (".nii.gz", ".nii"):
        return save_nifti(array, affine, path)
    if not suffix:
        raise InputError(f"{str(path)!r}: unknown output format; expected one of {', '.join(VOLUME_SUFFIXES)}")
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)


def _check_shape(found: Sequence[int], expected: Sequence[int], reference: Path) -> None:
    if tuple(found) != tuple(expected):
        raise GeometryError(
            f"{str(reference)!r}: prediction shape {tuple(found)} does not match the image grid {tuple(expected)}"
        )


class SaveLabelLiked(MapTransform):
    """Write ``data[key]`` (a (1, x, y, z) or (x, y, z) label map) on the grid of its source image.

    Used as the last post-processing step of inference bundles, after ``Invertd`` has brought the
    prediction back to the source grid. The source file is ``data[reference_key].meta
    ["filename_or_obj"]``; the output is ``output_dir/<case id><output_postfix><output_ext>``.
    Before writing, the prediction's affine (tracked by MONAI through the inversion) is compared with
    the source's: a difference above ``atol_mm`` means the inversion went wrong, and is an error
    rather than a silently misplaced mask.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        *,
        output_dir: str | os.PathLike[str],
        reference_key: str = "image",
        output_postfix: str = "",
        output_ext: str = ".nii.gz",
        dtype: str = "uint8",
        atol_mm: float = 1e-3,
    ) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.reference_key = reference_key
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.dtype = np.dtype(dtype)
        self.atol_mm = atol_mm

    def output_path(self, reference: str | os.PathLike[str]) -> Path:
        """Where the prediction for the source image ``reference`` is written."""
        return self.output_dir / f"{case_id(reference)}{self.output_postfix}{self.output_ext}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = d[self.reference_key]
        reference = Path(str(source.meta["filename_or_obj"]))
        _, ref_affine = read_geometry(reference)
        for key in self.key_iterator(d):
            pred = d[key]
            affine = getattr(pred, "affine", None)
            if affine is not None:
                deviation = float(np.max(np.abs(np.asarray(affine, dtype=float) - ref_affine)))
                if deviation > self.atol_mm:
                    raise GeometryError(
                        f"{str(reference)!r}: inverted prediction affine differs from the source affine by "
                        f"{deviation:.4g} mm (tolerance {self.atol_mm} mm); the inverse transform chain "
                        "does not undo the preprocessing"
                    )
            array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            if array.ndim == 4:
                array = array[0]
            write_label_like(array.astype(self.dtype), reference, self.output_path(reference))
            logger.info("wrote %s", self.output_path(reference))
        return d


def read_geometry(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape (x, y, z) and RAS affine of an image file, from its header only (no voxel data).

    Raises:
        InputError: the file is missing or its header cannot be read.
    """
    path = Path(path)
    try:
        if volume_suffix(path) in (".nii.gz", ".nii"):
            image = nib.load(str(path))
            return tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, dtype=float)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except Exception as error:  # nibabel and SimpleITK raise many unrelated types for bad headers
        raise InputError(f"{str(path)!r}: could not read the image header ({error})") from error
    return tuple(int(n) for n in reader.GetSize()[:3]), sitk_affine(reader)
