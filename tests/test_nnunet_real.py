"""voxpipe's nnU-Net path against nnunetv2's own ``nnUNetPredictor`` on real scans from ../shared/data.

CT and MR, NIfTI, NRRD and a DICOM series, stored RAS, LPS and LAS, each with a generated model of a
different plan kind. Random-init networks: their logits are near-tied, so any difference in the
numbers shows as differing labels. Skipped when the real data is absent (a user's clone); the
oracle itself is required under ``VOXPIPE_REQUIRE_REFERENCES=1``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_nnunet_predict import make_model, run_oracle

from voxpipe.pipelines.inference.nnunet.model import NnUNetModel

REAL = {
    # name: (scan under ../shared/data, model options, mirroring)
    "CT NIfTI (RAS, int32), two folds, resampled 3 → 4 mm": (
        "totalsegmentator/example_ct.nii.gz",
        {
            "spacing": [4.0, 4.0, 4.0],
            "patch": [48, 48, 48],
            "schemes": ["CTNormalization"],
            "folds": (0, 1),
            "labels": {"background": 0, "liver": 1, "spleen": 2, "kidney": 3},
        },
        False,
    ),
    "MR NIfTI (LPS), NibabelIOWithReorient, z-score with mask": (
        "totalsegmentator/example_mr_sm.nii.gz",
        {
            "spacing": [4.0, 2.5, 2.5],
            "patch": [8, 32, 32],
            "schemes": ["ZScoreNormalization"],
            "use_mask": [True],
            "channel_names": ["T1"],
            "labels": {"background": 0, "a": 1, "b": 2},
            "reader": "NibabelIOWithReorient",
        },
        False,
    ),
    "MR NIfTI (LAS), ResEnc, mirroring, transposed plan": (
        "monai_testing_data/anatomical.nii",
        {
            "spacing": [2.0, 1.5, 1.5],
            "patch": [16, 16, 16],
            "schemes": ["ZScoreNormalization"],
            "channel_names": ["T1"],
            "kind": "ResidualEncoderUNet",
            "transpose": (1, 0, 2),
            "labels": {"background": 0, "brain": 1},
        },
        True,
    ),
    "CT NRRD 0.63 x 0.63 x 5 mm: separate z, regions": (
        "pyradiomics/lung2_image.nrrd",
        {
            "spacing": [5.0, 2.5, 2.5],
            "patch": [16, 64, 64],
            "schemes": ["CTNormalization"],
            "labels": {"background": 0, "lungs": [1, 2], "tumour": 2},
        },
        False,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_scans_give_nnunets_labels(real_data, tmp_path, name):
    scan, options, mirroring = REAL[name]
    folder = make_model(tmp_path, **options)
    if any(isinstance(v, list) for v in options["labels"].values()):
        dataset = json.loads((folder / "dataset.json").read_text())
        dataset["regions_class_order"] = [1, 2]
        (folder / "dataset.json").write_text(json.dumps(dataset))
    image = real_data / scan
    expected = run_oracle(folder, [image], tmp_path / "oracle.npz", *(["--mirroring"] if mirroring else []))
    predictor = NnUNetModel(folder, mirroring=mirroring)
    found, case = predictor.predict([image])
    assert found.shape == expected.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
    differ = int((found != expected).sum())
    assert differ == 0, f"{differ} of {found.size} voxels differ"
    assert len(np.unique(found)) > 1  # the model segments something: the comparison has content


@pytest.mark.slow
def test_a_real_dicom_series_gives_nnunets_labels_on_the_volume_voxpipe_loads(real_data, tmp_path):
    """A JPEG-2000 Siemens series through ``voxpipe infer`` with a 2d model: nnU-Net's predictor cannot
    read a series, so it runs on the volume voxpipe loads (written as NIfTI); the written label map
    must equal its labels and lie on the series' grid."""
    from voxpipe.cli import main
    from voxpipe.transforms.io import load_volume, save_nifti

    series = real_data / "totalsegmentator" / "example_ct_dicom"
    folder = make_model(
        tmp_path,
        spacing=[2.0, 2.0],
        patch=[64, 64],
        schemes=["CTNormalization"],
        labels={"background": 0, "liver": 1, "lung": 2},
    )
    volume = load_volume(series)
    save_nifti(np.asarray(volume.array), volume.affine, tmp_path / "series_0000.nii.gz")
    expected = run_oracle(folder, [tmp_path / "series_0000.nii.gz"], tmp_path / "oracle.npz")
    out = tmp_path / "out"
    assert main(["infer", str(folder), str(series), "-o", str(out), "--dicom-seg", "--disable-tta"]) == 0
    written = sitk.ReadImage(str(out / "example_ct_dicom.nii.gz"))
    assert int((sitk.GetArrayFromImage(written) != expected).sum()) == 0
    reference = sitk.ReadImage(str(tmp_path / "series_0000.nii.gz"))
    assert written.GetSize() == reference.GetSize() == (512, 512, 20)
    assert np.allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    assert np.allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert (out / "example_ct_dicom.dcm").is_file()
