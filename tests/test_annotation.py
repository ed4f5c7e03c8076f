"""Assisted annotation: Slicer segmentations, uncertainty ranking, ingest with edit effort, fine-tuning.

The .seg.nrrd files are checked with pynrrd (the raw keys Slicer writes) and with slicerio, the
reader from 3D Slicer's developers (test-only). The pre-label network is the oracle of
tests/helpers.py with soft probabilities, so a clean phantom is certain and a noisy copy is not.
"""

from __future__ import annotations

import csv
import json
import shutil

import nrrd
import numpy as np
import pytest
import torch
from helpers import OracleNet, label_image, require

from voxpipe.errors import GeometryError, InputError
from voxpipe.metrics import dice
from voxpipe.metrics.surface import hausdorff, surface_distances
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.pipelines.annotation.ingest import IngestFailed, ingest, lesion_edits, read_correction
from voxpipe.pipelines.annotation.prelabel import prelabel
from voxpipe.transforms.io import load_volume, place_on_grid, save_nifti, write_volume
from voxpipe.transforms.slicer_seg import read_slicer_seg, write_slicer_seg

SOFT_ORACLE = {
    "network_def": {"_target_": "helpers.OracleNet", "sharpness": 30.0},
    "patch_size": [32, 32, 16],
    "pixdim": [0.0, 0.0, 0.0],
}
NAMES = {1: "liver", 2: "tumour"}


@pytest.fixture(scope="module")
def oracle_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "model.pt"
    torch.save(OracleNet(sharpness=30.0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Four clean phantom images whose HU encode the label, and one copy drowned in noise."""
    folder = tmp_path_factory.mktemp("images")
    phantoms = {}
    for index in range(4):
        phantom = liver_phantom(40 + index, size="tiny", orientation="LPS" if index % 2 else "RAS")
        write_volume(label_image(phantom.label), phantom.affine, folder / f"case_{index}.nii.gz")
        phantoms[f"case_{index}"] = phantom
    noisy = liver_phantom(44, size="tiny")
    rng = np.random.default_rng(0)
    hu = label_image(noisy.label) + rng.normal(0, 45, noisy.label.shape)
    write_volume(hu.astype(np.int16), noisy.affine, folder / "case_noisy.nii.gz")
    phantoms["case_noisy"] = noisy
    return folder, phantoms


def test_seg_nrrd_carries_slicers_keys_and_reads_back_on_the_image_grid(tmp_path):
    slicerio = require("slicerio")
    phantom = liver_phantom(5, size="tiny", orientation="LPS")
    path = write_slicer_seg(
        phantom.label,
        phantom.affine,
        tmp_path / "case.seg.nrrd",
        names={1: "liver", 2: "tumour", 3: "vessel"},
    )
    data, header = nrrd.read(str(path), index_order="F")
    assert np.array_equal(data, phantom.label) and header["space"] == "left-posterior-superior"
    assert (
        header["Segment0_Name"] == "liver"
        and header["Segment0_LabelValue"] == "1"
        and header["Segment0_Layer"] == "0"
    )
    assert header["Segment1_Name"] == "tumour" and header["Segment1_LabelValue"] == "2"
    assert len(header["Segment0_Color"].split()) == 3 and "SCT^10200004^Liver" in header["Segment0_Tags"]
    xs, ys, zs = np.nonzero(phantom.label == 2)
    assert header["Segment1_Extent"] == f"{xs.min()} {xs.max()} {ys.min()} {ys.max()} {zs.min()} {zs.max()}"
    assert header["Segment2_Extent"] == "0 -1 0 -1 0 -1"  # an empty segment, as Slicer writes it
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    # As Slicer reads it: named segments whose voxels are the label, in LPS (Slicer's ijkToLPS).
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["liver", "tumour", "vessel"]
    for value, name in ((1, "liver"), (2, "tumour")):
        mask = slicerio.segment_mask(seg, slicerio.segment_from_name(seg, name))
        assert np.array_equal(mask > 0, phantom.label == value)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose(lps_to_ras @ seg["ijkToLPS"], phantom.affine, atol=1e-6)
    back = read_slicer_seg(path)
    assert back.names == {1: "liver", 2: "tumour", 3: "vessel"} and np.array_equal(back.label, phantom.label)


def test_seg_nrrd_that_slicer_saved_cropped_and_layered_lands_on_the_grid(tmp_path):
    slicerio = require("slicerio")
    phantom = liver_phantom(6, size="tiny")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.affine
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(phantom.label))
    cropped_origin = lps @ np.array([box[0].start, box[1].start, box[2].start, 1.0])
    ijk_to_lps = lps.copy()
    ijk_to_lps[:, 3] = cropped_origin
    # Two segments in two layers, overlapping: a liver painted over its tumour (Slicer allows it).
    layers = np.stack([(phantom.label[box] > 0).astype(np.uint8), (phantom.label[box] == 2).astype(np.uint8)])
    segmentation = {
        "voxels": layers,
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [
            {"id": "Segment_1", "name": "Liver", "labelValue": 1, "layer": 0, "color": [1, 0, 0]},
            {"id": "Segment_2", "name": "tumour", "labelValue": 1, "layer": 1, "color": [0, 1, 0]},
        ],
    }
    slicerio.write_segmentation(str(tmp_path / "cropped.seg.nrrd"), segmentation)
    label = read_correction(
        tmp_path / "cropped.seg.nrrd", names=NAMES, shape=phantom.label.shape, affine=phantom.affine
    )
    assert np.array_equal(label, phantom.label)  # cropped extent placed back; the tumour wins over the liver
    with pytest.raises(InputError, match="overlap"):
        read_slicer_seg(tmp_path / "cropped.seg.nrrd")  # as one label map of its own, overlaps are an error


def test_place_on_grid_is_exact_or_refuses():
    label = np.zeros((6, 5, 4), np.uint8)
    label[1:3, 2, 1:3] = 1
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = (10, -5, 7)
    flipped = affine @ np.array([[-1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert np.array_equal(place_on_grid(label[::-1], flipped, label.shape, affine, path="f"), label)
    permuted = affine[:, [1, 0, 2, 3]]
    assert np.array_equal(
        place_on_grid(label.transpose(1, 0, 2), permuted, label.shape, affine, path="p"), label
    )
    shifted = affine.copy()
    shifted[0, 3] += 1.0  # half a voxel
    with pytest.raises(GeometryError, match="shifted by"):
        place_on_grid(label, shifted, label.shape, affine, path="s.nii.gz")
    coarse = affine @ np.diag([2.0, 1, 1, 1])
    with pytest.raises(GeometryError, match="another lattice"):
        place_on_grid(label, coarse, label.shape, affine, path="c.nii.gz")
    outside = affine.copy()
    outside[0, 3] += 2.0 * 5  # moved 5 voxels along x: the labels fall off the image
    with pytest.raises(GeometryError, match="outside the image"):
        place_on_grid(label, outside, label.shape, affine, path="o.nii.gz")


def test_lesion_edits_count_added_removed_and_changed():
    original = np.zeros((20, 20, 5), bool)
    original[2:4, 2:4, 1:3] = True  # kept as is
    original[8:10, 8:10, 1:3] = True  # grown
    original[15:17, 15:17, 1:3] = True  # deleted
    final = original.copy()
    final[15:17, 15:17, 1:3] = False
    final[8:11, 8:10, 1:3] = True
    final[2:4, 14:16, 1:3] = True  # a new lesion
    assert lesion_edits(original, final) == {
        "lesions_original": 3,
        "lesions_final": 3,
        "lesions_added": 1,
        "lesions_removed": 1,
        "lesions_changed": 1,
    }


def test_prelabel_ranks_the_doubtful_case_first_and_writes_a_worklist(
    liver_bundle, oracle_weights, cases, tmp_path
):
    folder, phantoms = cases
    rows = prelabel(
        liver_bundle, [folder], tmp_path / "work", weights=oracle_weights, overrides=SOFT_ORACLE, tta=False
    )
    assert rows[0]["case"] == "case_noisy" and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["mean_entropy"] > 1.5 * max(r["mean_entropy"] for r in rows[1:])
    with (tmp_path / "work" / "worklist.csv").open() as handle:
        assert [r["case"] for r in csv.DictReader(handle)] == [r["case"] for r in rows]
    page = (tmp_path / "work" / "worklist.html").read_text()
    assert page.index("case_noisy") < page.index("case_0") and "thumbnails/case_noisy.png" in page
    for row in rows:
        assert (tmp_path / "work" / row["thumbnail"]).stat().st_size > 1000
        seg = read_slicer_seg(tmp_path / "work" / row["prelabel"])
        written = load_volume(tmp_path / "work" / "prelabel" / f"{row['case']}.nii.gz", label=True)
        assert (
            np.array_equal(seg.label, written.array)
            and np.allclose(seg.affine, written.affine)
            and seg.names == NAMES
        )
        if (
            row["case"] != "case_noisy"
        ):  # the bundle's post-processing may drop a stray voxel: not exact, but close
            assert dice(seg.label == 1, phantoms[row["case"]].label == 1) > 0.99
    manifest = json.loads((tmp_path / "work" / "annotation.json").read_text())
    assert (
        manifest["round"] == 1
        and set(manifest["cases"]) == set(phantoms)
        and manifest["names"] == {"1": "liver", "2": "tumour"}
    )
    first = prelabel(
        liver_bundle,
        [folder],
        tmp_path / "w2",
        weights=oracle_weights,
        overrides=SOFT_ORACLE,
        tta=False,
        strategy="first",
    )
    assert [r["case"] for r in first] == sorted(phantoms)
    shuffled = [
        prelabel(
            liver_bundle,
            [folder],
            tmp_path / f"w{seed}",
            weights=oracle_weights,
            overrides=SOFT_ORACLE,
            tta=False,
            strategy="random",
            seed=seed,
        )
        for seed in (3, 3)
    ]
    assert [r["case"] for r in shuffled[0]] == [r["case"] for r in shuffled[1]]
    with pytest.raises(InputError, match="--strategy"):
        prelabel(liver_bundle, [folder], tmp_path / "w5", weights=oracle_weights, strategy="greedy")


def test_promise_a_scan_the_model_cannot_read_is_ranked_first_and_says_why(
    liver_bundle, oracle_weights, cases, tmp_path
):
    """A scan stored with a wrong rescale (every HU + 3000): the model confidently finds nothing, so its
    entropy is lowest and entropy alone ranks it last; the out-of-distribution check puts it first."""
    import shutil

    folder, _ = cases
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    phantom = liver_phantom(45, size="tiny")
    write_volume(
        (label_image(phantom.label) + 3000).astype(np.int16), phantom.affine, mixed / "case_shifted.nii.gz"
    )
    rows = prelabel(
        liver_bundle, [mixed], tmp_path / "work", weights=oracle_weights, overrides=SOFT_ORACLE, tta=False
    )
    assert rows[0]["case"] == "case_shifted" and rows[0]["ood"]
    assert "intensity histogram" in rows[0]["ood_reason"] and "no liver predicted" in rows[0]["ood_reason"]
    by_entropy = sorted(rows, key=lambda r: -r["mean_entropy"])
    assert by_entropy[-1]["case"] == "case_shifted"  # the old ranking would have put it last
    assert not any(r["ood"] for r in rows if r["case"].startswith("case_") and r["case"][5:].isdigit())
    page = (tmp_path / "work" / "worklist.html").read_text()
    assert "out of distribution against the median of these 6 cases" in page


def test_ingest_measures_the_edit_and_names_refused_files(liver_bundle, oracle_weights, cases, tmp_path):
    folder, phantoms = cases
    work = tmp_path / "work"
    prelabel(liver_bundle, [folder], work, weights=oracle_weights, overrides=SOFT_ORACLE, tta=False)
    corrected = tmp_path / "corrected"
    corrected.mkdir()
    # case_0: accepted unchanged (the pre-label saved back from Slicer as is).
    shutil.copy(work / "prelabel" / "case_0.seg.nrrd", corrected / "case_0.seg.nrrd")
    # case_1: a NIfTI correction: a missed lesion painted in, a slab of liver erased.
    truth = phantoms["case_1"].label
    edited = truth.copy()
    edited[2:5, 2:5, 2:4] = 2
    erased = (edited == 1) & (np.arange(truth.shape[2]) >= truth.shape[2] - 3)[None, None, :]
    edited[erased] = 0
    save_nifti(edited.astype(np.uint8), phantoms["case_1"].affine, corrected / "case_1.nii.gz")
    # case_2: a segment name the bundle does not know; case_3: on a shifted grid.
    write_slicer_seg(
        phantoms["case_2"].label,
        phantoms["case_2"].affine,
        corrected / "case_2.seg.nrrd",
        names={1: "liver", 2: "spleen"},
    )
    shifted = phantoms["case_3"].affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]
    save_nifti(phantoms["case_3"].label, shifted, corrected / "case_3.nii.gz")
    with pytest.raises(IngestFailed) as refused:
        ingest(work, corrected)
    assert set(refused.value.failures) == {"case_2", "case_3"}
    assert (
        "case_2.seg.nrrd" in refused.value.failures["case_2"]
        and "'spleen'" in refused.value.failures["case_2"]
    )
    assert (
        "case_3.nii.gz" in refused.value.failures["case_3"] and "shifted" in refused.value.failures["case_3"]
    )
    report = json.loads((work / "edit_effort.json").read_text())
    rows = {(r["case"], r["structure"]): r for r in report["cases"]}
    assert rows[("case_0", "liver")]["unchanged"] and rows[("case_0", "tumour")]["dice"] == 1.0
    voxel_ml = abs(np.linalg.det(phantoms["case_1"].affine[:3, :3])) / 1000
    spacing = tuple(np.linalg.norm(phantoms["case_1"].affine[:3, :3], axis=0))
    original = load_volume(work / "labels" / "original" / "case_1.nii.gz").array  # the pre-label
    assert dice(original == 1, truth == 1) > 0.99
    liver, tumour = rows[("case_1", "liver")], rows[("case_1", "tumour")]
    assert liver["dice"] == pytest.approx(dice(original == 1, edited == 1)) and liver["dice"] < 1.0
    assert liver["hd95_mm"] == pytest.approx(
        hausdorff(surface_distances(original == 1, edited == 1, spacing), 95)
    )
    assert (
        liver["removed_ml"] == pytest.approx(((original == 1) & (edited != 1)).sum() * voxel_ml)
        and liver["removed_ml"] > 0
    )
    assert (
        tumour["added_ml"]
        == pytest.approx(((edited == 2) & (original != 2)).sum() * voxel_ml)
        == 18 * voxel_ml
    )
    assert tumour["lesions_added"] == 1 and tumour["lesions_removed"] == 0 and tumour["lesions_changed"] == 0
    assert tumour["slices_touched"] == 2
    assert liver["slices_touched"] == int(((original == 1) != (edited == 1)).any(axis=(0, 1)).sum())
    assert "lesions_added" not in liver  # liver is not a lesion class
    assert report["summary"]["cases"] == 2 and report["summary"]["cases_accepted_unchanged"] == 1
    assert report["summary"]["not_corrected_yet"] == ["case_noisy"]
    assert np.array_equal(load_volume(work / "labels" / "final" / "case_1.nii.gz").array, edited)
    assert np.array_equal(load_volume(work / "labels" / "original" / "case_1.nii.gz").array, truth)
    with (work / "edit_effort.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert "accepted unchanged" in (work / "edit_effort.html").read_text()
    # The next prelabel round leaves the corrected cases out.
    again = prelabel(liver_bundle, [folder], work, weights=oracle_weights, overrides=SOFT_ORACLE, tta=False)
    assert {r["case"] for r in again} == {"case_2", "case_3", "case_noisy"}
    assert json.loads((work / "annotation.json").read_text())["round"] == 2


def test_cli_three_commands_report_bad_folders(tmp_path):
    from voxpipe.cli.main import main

    assert main(["annotate", "ingest", str(tmp_path / "nowork"), str(tmp_path)]) == 2
    assert (
        main(
            [
                "annotate",
                "finetune",
                str(tmp_path / "nowork"),
                "configs/liver_ct_segresnet",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_dicom_inputs_get_a_dicom_seg_and_a_dicom_seg_correction_is_ingested(
    liver_bundle, oracle_weights, tmp_path
):
    from voxpipe.phantoms.dicom import write_dicom_series

    phantom = liver_phantom(47, size="tiny")
    write_dicom_series(label_image(phantom.label), phantom.affine, tmp_path / "series_a")
    work = tmp_path / "work"
    [row] = prelabel(
        liver_bundle, [tmp_path / "series_a"], work, weights=oracle_weights, overrides=SOFT_ORACLE, tta=False
    )
    assert row["case"] == "series_a" and (work / "prelabel" / "series_a.dcm").is_file()
    corrected = tmp_path / "corrected"
    corrected.mkdir()
    shutil.copy(
        work / "prelabel" / "series_a.dcm", corrected / "series_a.dcm"
    )  # the DICOM-SEG, saved back unchanged
    result = ingest(work, corrected)
    assert result["summary"]["cases_accepted_unchanged"] == 1 and {r["dice"] for r in result["rows"]} == {1.0}

    # Promise: a SEG that references another series on the same grid is refused, naming the file.
    import pydicom

    from voxpipe.pipelines.annotation.ingest import IngestFailed

    seg = pydicom.dcmread(corrected / "series_a.dcm")
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    seg.save_as(corrected / "series_a.dcm")
    with pytest.raises(
        IngestFailed, match=r"series_a.dcm'.*references series .*999.*expected the case's series"
    ):
        ingest(work, corrected)


@pytest.mark.slow
def test_a_simulated_round_of_active_learning_raises_dice_on_the_remaining_cases(liver_bundle, tmp_path):
    from conftest import TINY_MODEL

    from voxpipe.phantoms.ct import write_msd_dataset
    from voxpipe.pipelines.annotation.simulate import simulate_round
    from voxpipe.pipelines.bundles.run import run_bundle

    write_msd_dataset(tmp_path / "base", n_train=2, n_test=0, seed=1, size="tiny")
    run_bundle(
        liver_bundle,
        config="train",
        overrides={
            "dataset_dir": str(tmp_path / "base"),
            "output_dir": str(tmp_path / "base_run"),
            "max_epochs": 4,
            "val_interval": 4,
            "val_fraction": 0.0,
            **TINY_MODEL,
        },
    )
    write_msd_dataset(tmp_path / "pool", n_train=6, n_test=0, seed=2, size="tiny")
    pool = [
        (image, tmp_path / "pool" / "labelsTr" / image.name)
        for image in sorted((tmp_path / "pool" / "imagesTr").glob("*.nii.gz"))
    ]
    result = simulate_round(
        liver_bundle,
        pool,
        tmp_path / "work",
        weights=tmp_path / "base_run" / "models" / "model_final.pt",
        n_correct=3,
        finetune_epochs=16,
        overrides=TINY_MODEL,
        train_overrides={"val_interval": 16},
        tta=False,
    )
    print(result["dice_before"], result["dice_after"])
    assert len(result["corrected"]) == 3 and len(result["remaining"]) == 3
    assert result["edit_effort"]["cases"] == 3
    assert result["dice_after"]["liver"] > result["dice_before"]["liver"] + 0.05


def test_segmentations_saved_by_slicer_itself_are_read_as_slicer_reads_them():
    slicerio = require("slicerio")
    path = slicerio.get_testdata_file("Segmentation.seg.nrrd")  # saved by 3D Slicer; shipped with slicerio
    theirs = slicerio.read_segmentation(path)
    mine = read_slicer_seg(path)
    assert list(mine.names.values()) == [s["name"] for s in theirs["segments"]]
    for value, name in mine.names.items():
        assert np.array_equal(
            mine.label == value, slicerio.segment_mask(theirs, slicerio.segment_from_name(theirs, name)) > 0
        )
    assert np.allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ theirs["ijkToLPS"], mine.affine)
    with pytest.raises(InputError, match="'tissue' and 'overlapping sphere' overlap"):
        read_slicer_seg(slicerio.get_testdata_file("SegmentationOverlapping.seg.nrrd"))
