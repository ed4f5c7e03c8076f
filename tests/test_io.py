"""Loading and atomic writing keep geometry; failures name the file and leave nothing behind."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import absent

from voxpipe.errors import GeometryError, InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.transforms.files import atomic_path
from voxpipe.transforms.io import case_id, load_volume, save_nifti, write_label_like, write_volume


@pytest.fixture(scope="module")
def lps_phantom():
    return liver_phantom(2, orientation="LPS", size="tiny")


def test_case_id_strips_image_suffixes():
    assert case_id("a/liver_001.nii.gz") == "liver_001"
    assert case_id("lung2_image.nrrd") == "lung2_image"
    assert case_id("volume-3.nii") == "volume-3"


def test_atomic_path_leaves_no_partial_file_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_and_load_round_trip_keeps_geometry(tmp_path, lps_phantom, suffix):
    path = write_volume(lps_phantom.image, lps_phantom.affine, tmp_path / f"case{suffix}")
    loaded = load_volume(path)
    assert np.array_equal(loaded.array, lps_phantom.image)
    assert np.allclose(loaded.affine, lps_phantom.affine, atol=1e-5)
    # SimpleITK (LPS) agrees on spacing and origin.
    image = sitk.ReadImage(str(path))
    assert np.allclose(image.GetSpacing(), lps_phantom.spacing, atol=1e-5)
    lps_origin = np.array([-1, -1, 1]) * lps_phantom.affine[:3, 3]
    assert np.allclose(image.GetOrigin(), lps_origin, atol=1e-4)


def test_write_label_like_copies_the_reference_header(tmp_path, lps_phantom):
    reference = save_nifti(lps_phantom.image, lps_phantom.affine, tmp_path / "image.nii.gz")
    out = write_label_like(lps_phantom.label, reference, tmp_path / "label.nii.gz")
    ref, lab = nib.load(reference), nib.load(out)
    assert np.array_equal(ref.affine, lab.affine) and lab.shape == ref.shape
    assert np.array_equal(ref.get_qform(), lab.get_qform()) and np.array_equal(
        ref.get_sform(), lab.get_sform()
    )
    assert np.array_equal(np.asanyarray(lab.dataobj), lps_phantom.label)


def test_write_label_like_refuses_a_label_off_the_grid(tmp_path, lps_phantom):
    reference = save_nifti(lps_phantom.image, lps_phantom.affine, tmp_path / "image.nii.gz")
    with pytest.raises(GeometryError, match="image.nii.gz.*does not match the image grid"):
        write_label_like(lps_phantom.label[:-1], reference, tmp_path / "label.nii.gz")
    assert not (tmp_path / "label.nii.gz").exists()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz.*found nothing"):
        load_volume(tmp_path / "missing.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match="broken.nii.gz.*could not be read"):
        load_volume(broken)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="unknown image format"):
        load_volume(other)


@pytest.mark.realdata
def test_real_nrrd_and_nifti_geometry_match_simpleitk(real_data, tmp_path):
    for path in (
        real_data / "pyradiomics" / "lung2_label.nrrd",
        real_data / "totalsegmentator" / "example_ct_sm.nii.gz",
    ):
        if not path.is_file():
            absent(f"{path} is absent", required_by="VOXPIPE_REQUIRE_REAL_DATA")
        volume = load_volume(path)
        image = sitk.ReadImage(str(path))
        assert volume.array.shape == image.GetSize()
        assert np.allclose(volume.spacing, image.GetSpacing(), atol=1e-4)
        # A label written on this grid as NIfTI reads back in SimpleITK with the same geometry.
        out = write_label_like(
            (volume.array > 0).astype(np.uint8), path, tmp_path / f"{case_id(path)}_mask.nii.gz"
        )
        written = sitk.ReadImage(str(out))
        assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-3)
        assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-5)
        assert np.allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-4)


def test_labels_are_cast_to_integers_only_when_integral(tmp_path, lps_phantom):
    as_float = save_nifti(lps_phantom.label.astype(np.float32), lps_phantom.affine, tmp_path / "float.nii.gz")
    loaded = load_volume(as_float, label=True)
    assert loaded.array.dtype == np.uint8 and np.array_equal(loaded.array, lps_phantom.label)
    wide = save_nifti(lps_phantom.label.astype(np.int32) * 300, lps_phantom.affine, tmp_path / "wide.nii.gz")
    assert load_volume(wide, label=True).array.dtype == np.int16
    soft = save_nifti(
        lps_phantom.label.astype(np.float32) * 0.4, lps_phantom.affine, tmp_path / "soft.nii.gz"
    )
    with pytest.raises(InputError, match=r"soft.nii.gz.*non-integral voxels \(e.g. 0.4\)"):
        load_volume(soft, label=True)


def test_two_file_formats_load_but_are_not_written(tmp_path, lps_phantom):
    header = tmp_path / "case.nhdr"
    image = sitk.GetImageFromArray(lps_phantom.image.transpose(2, 1, 0))
    sitk.WriteImage(image, str(header))  # writes case.nhdr + case.raw.gz
    assert np.array_equal(load_volume(header).array, lps_phantom.image)
    with pytest.raises(InputError, match=r"cannot be written atomically.*\.nii\.gz, \.nii, \.nrrd, \.mha"):
        write_volume(lps_phantom.image, lps_phantom.affine, tmp_path / "out.mhd")


def test_load_volumed_feeds_monai_spatial_transforms(tmp_path, lps_phantom):
    from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd

    from voxpipe.transforms.io import LoadVolumed

    image = write_volume(lps_phantom.image, lps_phantom.affine, tmp_path / "image.nrrd")
    label = save_nifti(lps_phantom.label.astype(np.float32), lps_phantom.affine, tmp_path / "label.nii.gz")
    chain = Compose(
        [
            LoadVolumed(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            Orientationd(["image", "label"], axcodes="RAS"),
            Spacingd(["image", "label"], pixdim=(2.0, 2.0, 4.0), mode=["bilinear", "nearest"]),
        ]
    )
    out = chain({"image": str(image), "label": str(label)})
    assert out["image"].meta["filename_or_obj"] == str(image)
    assert np.allclose(out["image"].affine, out["label"].affine)
    assert np.allclose(np.diag(np.asarray(out["image"].affine))[:3], (2.0, 2.0, 4.0))  # RAS, resampled
    assert set(np.unique(out["label"].numpy()).tolist()) <= {0, 1, 2}


def test_convert_dicom_series_to_nifti_keeps_geometry(tmp_path, lps_phantom, capsys):
    from voxpipe.cli import main
    from voxpipe.phantoms.dicom import write_dicom_series

    write_dicom_series(lps_phantom.image, lps_phantom.affine, tmp_path / "dicom")
    assert main(["data", "convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "ct.nii.gz")]) == 0
    converted = load_volume(tmp_path / "ct.nii.gz")
    assert np.array_equal(converted.array, lps_phantom.image)
    assert np.allclose(converted.affine, lps_phantom.affine, atol=1e-5)
    assert main(["data", "convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()


def test_atomic_outputs_get_the_mode_of_a_plain_file(tmp_path):
    import os
    import stat

    from voxpipe.transforms.files import write_text_atomic

    umask = os.umask(0)
    os.umask(umask)
    path = write_text_atomic(tmp_path / "out.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_multichannel_images_load_channel_first_and_refuse_mismatched_grids(tmp_path):
    from monai.transforms import EnsureChannelFirstd

    from voxpipe.errors import GeometryError
    from voxpipe.transforms.io import LoadVolumed, load_volume

    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    stack = np.random.default_rng(0).normal(size=(6, 5, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(stack, affine), tmp_path / "four_d.nii.gz")
    for c in range(3):
        nib.save(nib.Nifti1Image(stack[..., c], affine), tmp_path / f"case_{c:04d}.nii.gz")
    with pytest.raises(InputError, match="expected a 3D volume.*several channels"):
        load_volume(tmp_path / "four_d.nii.gz")
    assert load_volume(tmp_path / "four_d.nii.gz", channels=True).array.shape == (3, 6, 5, 4)
    with pytest.raises(
        InputError, match="expected a 3D volume"
    ):  # a 1-channel bundle refuses 4D images, as before
        LoadVolumed(keys="image")({"image": str(tmp_path / "four_d.nii.gz")})
    with pytest.raises(InputError, match="four_d.nii.gz.*expected 2 channels.*found 3"):
        LoadVolumed(keys="image", channels=2)({"image": str(tmp_path / "four_d.nii.gz")})
    loader, first = LoadVolumed(keys="image", channels=3), EnsureChannelFirstd(keys="image")
    whole = first(loader({"image": str(tmp_path / "four_d.nii.gz")}))["image"]
    split = first(loader({"image": [str(tmp_path / f"case_{c:04d}.nii.gz") for c in range(3)]}))["image"]
    assert whole.shape == split.shape == (3, 6, 5, 4) and np.allclose(whole.numpy(), split.numpy())
    assert np.allclose(whole.numpy()[1], stack[..., 1]) and split.meta["case_id"] == "case"
    assert list(whole.meta["spatial_shape"]) == [6, 5, 4]
    single = first(LoadVolumed(keys="image")({"image": str(tmp_path / "case_0000.nii.gz")}))["image"]
    assert single.shape == (1, 6, 5, 4)  # a 3D file still gets its channel added
    nib.save(nib.Nifti1Image(stack[..., 0], np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "case_0002.nii.gz")
    with pytest.raises(GeometryError, match="case_0002.nii.gz.*expected the grid of channel 0"):
        loader({"image": [str(tmp_path / f"case_{c:04d}.nii.gz") for c in range(3)]})
