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
from helpers import OracleNet, engine_counts, label_image

from voxpipe.errors import InputError
from voxpipe.metrics import dice
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.pipelines.inference.cases import collect_inputs
from voxpipe.pipelines.inference.infer import infer_with_bundle
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
        image = write_volume(
            label_image(phantom.label), phantom.affine, folder / f"case_{orientation}{suffix}"
        )
        cases[image] = phantom
    return cases


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_outputs_line_up_voxel_for_voxel_with_the_label(liver_bundle, oracle_weights, tmp_path, suffix):
    """Native-spacing preprocessing: the geometry chain must be exact for every storage orientation."""
    cases = _phantom_files(tmp_path / "in", ["RAS", "LPS", "LPI", "LAS"], suffix)
    outputs = infer_with_bundle(
        liver_bundle,
        [tmp_path / "in"],
        output_dir=tmp_path / "out",
        weights=oracle_weights,
        overrides={**ORACLE, "pixdim": [0.0, 0.0, 0.0]},  # 0 keeps the native spacing in MONAI's Spacingd
    )
    assert len(outputs) == 4
    for (image_path, phantom), out in zip(sorted(cases.items()), sorted(outputs), strict=True):
        written = nib.load(out)
        assert written.shape == phantom.label.shape
        assert np.allclose(written.affine, phantom.affine, atol=1e-4), image_path.name
        assert np.array_equal(np.asanyarray(written.dataobj), phantom.label), image_path.name


def test_a_dicom_series_folder_is_one_input_and_its_output_lies_on_its_grid(
    liver_bundle, oracle_weights, tmp_path
):
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.phantoms.dicom import write_dicom_series

    phantom = liver_phantom(4, orientation="LPS", size="tiny")
    write_dicom_series(label_image(phantom.label), phantom.affine, tmp_path / "in" / "series1")
    assert collect_inputs([tmp_path / "in" / "series1"]) == [tmp_path / "in" / "series1"]
    (out,) = infer_with_bundle(
        liver_bundle,
        [tmp_path / "in" / "series1"],
        output_dir=tmp_path / "out",
        weights=oracle_weights,
        overrides={**ORACLE, "pixdim": [0.0, 0.0, 0.0]},
        output_format="dicom-seg",
    )
    assert out.name == "series1.nii.gz"
    written = nib.load(out)
    assert np.allclose(written.affine, phantom.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(written.dataobj), phantom.label)
    # The DICOM-SEG beside it references the series and reads back to the same label map.
    from voxpipe.transforms.dicom_seg import read_seg, seg_to_label_map

    seg = read_seg(tmp_path / "out" / "series1.dcm")
    assert seg.labels == {1: "liver", 2: "tumour"}
    assert np.array_equal(seg_to_label_map(seg, phantom.label.shape, phantom.affine), phantom.label)


@pytest.mark.parametrize("output_format", ["nrrd", "mha"])
def test_other_formats_probabilities_tta_and_precision(liver_bundle, oracle_weights, tmp_path, output_format):
    from voxpipe.transforms.io import load_volume, read_geometry

    cases = _phantom_files(tmp_path / "in", ["LPS"])
    (out,) = infer_with_bundle(
        liver_bundle,
        list(cases),
        output_dir=tmp_path / "out",
        weights=oracle_weights,
        overrides=ORACLE,
        output_format=output_format,
        precision="fp32",
        tta=True,
        save_probabilities=True,
        progress=True,
    )
    ((image, phantom),) = cases.items()
    assert out.name == f"case_LPS.{output_format}" and not list((tmp_path / "out").glob("*.nii.gz"))
    shape, affine = read_geometry(out)
    assert shape == phantom.label.shape and np.allclose(affine, phantom.affine, atol=1e-4)
    labels = load_volume(out, label=True).array
    assert dice(labels == 1, phantom.label == 1) > 0.95  # resampled to 1.5 × 1.5 × 2.5 mm and back
    saved = np.load(tmp_path / "out" / "case_LPS_probabilities.npz")
    assert saved["probabilities"].dtype == np.float16 and saved["probabilities"].shape == (3, *shape)
    assert (saved["probabilities"].argmax(0) == labels).mean() > 0.99  # before post-processing, same labels
    assert np.allclose(saved["affine"], affine, atol=1e-4)


def test_options_a_bundle_lacks_and_dicom_seg_for_files_are_refused(liver_bundle, oracle_weights, tmp_path):
    from pathlib import Path

    from voxpipe.pipelines.inference.infer import run_options

    zoo = Path(__file__).parent / "data" / "zoo_style_bundle"
    with pytest.raises(InputError, match="expected the keys \\['precision', 'tta'\\]"):
        run_options(zoo, precision="bf16", tta=True)
    assert run_options(liver_bundle, precision="fp32", output_format="nrrd", device="cpu") == {
        "precision": "fp32",
        "output_ext": ".nrrd",
        "device#preference": "cpu",
    }
    with pytest.raises(InputError, match="precision: expected one of"):
        run_options(liver_bundle, precision="int8")
    cases = _phantom_files(tmp_path / "in", ["RAS"])
    with pytest.raises(
        InputError, match="format 'dicom-seg': expected DICOM series folders, found image files"
    ):
        infer_with_bundle(
            liver_bundle,
            list(cases),
            output_dir=tmp_path / "out",
            weights=oracle_weights,
            output_format="dicom-seg",
        )


def test_outputs_align_after_resampling_to_the_training_grid(liver_bundle, oracle_weights, tmp_path):
    """Bundle spacing (1.5 × 1.5 × 2.5 mm): resampled there and back, the labels still overlay."""
    cases = _phantom_files(tmp_path / "in", ["LPS", "LPI"])
    outputs = infer_with_bundle(
        liver_bundle, list(cases), output_dir=tmp_path / "out", weights=oracle_weights, overrides=ORACLE
    )
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


def test_failing_cases_are_reported_and_the_rest_written_then_resumed(
    liver_bundle, oracle_weights, tmp_path, engines
):
    import json
    import os

    from voxpipe.pipelines.inference.cases import InferenceFailed

    phantom = liver_phantom(30, size="tiny")
    inputs = tmp_path / "in"
    save_nifti(
        np.stack([label_image(phantom.label)] * 2, axis=-1), phantom.affine, inputs / "0.nii.gz"
    )  # 4D: fails first
    save_nifti(label_image(phantom.label), phantom.affine, inputs / "a.nii.gz")
    save_nifti(
        np.stack([label_image(phantom.label)] * 2, axis=-1), phantom.affine, inputs / "b.nii.gz"
    )  # 4D: fails in the run
    (inputs / "c.nii.gz").write_bytes(b"not an image")  # fails before the run
    save_nifti(label_image(phantom.label), phantom.affine, inputs / "d.nii.gz")
    out = tmp_path / "out"
    overrides = {**ORACLE, "pixdim": [0.0, 0.0, 0.0]}
    with pytest.raises(InferenceFailed) as caught:
        infer_with_bundle(liver_bundle, [inputs], output_dir=out, weights=oracle_weights, overrides=overrides)
    # Promise: the failing cases cost nothing else: one build, one weights load, the good cases run once each.
    assert engine_counts(engines) == (1, 1, 2)
    assert sorted(os.path.basename(p) for p in caught.value.failures) == ["0.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert "3 of 5 cases failed" in str(caught.value) and "expected a 3D volume" in str(caught.value)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "d.nii.gz"]  # the rest were written
    for name in ("a", "d"):
        assert np.array_equal(np.asanyarray(nib.load(out / f"{name}.nii.gz").dataobj), phantom.label)
    # Statistics of the written cases: volumes from the label, intensities from the source image.
    stats = json.loads((out / "statistics.json").read_text())
    voxel_ml = abs(np.linalg.det(phantom.affine[:3, :3])) / 1000
    assert stats["a"]["liver"]["volume_ml"] == pytest.approx((phantom.label == 1).sum() * voxel_ml)
    assert (
        stats["a"]["tumour"]["lesion_count"] >= 1 and stats["a"]["tumour"]["largest_lesion_diameter_mm"] > 0
    )
    assert "liver_mean" in (out / "statistics.csv").read_text().splitlines()[0]
    # Resume: finished cases are not redone; with the bad inputs gone, the run completes.
    written = (out / "a.nii.gz").stat().st_mtime_ns
    for name in ("0", "b", "c"):
        (inputs / f"{name}.nii.gz").unlink()
    outputs = infer_with_bundle(
        liver_bundle, [inputs], output_dir=out, weights=oracle_weights, overrides=overrides, resume=True
    )
    assert [p.name for p in outputs] == ["a.nii.gz", "d.nii.gz"] and (
        out / "a.nii.gz"
    ).stat().st_mtime_ns == written


def test_postprocessing_per_class():
    from voxpipe.transforms.postprocess import PostProcessd, postprocess_labels

    label = np.zeros((20, 20, 20), np.int16)
    label[2:12, 2:12, 2:12] = 1  # liver
    label[5:7, 5:7, 5:7] = 0  # a hole inside it
    label[14:16, 14:16, 14:16] = 1  # a liver island
    label[11:14, 4:6, 4:6] = 2  # a tumour touching the liver
    label[17:19, 1:3, 1:3] = 2  # a tumour far from it
    label[0, 19, 19] = 2  # a one-voxel tumour
    out = postprocess_labels(
        label, fill_holes=[1], largest=[[1]], inside={2: [1]}, min_size_mm3={2: 5}, voxel_mm3=1.0
    )
    assert out[6, 6, 6] == 1 and out[15, 15, 15] == 0  # hole filled, island gone
    assert out[12, 5, 5] == 2 and out[18, 2, 2] == 0 and out[0, 19, 19] == 0
    # Sizes are in mm³ from the tensor's affine: 8 voxels of 1 mm³ survive a 5 mm³ limit, not at 0.5 mm.
    tumour = np.zeros((1, 10, 10, 10), np.float32)
    tumour[0, 1:3, 1:3, 1:3] = 2
    from monai.data import MetaTensor

    coarse = PostProcessd("pred", min_size_mm3={"2": 5})(
        {"pred": MetaTensor(torch.tensor(tumour), affine=torch.eye(4))}
    )
    fine = PostProcessd("pred", min_size_mm3={"2": 5})(
        {"pred": MetaTensor(torch.tensor(tumour), affine=torch.diag(torch.tensor([0.5, 0.5, 0.5, 1.0])))}
    )
    assert coarse["pred"].sum() == 16 and fine["pred"].sum() == 0


@pytest.mark.parametrize(
    "folder,name,out",
    [
        ("Patient #12", "CT #3", "run #2"),
        ("@home", "@scan", "@out"),
        ("$HOME", "$ct", "$out"),
        ("100%", "50% dose", "%out"),
        ("Müller Straße", "Ärzte ü", "résultats é"),
        ("a b", "c d", "e f"),
    ],
)
def test_promise_any_characters_in_input_and_output_paths(
    liver_bundle, oracle_weights, tmp_path, folder, name, out
):
    """MONAI's parser turns '#' into '::' and reads '$', '@', '%' at the start of a string: user paths must not go through it."""
    phantom = liver_phantom(31, orientation="LPS", size="tiny")
    image = write_volume(label_image(phantom.label), phantom.affine, tmp_path / folder / f"{name}.nii.gz")
    (written,) = infer_with_bundle(
        liver_bundle,
        [image],
        output_dir=tmp_path / out,
        weights=oracle_weights,
        overrides={**ORACLE, "pixdim": [0.0, 0.0, 0.0]},
    )
    assert written == tmp_path / out / f"{name}.nii.gz" and written.is_file()
    assert np.array_equal(np.asanyarray(nib.load(written).dataobj), phantom.label)
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted(
        [f"{name}.nii.gz", "statistics.csv", "statistics.json"]
    )
    assert not any("::" in str(p) for p in tmp_path.rglob("*"))


def test_largest_diameter_is_the_longest_distance_between_voxel_centres():
    from voxpipe.pipelines.inference.stats import largest_diameter_mm

    mask = np.zeros((40, 30, 20), dtype=bool)
    mask[5:35, 10, 4] = True  # a rod of 30 voxels along x ...
    mask[20, 5:25, 4:16] = True  # ... crossing a slab
    affine = np.diag([0.5, 0.8, 2.0, 1.0])
    index = np.argwhere(mask) * np.array([0.5, 0.8, 2.0])
    brute = np.sqrt(((index[:, None] - index[None]) ** 2).sum(-1)).max()
    assert largest_diameter_mm(mask, affine) == pytest.approx(brute, abs=1e-9)
    ball = np.linalg.norm(np.indices((41, 41, 41)) - 20, axis=0) <= 20  # a hull of thousands of vertices
    assert largest_diameter_mm(ball, np.eye(4)) == pytest.approx(40.0, abs=1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_largest_diameter_equals_brute_force_on_random_shapes_and_oblique_grids(seed):
    """Only the ends of each line along axis 0 are hull candidates: equal to all pairs of all voxels."""
    from scipy.spatial.transform import Rotation

    from voxpipe.pipelines.inference.stats import largest_diameter_mm

    rng = np.random.default_rng(seed)
    mask = rng.random((14, 12, 10)) < rng.uniform(0.02, 0.4)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.random(random_state=seed).as_matrix() @ np.diag(rng.uniform(0.3, 3.0, 3))
    points = np.argwhere(mask) @ affine[:3, :3].T
    brute = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max() if len(points) > 1 else 0.0
    assert largest_diameter_mm(mask, affine) == pytest.approx(brute, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_largest_diameter_of_flat_and_linear_lesions_equals_brute_force_with_few_pairs(seed, monkeypatch):
    """A lesion one slice thick (or one voxel line) has no 3D hull: hulled in its plane (or by its ends),
    not compared pair by pair, so a 200 × 200 slab stays fast and exact."""
    from scipy.spatial import distance
    from scipy.spatial.transform import Rotation

    from voxpipe.pipelines.inference.stats import largest_diameter_mm

    rng = np.random.default_rng(seed)
    mask = np.zeros((12, 30, 30), dtype=bool)
    axis = seed % 3
    plane = [slice(None)] * 3
    plane[axis] = 5
    mask[tuple(plane)] = rng.random(mask[tuple(plane)].shape) < 0.3
    if seed >= 6:  # a line of voxels
        mask[:] = False
        mask[3, 4 : 4 + 20, 7] = True
    affine = np.eye(4)
    affine[:3, :3] = Rotation.random(random_state=seed).as_matrix() @ np.diag(rng.uniform(0.5, 2.0, 3))
    points = np.argwhere(mask) @ affine[:3, :3].T
    brute = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max()
    assert largest_diameter_mm(mask, affine) == pytest.approx(brute, rel=1e-12, abs=1e-9)
    big = np.zeros((3, 200, 200), dtype=bool)
    big[1, 10:190, 20:180] = True  # 28 800 voxels in one slice
    compared = []
    real = distance.cdist
    monkeypatch.setattr(distance, "cdist", lambda a, b: compared.append(len(a) * len(b)) or real(a, b))
    expected = float(np.hypot(179, 159))
    assert largest_diameter_mm(big, np.eye(4)) == pytest.approx(expected, abs=1e-9)
    assert sum(compared) < 100  # the square's corners, not 57 600² pairs


def test_structure_mean_and_std_equal_numpys():
    from voxpipe.pipelines.inference.stats import case_statistics

    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (20, 18, 37))
    image = rng.normal(40, 200, label.shape).astype(np.float32)
    stats = case_statistics(label, np.eye(4), names={1: "liver", 2: "tumour"}, image=image)
    for value, name in ((1, "liver"), (2, "tumour")):
        inside = image[label == value].astype(np.float64)
        assert stats[name]["mean"] == pytest.approx(inside.mean(), rel=1e-12)
        assert stats[name]["std"] == pytest.approx(inside.std(), rel=1e-10)


def test_many_structures_at_once_equal_numpys_per_structure_and_absent_ones_have_no_mean():
    from voxpipe.pipelines.inference.stats import case_statistics

    rng = np.random.default_rng(1)
    label = rng.integers(0, 40, (23, 17, 41)).astype(np.uint8)
    label[label == 7] = 0  # absent
    image = rng.integers(-1024, 3000, label.shape).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    names = {k: f"s{k}" for k in range(0, 45)}  # 40..44 absent too
    stats = case_statistics(label, affine, names=names, image=image)
    assert "s0" not in stats
    for value in range(1, 45):
        inside = image[label == value].astype(np.float64)
        entry = stats[f"s{value}"]
        assert entry["volume_ml"] == pytest.approx(inside.size * 0.7 * 0.8 * 2.5 / 1000, rel=1e-12)
        if inside.size == 0:
            assert entry["mean"] is None and entry["std"] is None
        else:
            assert entry["mean"] == pytest.approx(inside.mean(), rel=1e-12)
            assert entry["std"] == pytest.approx(inside.std(), rel=1e-10)
    empty = case_statistics(np.zeros_like(label), affine, names=names, image=image)
    assert all(e["volume_ml"] == 0 and e["mean"] is None for e in empty.values())


def test_organ_roi_gives_the_same_labels_and_says_what_it_chose(
    liver_bundle, oracle_weights, tmp_path, caplog
):
    import logging

    phantom = liver_phantom(21, orientation="LPS", size="tiny")
    image = write_volume(label_image(phantom.label), phantom.affine, tmp_path / "in" / "case.nii.gz")
    with caplog.at_level(logging.INFO, logger="voxpipe.pipelines.inference.sliding_window"):
        (out,) = infer_with_bundle(
            liver_bundle,
            [image],
            output_dir=tmp_path / "out",
            weights=oracle_weights,
            overrides={**ORACLE, "pixdim": [0.0, 0.0, 0.0]},
            organ_roi=True,
        )
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj), phantom.label)
    assert "organ ROI [[" in caplog.text and "% of the volume" in caplog.text
