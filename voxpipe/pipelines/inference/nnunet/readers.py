"""nnU-Net's readers: the channels of one case as the plans' ``image_reader_writer`` returns them.

``SimpleITKIO``, ``NibabelIO`` and ``NibabelIOWithReorient``: the array in (z, y, x) order, the
spacing reversed, and the geometry to write the label map back with. Why our own: nnU-Net's readers
import its whole package (and torchvision-dependent code); these give the same arrays and name the
file when it cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxpipe.errors import InputError

READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")


@dataclass
class Case:
    """An image as nnU-Net holds it between the steps."""

    data: (
        np.ndarray | None
    )  # (C, *spatial): float32, or one channel's own 8/16-bit integers; released once preprocessed
    spacing: list[float]  # nnU-Net's order (reversed from SimpleITK's)
    geometry: dict[str, Any]  # SimpleITK spacing, origin, direction, for writing
    properties: dict[str, Any] = field(default_factory=dict)


def read_case(paths: Sequence[str | os.PathLike[str]], *, reader: str = "SimpleITKIO") -> Case:
    """The channels of one case, as the nnU-Net reader the plans name returns them.

    ``SimpleITKIO``: SimpleITK's array, (z, y, x), spacing reversed. ``NibabelIO``: nibabel's data
    transposed to the same order (float64 read, as nnU-Net does, then float32). ``NibabelIOWithReorient``:
    the image turned to the closest RAS orientation first; ``case.properties["from_canonical"]`` then
    holds the turn back, which :meth:`NnUNetModel.export` applies, so label maps always come back in
    the input file's own (SimpleITK) array order and are written with its geometry.

    Raises:
        InputError: a reader other than :data:`READERS`, a file the reader cannot read, channels of
            different shapes or spacings (named).
    """
    import SimpleITK as sitk

    if reader not in READERS:
        raise InputError(
            f"plans.json: image_reader_writer: expected one of {list(READERS)}, found {reader!r}"
        )
    arrays, spacings, first, turn = [], [], None, None
    for path in paths:
        try:
            if reader == "SimpleITKIO":
                image = sitk.ReadImage(str(path))
                info = image
            else:
                info = sitk.ImageFileReader()
                info.SetFileName(str(path))
                info.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(
                f"{str(path)!r}: expected an image SimpleITK reads, could not read it ({error})"
            ) from None
        if reader == "SimpleITKIO":
            array = sitk.GetArrayFromImage(image)
            if array.ndim == 2:
                array = array[None, None]
                spacing = [max(image.GetSpacing()) * 999, *list(image.GetSpacing())[::-1]]
            elif array.ndim == 3:
                array = array[None]
                spacing = list(image.GetSpacing())[::-1]
            else:
                raise InputError(f"{str(path)!r}: expected a 2D or 3D image, found {array.ndim} dimensions")
        else:
            array, spacing, turn = _read_nibabel(path, reorient=reader == "NibabelIOWithReorient")
        arrays.append(array)
        spacings.append([abs(float(s)) for s in spacing])
        if first is None:
            first = {
                "spacing": info.GetSpacing(),
                "origin": info.GetOrigin(),
                "direction": info.GetDirection(),
            }
    if len({a.shape for a in arrays}) != 1 or len({tuple(s) for s in spacings}) != 1:
        raise InputError(
            f"{str(paths[0])!r}: expected channels of one shape and spacing, found "
            f"{[a.shape[1:] for a in arrays]} and {spacings}"
        )
    assert first is not None
    # nnU-Net reads float32; one channel of 8- or 16-bit integers (a CT's int16) is kept as it is:
    # every value is exact in float32, the normalisation converts it, and it takes half the memory
    compact = len(arrays) == 1 and arrays[0].dtype.kind in "iub" and arrays[0].dtype.itemsize <= 2
    data = arrays[0] if compact else np.vstack(arrays, dtype=np.float32, casting="unsafe")
    case = Case(data, spacings[0], first)
    if turn is not None:
        case.properties["from_canonical"] = turn
    return case


def _read_nibabel(path: str | os.PathLike[str], *, reorient: bool) -> tuple[np.ndarray, list[float], Any]:
    """nnU-Net's ``NibabelIO`` / ``NibabelIOWithReorient`` reading of one file: (1, z, y, x), spacing, turn back."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many kinds for files it cannot read
        raise InputError(f"{str(path)!r}: expected a NIfTI file nibabel reads ({error})") from None
    if len(image.shape) != 3:
        raise InputError(f"{str(path)!r}: expected a 3D image (NibabelIO), found shape {image.shape}")
    turn = None
    if reorient:
        original = io_orientation(image.affine)
        image = image.as_reoriented(original)
        turn = ornt_transform(axcodes2ornt("RAS"), original)
    array = np.asarray(image.get_fdata()).transpose((2, 1, 0))[None]
    return array, [float(z) for z in image.header.get_zooms()[::-1]], turn


__all__ = ["READERS", "Case", "read_case"]
