"""DICOM series: geometry equal to SimpleITK on well-formed series, each fault its own error."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import absent

from voxpipe.errors import GeometryError, InputError
from voxpipe.phantoms.dicom import oblique_affine, write_dicom_series
from voxpipe.transforms.dicom import discover_series, load_dicom_series
from voxpipe.transforms.io import load_volume, read_geometry, sitk_affine

AXIAL = np.diag([0.8, 0.9, 2.5, 1.0])


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1500, (20, 24, 10)).astype(np.int16)


def _sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _world_values(array, affine):
    """(world xyz rounded to 1 µm) → value, to compare volumes stored in different axis orders."""
    index = np.indices(array.shape).reshape(3, -1)
    world = (affine[:3, :3] @ index + affine[:3, 3:4]).T
    return dict(zip(map(tuple, np.round(world, 3)), array.reshape(-1), strict=True))


@pytest.mark.parametrize(
    "affine",
    [
        AXIAL,
        np.diag([-0.8, -0.9, 2.5, 1.0]),
        np.diag([-0.8, 0.9, -2.5, 1.0]),
        oblique_affine((0.8, 0.9, 2.5)),
    ],
    ids=["RAS", "LPS", "LAI", "oblique"],
)
def test_well_formed_series_matches_simpleitk_and_the_truth(tmp_path, hu, affine):
    write_dicom_series(hu, affine, tmp_path)
    array, loaded_affine, info = load_dicom_series(tmp_path)
    assert info.n_slices == hu.shape[2] and array.dtype == np.int16
    image = _sitk_series(tmp_path)
    assert np.allclose(loaded_affine, sitk_affine(image), atol=1e-5)
    assert np.array_equal(array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    # Same HU at the same world position as the volume that was written (rescale applied).
    assert _world_values(array, loaded_affine) == _world_values(hu, affine)
    shape, header_affine = read_geometry(tmp_path)  # headers only, for writing predictions on this grid
    assert shape == array.shape and np.allclose(header_affine, loaded_affine)


def test_slices_are_ordered_by_position_not_name_or_instance_number(tmp_path, hu):
    files = write_dicom_series(hu, AXIAL, tmp_path, seed=3)
    assert [f.name for f in files] != sorted(f.name for f in files)  # the writer shuffles names
    array, _, _ = load_dicom_series(tmp_path)
    assert np.array_equal(array, hu)


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path, hu, caplog):
    write_dicom_series(hu, AXIAL, tmp_path, tilt_pixels=1)
    with caplog.at_level(logging.WARNING):
        array, affine, _ = load_dicom_series(tmp_path)
    assert "gantry tilt" in caplog.text
    assert np.allclose(affine, AXIAL)
    # Rows shifted out of the field of view are lost; everything else is where it belongs.
    assert np.array_equal(array[:, hu.shape[2] - 1 :, :], hu[:, hu.shape[2] - 1 :, :])
    # SimpleITK stacks the sheared slices as if orthogonal: its content is displaced.
    assert not np.array_equal(sitk.GetArrayFromImage(_sitk_series(tmp_path)).transpose(2, 1, 0), array)
    with pytest.raises(GeometryError, match="gantry tilt"):
        load_dicom_series(tmp_path, tilt="error")


def test_missing_slices_are_an_error(tmp_path, hu):
    write_dicom_series(hu, AXIAL, tmp_path, drop_slices=[4, 5])
    with pytest.raises(
        GeometryError, match=r"missing slices .*7\.5 mm.*median slice spacing is 2\.5 mm.*2 slices"
    ):
        load_dicom_series(tmp_path)


def test_duplicate_positions_are_an_error(tmp_path, hu):
    write_dicom_series(hu, AXIAL, tmp_path, duplicate_slice=3)
    with pytest.raises(GeometryError, match="same position"):
        load_dicom_series(tmp_path)


def test_non_uniform_spacing_is_resampled_or_refused(tmp_path, hu, caplog):
    write_dicom_series(hu, AXIAL, tmp_path, z_shift_mm={5: 0.5})
    with caplog.at_level(logging.WARNING):
        array, affine, _ = load_dicom_series(tmp_path)
    assert "non-uniform slice spacing" in caplog.text
    assert array.shape == hu.shape and affine[2, 2] == pytest.approx(2.5)
    # Slices at their nominal positions are unchanged; slice 5 is interpolated between 4 and 5'.
    assert np.allclose(array[..., :5], hu[..., :5]) and np.allclose(array[..., 6:], hu[..., 6:])
    expected = hu[..., 4] + (hu[..., 5].astype(float) - hu[..., 4]) * 2.5 / 3.0
    assert np.allclose(array[..., 5], expected, atol=1e-3)
    with pytest.raises(GeometryError, match="non-uniform"):
        load_dicom_series(tmp_path, nonuniform="error")


def test_single_slice_and_mixed_geometry_are_errors(tmp_path, hu):
    write_dicom_series(hu[..., :1], AXIAL, tmp_path / "single")
    with pytest.raises(GeometryError, match="1 slice"):
        load_dicom_series(tmp_path / "single")
    # Two halves of one series with different orientation, then with different pixel spacing.
    for name, second in (
        ("orient", oblique_affine((0.8, 0.9, 2.5), origin=(0, 0, 100))),
        ("spacing", np.diag([0.7, 0.7, 2.5, 1])),
    ):
        second = second.copy()
        second[2, 3] = 100.0
        write_dicom_series(hu[..., :5], AXIAL, tmp_path / name, series_uid="1.2.3.4")
        write_dicom_series(hu[..., :5], second, tmp_path / name / "b", series_uid="1.2.3.4", seed=1)
    with pytest.raises(GeometryError, match="ImageOrientationPatient .* differs"):
        load_dicom_series(tmp_path / "orient")
    with pytest.raises(GeometryError, match="PixelSpacing .* differs"):
        load_dicom_series(tmp_path / "spacing")


def test_several_series_are_listed_and_never_mixed(tmp_path, hu, caplog):
    write_dicom_series(hu, AXIAL, tmp_path / "a", series_uid="1.2.826.1", description="axial")
    write_dicom_series(hu[..., :4], AXIAL, tmp_path / "b", series_uid="1.2.826.2", description="scout")
    (tmp_path / "LICENSE").write_text("not dicom")
    series = discover_series(tmp_path)
    assert [(s.uid, s.n_slices, s.description) for s in series] == [
        ("1.2.826.1", 10, "axial"),
        ("1.2.826.2", 4, "scout"),
    ]
    with caplog.at_level(logging.WARNING):
        assert load_dicom_series(tmp_path)[0].shape[2] == 10
    assert "2 DICOM series" in caplog.text and "scout" in caplog.text
    assert load_volume(tmp_path, series_uid="1.2.826.2").array.shape[2] == 4
    with pytest.raises(InputError, match=r"(?s)expected series '9.9'.*1.2.826.1.*1.2.826.2"):
        load_dicom_series(tmp_path, series_uid="9.9")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="expected DICOM image files, found none"):
        load_volume(empty)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "folder, error",
    [
        ("totalsegmentator/example_ct_dicom", None),  # JPEG 2000 lossless
        ("dcmqi/ct-3slice", None),  # -3024 padding, implicit VR
        ("lungmask_lidc_2slices", None),  # no preamble, no Modality tag
        ("monai_testing_data/CT_DICOM", "missing slices"),  # 202.5 mm jump, then 1.25 mm steps
        ("highdicom_seg_tiny/CT2", "missing slices"),
    ],
)
def test_real_dicom_series_match_simpleitk_or_fail_clearly(real_data, folder, error):
    path = real_data / folder
    if not path.is_dir():
        absent(f"{path} is absent", required_by="VOXPIPE_REQUIRE_REAL_DATA")
    if error:
        with pytest.raises(GeometryError, match=error):
            load_volume(path)
        return
    volume = load_volume(path)
    image = _sitk_series(path)
    assert volume.array.shape == image.GetSize()
    assert np.allclose(volume.affine, sitk_affine(image), atol=1e-4)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image).transpose(2, 1, 0))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("monochrome", ["MONOCHROME2", "MONOCHROME1"])
def test_uncompressed_pixels_read_directly_equal_pydicoms_decoding(tmp_path, hu, signed, monochrome):
    import pydicom

    from voxpipe.transforms.dicom import _native_pixels, _pixels

    path = write_dicom_series(hu, np.diag([0.8, 0.8, 2.0, 1.0]), tmp_path / "s")[0]
    ds = pydicom.dcmread(path)
    values = np.random.default_rng(0).integers(0, 4096, size=(int(ds.Rows), int(ds.Columns)))
    garbage = np.random.default_rng(1).integers(0, 16, size=values.shape) << 12  # bits above BitsStored
    if signed:
        values = values - 2048
    stored = ((values & 0x0FFF) | garbage).astype(np.uint16)
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = int(signed), 16, 12, 11
    ds.PhotometricInterpretation = monochrome
    ds.PixelData = stored.view(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path)
    ds = pydicom.dcmread(path)
    ours, theirs = _native_pixels(ds), ds.pixel_array
    assert ours is not None and np.array_equal(ours.astype(np.int32), theirs.astype(np.int32))
    assert np.array_equal(ours.astype(np.int32), values)
    from pydicom.pixels import apply_modality_lut

    array, slope, intercept = _pixels(path)
    assert np.array_equal(array * slope + intercept, apply_modality_lut(theirs, ds))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_hu_do_not_depend_on_the_photometric_interpretation_and_equal_pydicoms_modality_lut(
    tmp_path, photometric
):
    """Promise: MONOCHROME1 is a display convention; HU come from the modality LUT alone (pydicom is the
    reference), the same on every slice however its other pixels range."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    hu = np.full((8, 8, 3), 40, dtype=np.int16)
    hu[0, 0, 0], hu[1, 1, 1] = -1000, 1500  # each slice has its own min and max
    files = write_dicom_series(hu, AXIAL, tmp_path / "s")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = photometric
        ds.save_as(path)
    volume, _, _ = load_dicom_series(tmp_path / "s")
    assert volume[4, 4, :].tolist() == [40, 40, 40]
    for path in files:
        ds = pydicom.dcmread(path)
        z = int(np.argmin([abs(float(ds.ImagePositionPatient[2]) - 2.5 * k) for k in range(3)]))
        assert np.array_equal(volume[:, :, z].T, apply_modality_lut(ds.pixel_array, ds))


def test_a_modality_lut_sequence_is_applied_as_pydicom_applies_it(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut

    files = write_dicom_series(np.zeros((6, 6, 2), dtype=np.int16), AXIAL, tmp_path / "s")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PixelRepresentation = 0
        ds.PixelData = (np.arange(36, dtype=np.uint16) % 4).reshape(6, 6).tobytes()
        item = Dataset()
        item.LUTDescriptor, item.ModalityLUTType = [4, 0, 16], "HU"
        item.LUTData = np.array([0, 100, 200, 300], dtype=np.uint16).tobytes()
        ds.ModalityLUTSequence = [item]
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)
    volume, _, _ = load_dicom_series(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    assert np.array_equal(volume[:, :, 0].T, apply_modality_lut(ds.pixel_array, ds))
    assert set(np.unique(volume).tolist()) == {0, 100, 200, 300}


def test_a_series_that_mixes_modalities_is_refused_naming_the_odd_slice(tmp_path, hu):
    import pydicom

    files = write_dicom_series(hu, AXIAL, tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    ds.Modality = "MR"
    ds.save_as(files[3])
    with pytest.raises(GeometryError, match=r"different Modality values: CT in 9 slice\(s\).*MR in 1 slice"):
        load_dicom_series(tmp_path / "s")


def test_pixels_read_at_the_header_offset_equal_pydicoms_reading_of_each_file(tmp_path, hu, monkeypatch):
    from voxpipe.transforms import dicom

    write_dicom_series(hu, np.diag([0.8, 0.8, 2.0, 1.0]), tmp_path / "s")
    fast, _, _ = load_dicom_series(tmp_path / "s")
    used = []
    monkeypatch.setattr(
        dicom, "_pixels_at_offset", lambda path, header: used.append(path)
    )  # always None: pydicom reads
    slow, _, _ = load_dicom_series(tmp_path / "s")
    assert len(used) == hu.shape[2] and fast.dtype == slow.dtype and np.array_equal(fast, slow)
    assert np.array_equal(fast, hu)
