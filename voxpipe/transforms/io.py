"""Loading and writing of volumes (atomically: :mod:`voxpipe.transforms.files`), and the bundle transform that writes predictions.

Contract: a volume is a numpy array indexed ``(x, y, z)`` (voxel axes as stored) plus a 4×4 affine
mapping voxel indices to RAS+ world coordinates in mm, the nibabel convention. NIfTI goes through
nibabel so the stored sform/qform is reproduced exactly; NRRD/NHDR/MHA/MHD go through SimpleITK (whose
LPS direction is converted to RAS); a folder is a DICOM series, loaded and checked by
:mod:`voxpipe.transforms.dicom`. Label maps are cast to integers, after checking that the stored
values really are integral. Writers (NIfTI, NRRD, MHA: single-file formats only) never leave a
partial file: they write a temporary file next to the target and rename it.

Inside MONAI chains use :class:`LoadVolumed` (or ``LoadImaged(reader=VolumeReader())``, which
however falls back to MONAI's readers on files voxpipe refuses): the same loaders, returning ``MetaTensor`` objects with the RAS affine that ``Orientationd``/``Spacingd``
and ``Invertd`` expect.

MONAI's ``SaveImaged`` is not used for predictions because it writes in place (a killed run leaves a
truncated file) and rebuilds the header from the resampled affine, which can drift from the source
header by floating-point error; :class:`SaveLabelLiked` copies the source header instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys

from voxpipe.errors import GeometryError, InputError, OutputError
from voxpipe.transforms.files import atomic_path
from voxpipe.transforms.headers import (
    check_affine,
    check_header,
    itk_reason,
    native_messages,
    with_native_reason,
)

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # single-file formats: the rename is atomic
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    """The case identifier of an image file (its name without the image-format suffix) or of a DICOM
    series folder (its whole name: folders named by series UID hold dots that are not suffixes)."""
    name = Path(path).name
    suffix = volume_suffix(name)
    if suffix:
        return name[: len(name) - len(suffix)]
    return name if Path(path).is_dir() else Path(name).stem


def find_volumes(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (sorted; hidden and temporary files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{str(root)!r}: expected a folder of images, found no such folder")
    return sorted(
        p for p in root.iterdir() if p.is_file() and volume_suffix(p) and not p.name.startswith(".")
    )


def load_volume(
    path: str | os.PathLike[str],
    *,
    label: bool = False,
    series_uid: str | None = None,
    finite: bool = True,
    channels: bool = False,
    allow_external_data: bool = False,
) -> Volume:
    """Load a NIfTI, NRRD/NHDR or MHA/MHD file, or a DICOM series folder, as :class:`Volume`.

    Args:
        path: image file, or a folder holding a DICOM series (searched recursively).
        label: the volume is a label map: cast to the smallest integer type holding its values,
            after checking that they are integral and finite (see :func:`as_label`).
        series_uid: for a DICOM folder with several series, the SeriesInstanceUID to load
            (default: the series with most slices, see :mod:`voxpipe.transforms.dicom`).
        finite: refuse NaN/Inf and complex intensities (:func:`check_intensities`); ``False`` only
            for tools that report such voxels themselves (``voxpipe data check``).
        channels: accept a 4D NIfTI image (x, y, z, c): the MSD stores multi-contrast MRI that way
            (Task01 BrainTumour, Task05 Prostate); its array is returned channel-first ``(C, X, Y, Z)``.
            A 3D image stays ``(X, Y, Z)``.
        allow_external_data: read a detached header (MHD/NHDR) whose data file lies outside its folder
            (refused by default: :func:`voxpipe.transforms.headers.check_declared_size`).

    Raises:
        InputError: the file is missing, has an unknown suffix, a header that declares more data than
            the file holds, cannot be read, has NaN/Inf/complex intensities or an affine that places no
            voxel, is a label map with non-integral values, or is a DICOM series with refused geometry;
            the message names the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        from voxpipe.transforms.dicom import load_dicom_series

        array, affine, _ = load_dicom_series(path, series_uid=series_uid)
        return Volume(as_label(array, path), affine, path) if label else Volume(array, affine, path)
    suffix = volume_suffix(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: expected an image file or DICOM folder, found nothing at that path")
    if not suffix:
        raise InputError(
            f"{str(path)!r}: unknown image format; expected one of {', '.join(VOLUME_SUFFIXES)} or a DICOM folder"
        )
    check_header(path, allow_external_data=allow_external_data)  # from the header alone, before allocating
    try:
        if suffix in (".nii.gz", ".nii"):
            with _quiet_nibabel():
                image = nib.load(str(path))
                array, affine = np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=float)
        else:
            image = sitk.ReadImage(str(path))
            if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
                raise InputError(
                    f"{str(path)!r}: expected a 3D single-component image, found {image.GetDimension()}D with "
                    f"{image.GetNumberOfComponentsPerPixel()} components"
                )
            array, affine = sitk.GetArrayFromImage(image).transpose(2, 1, 0), sitk_affine(image)
    except InputError:
        raise
    except MemoryError as error:
        raise InputError(f"{str(path)!r}: not enough memory to load it ({_declared_shape(path)})") from error
    except Exception as error:  # the readers raise many unrelated types for corrupt files
        native = native_messages(path) if suffix not in (".nii.gz", ".nii") else []
        raise InputError(
            f"{str(path)!r}: could not be read as {suffix} ({with_native_reason(itk_reason(error), native)})"
        ) from error
    if channels and not label and array.ndim == 4 and array.shape[3] >= 1:
        array = np.moveaxis(np.asarray(array), 3, 0)
        check_affine(path, affine)
        return Volume(check_intensities(array, path) if finite else array, affine, path)
    if array.ndim != 3:
        what = " (4D: several channels? this reader expects one)" if array.ndim == 4 else ""
        raise InputError(f"{str(path)!r}: expected a 3D volume, found array shape {array.shape}{what}")
    check_affine(path, affine)
    if label:
        return Volume(as_label(array, path), affine, path)
    return Volume(check_intensities(array, path) if finite else array, affine, path)


def load_channels(paths: Sequence[str | os.PathLike[str]], *, finite: bool = True) -> Volume:
    """Several 3D images of one case (one file per channel, nnU-Net's ``case_0000``, ``case_0001``...) as
    one channel-first volume ``(C, X, Y, Z)``; a single path may be a 4D NIfTI (see :func:`load_volume`).

    Raises:
        GeometryError: the channels are not on one grid (the file that differs is named).
    """
    volumes = [load_volume(p, channels=len(paths) == 1, finite=finite) for p in paths]
    first = volumes[0]
    if len(volumes) == 1:
        return first
    for volume in volumes[1:]:
        if volume.array.shape != first.array.shape or not np.allclose(volume.affine, first.affine, atol=1e-3):
            raise GeometryError(
                f"{str(volume.path)!r}: expected the grid of channel 0 {str(first.path)!r} (shape "
                f"{list(first.array.shape)}), found shape {list(volume.array.shape)} and another affine"
            )
    return Volume(np.stack([v.array for v in volumes]), first.affine, first.path)


def check_intensities(array: np.ndarray, path: str | os.PathLike[str] = "<array>") -> np.ndarray:
    """``array`` if its voxels are real and finite; NaN/Inf or complex intensities are refused.

    A NaN voxel becomes NaN logits and NaN statistics (``mean=-inf`` in ``statistics.csv``) without
    any error, and a complex volume would silently lose its imaginary part: refuse both, naming the file.

    Raises:
        InputError: complex dtype, or non-finite voxels (how many, and of which kind).
    """
    if array.dtype.kind == "c":
        raise InputError(
            f"{str(path)!r}: voxels are {array.dtype} (complex); expected real intensities",
            hint="store the magnitude (or the channel you mean) as a real image",
        )
    if array.dtype.kind not in "biuf":
        raise InputError(f"{str(path)!r}: voxels are {array.dtype}; expected a numeric image")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            nan = int(np.isnan(array).sum())
            inf = int((~finite).sum()) - nan
            raise InputError(
                f"{str(path)!r}: {nan} NaN and {inf} ±Inf voxels; expected finite intensities",
                hint="replace them (e.g. with the background value) before segmenting",
            )
    return array


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs header fixes without the file's name; voxpipe says what it assumed itself."""
    nib_logger = logging.getLogger("nibabel.global")
    level = nib_logger.level
    nib_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nib_logger.setLevel(level)


def _declared_shape(path: Path) -> str:
    try:
        shape, _ = read_geometry(path)
        return f"{' × '.join(map(str, shape))} voxels"
    except InputError:
        return "size unknown"


def as_label(array: np.ndarray, path: str | os.PathLike[str] = "<array>") -> np.ndarray:
    """``array`` as the smallest integer type (uint8, int16, int32) that holds its values.

    Label maps arrive as uint8, int16, uint16, int32 or float32 depending on the tool that wrote
    them; float ones are accepted only when every value is finite and integral.

    Raises:
        InputError: NaN/Inf or non-integral values (the message gives how many and an example).
    """
    array = np.asarray(array)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise InputError(
                f"{str(path)!r}: label map has {int((~finite).sum())} NaN/Inf voxels; expected integer labels"
            )
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            raise InputError(
                f"{str(path)!r}: label map has {int(fractional.sum())} non-integral voxels (e.g. {example:g}); "
                "expected integer labels (a resampled or probability map?)"
            )
    elif array.dtype.kind not in "iu":
        raise InputError(f"{str(path)!r}: expected a numeric label map, found dtype {array.dtype}")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype, copy=False)
    raise InputError(f"{str(path)!r}: label values {low}..{high} do not fit int32")


def sitk_affine(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """The RAS voxel-to-world affine (4×4, mm) of a 3D SimpleITK image or header (stored as LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    affine[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine


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
    if suffix not in WRITE_SUFFIXES:
        raise InputError(
            f"{str(path)!r}: output format {suffix or Path(path).suffix or '(none)'!r} cannot be written atomically; "
            f"expected one of {', '.join(WRITE_SUFFIXES)} (.nhdr/.mhd keep the data in a second file)"
        )
    if suffix in (".nii.gz", ".nii"):
        return save_nifti(array, affine, path)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as error:  # ITK reports a full disk or a permission problem as a RuntimeError
            space = "No space left" in str(error) or "disk" in str(error).lower()
            raise OutputError(
                f"{str(path)!r}: could not be written ({itk_reason(error)})",
                errno=errno.ENOSPC if space else None,
            ) from error
    return Path(path)


def _check_shape(found: Sequence[int], expected: Sequence[int], reference: Path) -> None:
    if tuple(found) != tuple(expected):
        raise GeometryError(
            f"{str(reference)!r}: prediction shape {tuple(found)} does not match the image grid {tuple(expected)}"
        )


class SaveLabelLiked(MapTransform):
    """Write ``data[key]`` (a (1, x, y, z) or (x, y, z) label map) on the grid of its source image.

    Used as the last post-processing step of inference bundles, after
    :class:`voxpipe.transforms.invert.ResampleArgmaxd` (or MONAI's ``Invertd``) has brought the
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

    def output_path(self, reference: str | os.PathLike[str], case: str | None = None) -> Path:
        """Where the prediction for the source image ``reference`` (case id ``case``, default its file name) is written."""
        return self.output_dir / f"{case or case_id(reference)}{self.output_postfix}{self.output_ext}"

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
            target = self.output_path(reference, source.meta.get("case_id"))
            write_label_like(array.astype(self.dtype), reference, target)
            logger.info("wrote %s", target)
        return d


def read_geometry(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape (x, y, z) and RAS affine of an image file, from its header only (no voxel data).

    Raises:
        InputError: the file is missing or its header cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        from voxpipe.transforms.dicom import dicom_geometry

        return dicom_geometry(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: expected an image file or DICOM folder, found nothing at that path")
    check_header(path)
    try:
        if volume_suffix(path) in (".nii.gz", ".nii"):
            with _quiet_nibabel():
                image = nib.load(str(path))
                shape, affine = tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, dtype=float)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape, affine = tuple(int(n) for n in reader.GetSize()[:3]), sitk_affine(reader)
    except InputError:
        raise
    except Exception as error:  # nibabel and SimpleITK raise many unrelated types for bad headers
        native = (
            native_messages(path, header_only=True) if volume_suffix(path) not in (".nii.gz", ".nii") else []
        )
        raise InputError(
            f"{str(path)!r}: could not read the image header ({with_native_reason(itk_reason(error), native)})"
        ) from error
    check_affine(path, affine)
    return shape, affine


class VolumeReader(ImageReader):
    """MONAI ``ImageReader`` over :func:`load_volume`: NIfTI, NRRD/NHDR, MHA/MHD and DICOM folders.

    Use as ``LoadImaged(keys, reader=VolumeReader())`` (but ``LoadImage`` falls back to its default
    readers when this one refuses a file; :class:`LoadVolumed` does not). The returned metadata holds the RAS
    ``affine``/``original_affine`` and ``spatial_shape`` as MONAI's own readers do, so
    ``Orientationd``, ``Spacingd`` and ``Invertd`` work unchanged. ``label=True`` applies
    :func:`as_label` (integer cast with the integrality check).
    """

    def __init__(self, *, label: bool = False, series_uid: str | None = None, channels: bool = False) -> None:
        super().__init__()
        self.label = label
        self.series_uid = series_uid
        self.channels = channels

    def verify_suffix(self, filename: Sequence[os.PathLike[str] | str] | os.PathLike[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or volume_suffix(n) for n in names)

    def read(self, data: Sequence[os.PathLike[str] | str] | os.PathLike[str] | str, **kwargs: Any) -> Volume:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if self.channels and not self.label and names:
            return (
                load_channels(names)
                if len(names) > 1
                else load_volume(names[0], series_uid=self.series_uid, channels=True)
            )
        if len(names) != 1:
            raise InputError(f"{names!r}: VolumeReader reads one volume (a file or a DICOM folder) at a time")
        return load_volume(names[0], label=self.label, series_uid=self.series_uid)

    def get_data(self, img: Volume) -> tuple[np.ndarray, dict[str, Any]]:
        with_channels = img.array.ndim == 4  # (C, X, Y, Z) from load_channels: EnsureChannelFirst keeps it
        meta = {
            MetaKeys.AFFINE: img.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: img.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.array.shape[1:] if with_channels else img.array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0 if with_channels else float("nan"),
            "pixdim": np.asarray([1.0, *img.spacing, 1, 1, 1, 1]),
        }
        return np.asarray(img.array), meta


class LoadVolumed(MapTransform):
    """Dict transform: load ``keys`` with :func:`load_volume` into ``MetaTensor`` objects.

    With ``channels`` > 1 an image has that many channels: a 4D NIfTI (x, y, z, c) or a list of 3D
    files on one grid (:func:`load_channels`); it is then channel-first ``(C, X, Y, Z)`` and
    ``EnsureChannelFirstd`` leaves it so. With 1 (the default) a 4D image is refused. Images become float32; keys in ``label_keys`` keep the integer type chosen by
    :func:`as_label` (non-integral label files are refused). ``meta["filename_or_obj"]`` is the
    source path, as with ``LoadImaged``, so :class:`SaveLabelLiked` and ``Invertd`` work.

    Not built on ``LoadImage``: when a user-given reader fails, ``LoadImage`` silently tries its
    default readers, so a file voxpipe refuses (a 4D "label", a gapped DICOM series) would load
    anyway; here the refusal and its message reach the user.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        *,
        label_keys: str | Sequence[str] = ("label",),
        image_dtype: Any = np.float32,
        channels: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.image_dtype = image_dtype
        if channels < 1:
            raise InputError(f"LoadVolumed channels: expected 1 or more, found {channels}")
        self.channels = int(channels)
        self._image, self._label = VolumeReader(channels=self.channels > 1), VolumeReader(label=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            is_label = key in self.label_keys
            reader = self._label if is_label else self._image
            source = d[key]
            if not is_label and self.channels == 1 and isinstance(source, (list, tuple)) and len(source) > 1:
                raise InputError(
                    f"{str(source[0])!r}: expected one image file per case (a 1-channel bundle), found "
                    f"{len(source)} channel files"
                )
            array, meta = reader.get_data(reader.read(source))
            found = array.shape[0] if array.ndim == 4 else 1
            if not is_label and self.channels > 1 and found != self.channels:
                first = source[0] if isinstance(source, (list, tuple)) else source
                raise InputError(
                    f"{str(first)!r}: expected {self.channels} channels (a 4D image or one file per channel), "
                    f"found {found}"
                )
            if not is_label:
                array = array.astype(self.image_dtype, copy=False)
            if isinstance(
                source, (list, tuple)
            ):  # one file per channel: named by channel 0, the case without _0000
                meta["filename_or_obj"] = str(source[0])
                meta["case_id"] = re.sub(r"_\d{4}$", "", case_id(source[0]))
            else:
                meta["filename_or_obj"] = str(source)
            d[key] = MetaTensor.ensure_torch_and_prune_meta(array, meta)
        return d


def place_on_grid(
    array: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    *,
    path: str | os.PathLike[str],
    tolerance: float = 1e-2,
) -> np.ndarray:
    """A label map stored on its own lattice (cropped, flipped, axes permuted) placed exactly on a target grid.

    Exact or refused: the two grids must share spacing and axes up to order and sign, and ``array``'s
    first voxel must lie on a target voxel (within ``tolerance`` voxels). Voxels outside the target
    must be empty. Nothing is interpolated: label maps saved by a viewer (a cropped Slicer
    ``.seg.nrrd``, a NIfTI written in another orientation) come back voxel for voxel.

    Raises:
        GeometryError: the lattices differ, or labelled voxels fall outside the target grid.
    """
    array = np.asarray(array)
    source, target = np.asarray(affine, dtype=float), np.asarray(target_affine, dtype=float)
    relative = np.linalg.solve(target[:3, :3], source[:3, :3])
    rounded = np.round(relative)
    permutation = np.abs(rounded).argmax(axis=0)
    describe = (
        f"its grid (spacing {np.round(np.linalg.norm(source[:3, :3], axis=0), 4).tolist()} mm) vs the image's "
        f"(spacing {np.round(np.linalg.norm(target[:3, :3], axis=0), 4).tolist()} mm, shape {list(shape)})"
    )
    if (
        np.abs(relative - rounded).max() > 1e-3
        or sorted(permutation.tolist()) != [0, 1, 2]
        or not np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
    ):
        raise GeometryError(
            f"{str(path)!r}: expected a label map on the image's voxel grid, found another lattice: {describe}"
        )
    start = np.linalg.solve(target, source[:, 3])[:3]
    if np.abs(start - np.round(start)).max() > tolerance:
        raise GeometryError(
            f"{str(path)!r}: expected a label map on the image's voxel grid, found it shifted by "
            f"{np.round(start - np.round(start), 3).tolist()} voxels: {describe}"
        )
    start = np.round(start).astype(int)
    order = [int(np.flatnonzero(permutation == axis)[0]) for axis in range(3)]
    placed = np.transpose(array, order)
    low = start.copy()
    for axis, source_axis in enumerate(order):
        if rounded[axis, source_axis] < 0:
            placed = np.flip(placed, axis)
            low[axis] = start[axis] - (placed.shape[axis] - 1)
    out = np.zeros(tuple(int(s) for s in shape), dtype=array.dtype)
    lo = np.maximum(low, 0)
    hi = np.minimum(low + np.array(placed.shape), np.array(shape))
    inside = tuple(slice(int(a - b), int(c - b)) for a, b, c in zip(lo, low, hi, strict=True))
    kept = placed[inside] if np.all(hi > lo) else placed[:0, :0, :0]
    if int(np.count_nonzero(kept)) != int(np.count_nonzero(placed)):
        raise GeometryError(
            f"{str(path)!r}: {int(np.count_nonzero(placed)) - int(np.count_nonzero(kept))} labelled voxels lie "
            f"outside the image: {describe}"
        )
    if np.all(hi > lo):
        out[tuple(slice(int(a), int(c)) for a, c in zip(lo, hi, strict=True))] = kept
    return out
