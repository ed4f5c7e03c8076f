"""Write phantoms (or any HU volume) as DICOM CT series, well-formed or with the faults of real ones.

Why our own: the DICOM loader must be tested on oblique orientations, LPS flips, gantry tilt,
missing, duplicate and unevenly spaced slices, mixed series and single slices, and no public test
file has all of these. Each slice is a CT Image Storage object (uncompressed, explicit VR little
endian) with stored values ``HU + 1024`` and ``RescaleIntercept = -1024``, so rescaling is exercised.
File names and InstanceNumber are deliberately shuffled: a loader must sort by position.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from voxpipe.transforms.io import LPS_TO_RAS


def oblique_affine(
    spacing: Sequence[float], *, degrees: float = 20.0, origin: Sequence[float] = (-60.0, -40.0, 30.0)
) -> np.ndarray:
    """A RAS affine whose axes are rotated ``degrees`` about x then y (a double-oblique stack)."""
    a = np.radians(degrees)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_y = np.array([[np.cos(a / 2), 0, np.sin(a / 2)], [0, 1, 0], [-np.sin(a / 2), 0, np.cos(a / 2)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_y @ rot_x @ np.diag([float(s) for s in spacing])
    affine[:3, 3] = origin
    return affine


def write_dicom_series(
    hu: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike[str],
    *,
    tilt_pixels: int = 0,
    drop_slices: Sequence[int] = (),
    duplicate_slice: int | None = None,
    z_shift_mm: dict[int, float] | None = None,
    series_uid: str | None = None,
    description: str = "voxpipe phantom",
    modality: str = "CT",
    seed: int = 0,
) -> list[Path]:
    """Write ``hu`` (x, y, z, integer HU) on the RAS ``affine`` as one DICOM file per slice.

    Args:
        hu: volume in HU, indexed (x = column, y = row, z = slice).
        affine: 4×4 RAS voxel-to-world affine (mm); any orientation, flips included.
        folder: output folder (created).
        tilt_pixels: gantry tilt: slice ``k`` is positioned ``k × tilt_pixels`` rows further along
            the column direction and its content is shifted to match, so the *world* content is
            exactly ``hu`` on ``affine`` (a correct loader recovers ``hu`` where the field of view
            allows; rows shifted out are lost, shifted-in rows hold -1024 HU).
        drop_slices: slice indices not written (missing slices).
        duplicate_slice: write this slice twice (two files, one position).
        z_shift_mm: move slice ``k`` by this many mm along the normal (non-uniform spacing).
        series_uid: SeriesInstanceUID (generated when omitted).
        description: SeriesDescription.
        modality: Modality tag.
        seed: seed of the file-name / InstanceNumber shuffle.

    Returns:
        The files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir, normal = (lps[:3, i] / spacing[i] for i in range(3))
    study, frame = generate_uid(), generate_uid()
    series_uid = series_uid or generate_uid()
    slices = [k for k in range(hu.shape[2]) if k not in set(drop_slices)]
    if duplicate_slice is not None:
        slices.append(duplicate_slice)
    names = np.random.default_rng(seed).permutation(len(slices))
    written = []
    for number, (k, name) in enumerate(zip(slices, names, strict=True)):
        position = lps[:3, 3] + k * spacing[2] * normal + k * tilt_pixels * spacing[1] * col_dir
        position = position + (z_shift_mm or {}).get(k, 0.0) * normal
        plane = hu[:, :, k].T  # (rows = y, columns = x)
        if tilt_pixels:
            shift = k * tilt_pixels
            shifted = np.full_like(plane, -1024)
            if shift < plane.shape[0]:
                shifted[: plane.shape[0] - shift] = plane[shift:]
            plane = shifted
        ds = _ct_slice(plane, position, row_dir, col_dir, spacing, modality=modality)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = study, frame, series_uid
        ds.SeriesDescription = description
        ds.InstanceNumber = int(len(slices) - number)  # reversed: must not drive the order
        path = folder / f"IM{int(name):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _ct_slice(
    plane: np.ndarray,
    position: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    spacing: np.ndarray,
    *,
    modality: str,
) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "PHANTOM"
    ds.PatientName = "Phantom^Voxpipe"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing, column spacing
    ds.SliceThickness = f"{spacing[2]:.6f}"
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    stored = np.clip(np.asarray(plane, dtype=np.int32) + 1024, 0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    return ds
