"""Phantom properties: HU per tissue, labels, geometry as written, determinism, dataset layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from voxpipe.errors import InputError
from voxpipe.phantoms.ct import ORIENTATIONS, liver_phantom, lung_phantom, write_msd_dataset


@pytest.fixture(scope="module")
def liver():
    return liver_phantom(3, orientation="RAS")


@pytest.fixture(scope="module")
def lung():
    return lung_phantom(5, orientation="RAS")


def test_liver_phantom_tissues_have_ct_hounsfield_units(liver):
    image, label = liver.image.astype(float), liver.label
    assert image.dtype == np.float64 and liver.image.dtype == np.int16
    assert set(np.unique(label)) <= {0, 1, 2} and (label == 1).sum() > 1000
    assert 50 <= np.median(image[label == 1]) <= 75  # liver parenchyma
    corner = image[:5, :5, :]  # outside the body ellipse
    assert np.median(corner) < -950
    assert (image > 400).sum() > 100  # bone: spine cortex and ribs
    assert (image < -700).sum() > 1000  # air outside plus the lung bases inside
    fat = (image > -130) & (image < -60)
    assert fat.sum() > 1000  # subcutaneous and mesenteric fat
    interior = ndimage.binary_erosion(label == 1, iterations=2)  # away from partial-volume borders
    assert 8 < image[interior].std() < 25  # σ ≈ 10–20 HU of noise plus a little texture


def test_liver_tumours_are_hypodense_and_inside_the_liver():
    found = 0
    for seed in range(6):
        phantom = liver_phantom(seed)
        tumour = phantom.label == 2
        if not tumour.any():
            continue
        found += 1
        assert 10 <= np.median(phantom.image[tumour]) <= 45
        assert np.median(phantom.image[tumour]) < np.median(phantom.image[phantom.label == 1]) - 15
    assert found >= 3  # 0–4 tumours per case: most cases have some


def test_lung_phantom_labels_and_masks(lung):
    image, label, lungs = lung.image.astype(float), lung.label, lung.extra_labels["lungs"]
    assert set(np.unique(label)) <= {0, 1} and set(np.unique(lungs)) == {0, 1, 2}
    assert -900 <= np.median(image[lungs > 0]) <= -750
    assert np.all(lungs[label == 1] > 0)  # tumours lie inside a lung
    if (label == 1).any():
        assert -20 <= np.median(image[label == 1]) <= 80
    # right lung (label 1) on the patient's right: larger world x in RAS
    world_x = (lung.affine @ np.c_[np.argwhere(lungs == 1), np.ones((lungs == 1).sum())].T)[0]
    world_x_left = (lung.affine @ np.c_[np.argwhere(lungs == 2), np.ones((lungs == 2).sum())].T)[0]
    assert world_x.mean() > world_x_left.mean()


@pytest.mark.parametrize("make", [liver_phantom, lung_phantom])
def test_phantoms_are_deterministic_by_seed(make):
    a, b, c = make(11), make(11), make(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_storage_orientation_keeps_world_positions(orientation):
    canonical = liver_phantom(4, orientation="RAS")
    stored = liver_phantom(4, orientation=orientation)
    assert nib.aff2axcodes(stored.affine) == tuple(orientation)
    # Reorienting the stored volume to RAS gives back the canonical arrays and affine.
    image = nib.as_closest_canonical(nib.Nifti1Image(stored.label, stored.affine))
    assert np.allclose(image.affine, canonical.affine)
    assert np.array_equal(np.asanyarray(image.dataobj), canonical.label)


def test_spacing_and_sizes_vary_and_are_anisotropic():
    phantoms = [liver_phantom(seed) for seed in range(4)]
    spacings = {p.spacing for p in phantoms}
    assert len(spacings) == 4
    for p in phantoms:
        sx, sy, sz = p.spacing
        assert 0.75 <= sx <= 0.95 and sx == sy and 2.0 <= sz <= 3.0
        assert 96 <= p.image.shape[0] <= 128 and 32 <= p.image.shape[2] <= 56


def test_msd_dataset_layout_and_headers(tmp_path):
    manifest = write_msd_dataset(tmp_path, task="liver", n_train=3, n_test=2, seed=1, size="tiny")
    dataset = json.loads(manifest.read_text())
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert dataset["numTraining"] == 3 and dataset["numTest"] == 2
    for entry in dataset["training"]:
        image, label = nib.load(tmp_path / entry["image"]), nib.load(tmp_path / entry["label"])
        assert image.shape == label.shape and np.array_equal(image.affine, label.affine)
        assert int(image.header["sform_code"]) == 1
    case = dataset["training"][0]
    index = int(case["image"].split("_")[-1].split(".")[0])
    expected = liver_phantom((1, index), size="tiny")
    stored = nib.load(tmp_path / case["image"])
    assert np.allclose(stored.affine, expected.affine)
    assert np.allclose(stored.header.get_zooms(), expected.spacing)
    assert np.array_equal(np.asanyarray(stored.dataobj), expected.image)
    assert all((tmp_path / t).is_file() for t in dataset["test"])
    assert len(list((tmp_path / "labelsTs").iterdir())) == 2
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files


def test_lung_dataset_writes_lung_masks(tmp_path):
    manifest = write_msd_dataset(tmp_path, task="lung", n_train=1, n_test=1, size="tiny")
    dataset = json.loads(manifest.read_text())
    assert dataset["labels"] == {"0": "background", "1": "tumour"}
    assert (tmp_path / "lungsTr" / "lung_000.nii.gz").is_file() and (
        tmp_path / "lungsTs" / "lung_001.nii.gz"
    ).is_file()


def test_bad_dataset_arguments_are_named(tmp_path):
    with pytest.raises(InputError, match="phantom task.*'kidney'"):
        write_msd_dataset(tmp_path, task="kidney")
    with pytest.raises(InputError, match="phantom counts"):
        write_msd_dataset(tmp_path, n_train=0, n_test=0)
