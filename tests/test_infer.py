"""Inference writes label maps on each input's exact grid, for identity and flipped affines.

An oracle network (tests/helpers.py) predicts the label exactly from a noise-free phantom, so any
mismatch between output and label is a geometry error in the chain under test: MONAI loading,
Orientationd, Spacingd, the sliding window, Invertd and voxpipe's writer.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import OracleNet, label_image

from voxpipe.errors import InputError
from voxpipe.metrics import dice
from voxpipe.pipelines.infer import collect_inputs, infer_with_bundle
from voxpipe.synthetic import liver_phantom
from voxpipe.transforms.io import save_nifti, write_volume

ORACLE = {"network_def": {"_target_": "helpers.OracleNet"}, "patch_size": [32, 32, 16]}


@pytest.fixture(scope="module")
def oracle_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "model.pt"
    torch.save(OracleNet().state_dict(), path)
    return path


def _phantom_files(folder, orientations, suffix=".nii.gz"):
    cases = {}
    for index, orientation in enumerate(orientations):
        phantom = liver_phantom(20 + index, orientation=orientation, size="tiny")
        image = write_volume(label_image(phantom.label), phantom.affine, folder / f"case_{orientation}{suffix}")
        cases[image] = phantom
    return cases


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_outputs_line_up_voxel_for_voxel_with_the_label(liver_bundle, oracle_weights, tmp_path, suffix):
    """Native-spacing preprocessing: the geometry chain must be exact for every storage orientation."""
    cases = _phantom_files(tmp_path / "in", ["RAS", "LPS", "LPI", "LAS"], suffix)
    outputs = infer_with_bundle(
        liver_bundle, [tmp_path / "in"], output_dir=tmp_path / "out", weights=oracle_weights,
        overrides={**ORACLE, "pixdim": [0.0, 0.0, 0.0]},  # 0 keeps the native spacing in MONAI's Spacingd
    )
    assert len(outputs) == 4
    for (image_path, phantom), out in zip(sorted(cases.items()), sorted(outputs), strict=True):
        written = nib.load(out)
        assert written.shape == phantom.label.shape
        assert np.allclose(written.affine, phantom.affine, atol=1e-4), image_path.name
        assert np.array_equal(np.asanyarray(written.dataobj), phantom.label), image_path.name


def test_a_dicom_series_folder_is_one_input_and_its_output_lies_on_its_grid(liver_bundle, oracle_weights, tmp_path):
    from voxpipe.synthetic import liver_phantom
    from voxpipe.synthetic_dicom import write_dicom_series

    phantom = liver_phantom(4, orientation="LPS", size="tiny")
    write_dicom_series(label_image(phantom.label), phantom.affine, tmp_path / "in" / "series1")
    assert collect_inputs([tmp_path / "in" / "series1"]) == [tmp_path / "in" / "series1"]
    (out,) = infer_with_bundle(liver_bundle, [tmp_path / "in" / "series1"], output_dir=tmp_path / "out",
                               weights=oracle_weights, overrides={**ORACLE, "pixdim": [0.0, 0.0, 0.0]})
    assert out.name == "series1.nii.gz"
    written = nib.load(out)
    assert np.allclose(written.affine, phantom.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(written.dataobj), phantom.label)


def test_outputs_align_after_resampling_to_the_training_grid(liver_bundle, oracle_weights, tmp_path):
    """Bundle spacing (1.5 × 1.5 × 2.5 mm): resampled there and back, the labels still overlay."""
    cases = _phantom_files(tmp_path / "in", ["LPS", "LPI"])
    outputs = infer_with_bundle(liver_bundle, list(cases), output_dir=tmp_path / "out", weights=oracle_weights, overrides=ORACLE)
    for (image_path, phantom), out in zip(cases.items(), outputs, strict=True):
        written = nib.load(out)
        assert np.array_equal(written.affine, nib.load(image_path).affine)
        predicted = np.asanyarray(written.dataobj)
        assert dice(predicted == 1, phantom.label == 1) > 0.95
        # A one-voxel shift or a flipped axis would cost far more than resampling does.
        assert dice(np.flip(predicted, 0) == 1, phantom.label == 1) < 0.9


def test_missing_weights_and_bad_inputs_are_named(liver_bundle, tmp_path):
    image = save_nifti(np.zeros((8, 8, 8), np.int16), np.eye(4), tmp_path / "img.nii.gz")
    with pytest.raises(InputError, match="nothing.pt.*expected network weights"):
        infer_with_bundle(liver_bundle, [image], output_dir=tmp_path / "out", weights=tmp_path / "nothing.pt")
    with pytest.raises(InputError, match="absent.nii.gz.*found nothing"):
        collect_inputs([tmp_path / "absent.nii.gz"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt.*expected an image file"):
        collect_inputs([tmp_path / "notes.txt"])
    (tmp_path / "scan.dcm.zip").write_text("x")
    with pytest.raises(InputError, match="scan.dcm.zip.*found '.zip'"):
        collect_inputs([tmp_path / "scan.dcm.zip"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*or DICOM slices in this folder, found neither"):
        collect_inputs([tmp_path / "empty"])
