"""DICOM series load: voxpipe's checked loader vs SimpleITK's ``ImageSeriesReader``, same files.

Writes a clinical-size CT (512 × 512 × ``--slices``, uncompressed explicit VR little endian, int16
with RescaleIntercept −1024, one file per slice) and reads it ``--repeats`` times with each reader,
alternating, from the warm page cache: voxpipe's ``load_dicom_series`` (every slice's geometry
checked: orientation, spacing, gaps, tilt, Rows/Columns against the pixel data) and SimpleITK
(``GetGDCMSeriesFileNames`` + ``ImageSeriesReader.Execute``, the usual call). Prints the median
seconds of each, the ratio, and whether the two arrays are equal voxel for voxel (after SimpleITK's
z, y, x order is put into voxpipe's x, y, z and both into RAS).

    python benchmarks/dicom_load.py [--slices 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_series(folder: Path, slices: int) -> Path:
    from voxpipe.phantoms.clinical import ClinicalGeometry, clinical_ct
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.phantoms.dicom import write_dicom_series

    phantom = clinical_ct(
        liver_phantom((100, 0)),
        np.random.default_rng((100, 512)),
        geometry=ClinicalGeometry(0.8, 2.0, slices, 0.6, True, -2048),
    )
    series = folder / "series"
    write_dicom_series(phantom.image, phantom.affine, series)
    return series


def voxpipe_load(series: Path) -> np.ndarray:
    from voxpipe.transforms.dicom import load_dicom_series

    array, _, _ = load_dicom_series(series)
    return array


def sitk_load(series: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image)  # (z, y, x), LPS-ordered voxels as stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series = write_series(Path(tmp), args.slices)
        size = sum(f.stat().st_size for f in series.iterdir()) / 2**20
        print(
            f"512 × 512 × {args.slices} CT series, uncompressed, {size:.0f} MiB in {len(list(series.iterdir()))} files"
        )
        times: dict[str, list[float]] = {"voxpipe": [], "SimpleITK": []}
        arrays: dict[str, np.ndarray] = {}
        for _ in range(args.repeats + 1):  # the first round warms the page cache and imports; not counted
            for name, load in (("voxpipe", voxpipe_load), ("SimpleITK", sitk_load)):
                started = time.perf_counter()
                arrays[name] = load(series)
                times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(values[1:]) for name, values in times.items()}
        for name, value in median.items():
            print(f"  {name:10s} {value:6.2f} s (median of {args.repeats})")
        ours = arrays["voxpipe"]
        theirs = arrays["SimpleITK"].transpose(2, 1, 0)  # → (x, y, z) as stored (LPS rows/columns)
        same = ours.shape == theirs.shape and (
            np.array_equal(ours, theirs)
            or np.array_equal(ours, theirs[::-1, ::-1, :])
            or np.array_equal(ours, theirs[:, :, ::-1])
            or np.array_equal(ours, theirs[::-1, ::-1, ::-1])
        )
        print(
            f"voxpipe / SimpleITK {median['voxpipe'] / median['SimpleITK']:.2f}× (goal ≤ 1.2×); arrays equal: {same}"
        )


if __name__ == "__main__":
    main()
