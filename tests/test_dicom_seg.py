"""DICOM-SEG references: placed exactly on the prediction grid, or refused; scored by `evaluate`."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from helpers import absent
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from voxpipe.errors import GeometryError, InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.pipelines.evaluation.evaluate import evaluate_folders
from voxpipe.transforms.dicom_seg import SEG_SOP_CLASS, is_dicom_seg, read_seg, seg_grid, seg_to_label_map
from voxpipe.transforms.io import LPS_TO_RAS, load_volume, save_nifti, write_volume


def _item(**values):
    item = pydicom.Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def write_seg(label: np.ndarray, affine: np.ndarray, path, *, segments=(1, 2), overlap: bool = False):
    """A minimal BINARY DICOM-SEG of ``label`` (x, y, z) on ``affine``: one frame per segment and slice."""
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    frames, per_frame = [], []
    for segment in segments:
        for k in range(label.shape[2]):
            mask = (label[:, :, k] == segment) | (overlap and segment == 2 and (label[:, :, k] == 1))
            if mask.any():
                frames.append(mask.T)
                position = lps[:3, 3] + k * lps[:3, 2]
                per_frame.append(
                    _item(
                        PlanePositionSequence=DicomSequence(
                            [_item(ImagePositionPatient=[f"{v:.6f}" for v in position])]
                        ),
                        SegmentIdentificationSequence=DicomSequence([_item(ReferencedSegmentNumber=segment)]),
                    )
                )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SEG_SOP_CLASS, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SEG_SOP_CLASS, meta.MediaStorageSOPInstanceUID, "SEG"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SegmentationType, ds.Rows, ds.Columns, ds.NumberOfFrames = (
        "BINARY",
        label.shape[1],
        label.shape[0],
        len(frames),
    )
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.SegmentSequence = DicomSequence(
        [_item(SegmentNumber=s, SegmentLabel=f"segment {s}") for s in segments]
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence(
        [
            _item(
                PlaneOrientationSequence=DicomSequence(
                    [_item(ImageOrientationPatient=[f"{v:.8f}" for v in (*row, *col)])]
                ),
                PixelMeasuresSequence=DicomSequence(
                    [
                        _item(
                            PixelSpacing=[f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"],
                            SliceThickness=f"{spacing[2]:.6f}",
                            SpacingBetweenSlices=f"{spacing[2]:.6f}",
                        )
                    ]
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.packbits(np.stack(frames).astype(np.uint8).reshape(-1), bitorder="little").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def phantom():
    return liver_phantom(6, orientation="LPS", size="tiny")


def test_seg_lands_exactly_on_its_image_grid(tmp_path, phantom):
    path = write_seg(phantom.label, phantom.affine, tmp_path / "case.dcm")
    assert is_dicom_seg(path) and not is_dicom_seg(
        save_nifti(phantom.label, phantom.affine, tmp_path / "x.nii.gz")
    )
    seg = read_seg(path)
    assert seg.labels == {1: "segment 1", 2: "segment 2"}
    assert np.array_equal(seg_to_label_map(seg, phantom.label.shape, phantom.affine), phantom.label)
    # Its own lattice spans the frames: same geometry along the slices that hold labels.
    shape, affine = seg_grid(seg)
    own = seg_to_label_map(seg, shape, affine)
    assert own.sum() == phantom.label.sum() and np.allclose(affine[:3, :3], phantom.affine[:3, :3], atol=1e-5)


def test_off_grid_and_overlapping_segs_are_refused(tmp_path, phantom):
    seg = read_seg(write_seg(phantom.label, phantom.affine, tmp_path / "case.dcm"))
    coarse = phantom.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    with pytest.raises(GeometryError, match="do not lie on the image grid"):
        seg_to_label_map(seg, phantom.label.shape, coarse)
    shifted = phantom.affine.copy()
    shifted[:3, 3] += 0.3 * phantom.affine[:3, 0]
    with pytest.raises(GeometryError, match="falls between voxels"):
        seg_to_label_map(seg, phantom.label.shape, shifted)
    overlapping = read_seg(write_seg(phantom.label, phantom.affine, tmp_path / "overlap.dcm", overlap=True))
    with pytest.raises(InputError, match="segments 1 and 2 overlap"):
        seg_to_label_map(overlapping, phantom.label.shape, phantom.affine)


def test_evaluate_scores_against_seg_references(tmp_path, phantom):
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    refs.mkdir()
    write_seg(phantom.label, phantom.affine, refs / "case_a.dcm")
    write_seg(phantom.label, phantom.affine, refs / "case_b.dcm")
    write_volume(phantom.label, phantom.affine, preds / "case_a.nrrd")  # perfect; case_b missing
    result = evaluate_folders(
        preds, refs, labels={"liver": (1,), "tumour": (2,)}, output_dir=tmp_path / "out"
    )
    rows = {r["case"]: r for r in result.rows}
    assert (
        rows["case_a"]["status"] == "ok"
        and rows["case_a"]["dice_liver"] == 1.0
        and rows["case_a"]["hd95_liver"] == 0.0
    )
    assert rows["case_b"]["status"] == "missing" and rows["case_b"]["dice_liver"] == 0.0
    # A prediction on another grid: an error naming the SEG, or resampled onto the SEG's own lattice.
    coarse = phantom.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    shutil.rmtree(preds)
    write_volume(phantom.label[::2, ::2], coarse, preds / "case_a.nii.gz")
    failed = evaluate_folders(preds, refs, labels={"liver": (1,)}, output_dir=tmp_path / "out2")
    assert failed.rows[0]["status"] == "wrong_grid" and "case_a.dcm" in failed.rows[0]["reason"]
    resampled = evaluate_folders(
        preds, refs, labels={"liver": (1,)}, output_dir=tmp_path / "out3", resample_predictions=True
    )
    assert resampled.rows[0]["dice_liver"] > 0.8


@pytest.mark.realdata
def test_dcmqi_liver_seg_equals_its_manual_nrrd(real_data, tmp_path):
    seg, nrrd = real_data / "dcmqi" / "liver.dcm", real_data / "dcmqi" / "liver_seg.nrrd"
    if not seg.is_file() or not nrrd.is_file():
        absent("dcmqi files are absent", required_by="VOXPIPE_REQUIRE_REAL_DATA")
    manual = load_volume(nrrd)
    assert np.array_equal(seg_to_label_map(read_seg(seg), manual.array.shape, manual.affine), manual.array)
    (tmp_path / "refs").mkdir()
    shutil.copy(seg, tmp_path / "refs" / "liver.dcm")
    write_volume(manual.array, manual.affine, tmp_path / "preds" / "liver.nrrd")
    result = evaluate_folders(
        tmp_path / "preds", tmp_path / "refs", labels={"liver": (1,)}, output_dir=tmp_path / "out"
    )
    assert result.rows[0]["dice_liver"] == 1.0 and result.rows[0]["hd_liver"] == 0.0


def test_report_draws_seg_references_over_the_image(tmp_path, phantom):
    from voxpipe.pipelines.evaluation.report import _background, write_report

    refs, preds, images = tmp_path / "refs", tmp_path / "preds", tmp_path / "images"
    refs.mkdir()
    write_seg(phantom.label, phantom.affine, refs / "case_a.dcm")
    write_volume(phantom.label, phantom.affine, preds / "case_a.nii.gz")
    write_volume(phantom.image, phantom.affine, images / "case_a.nii.gz")
    result = evaluate_folders(preds, refs, labels={"liver": (1,)}, output_dir=tmp_path / "out")
    page = write_report(result, preds, refs, output_dir=tmp_path / "out", images_dir=images).read_text()
    assert (tmp_path / "out" / "overlay_case_a.png").is_file() and page.count("data:image/png;base64,") >= 2
    background = _background("case_a", {"case_a": images / "case_a.nii.gz"}, phantom.label.shape)
    assert 0.0 <= background.min() < 0.1 and background.max() > 0.9  # the CT, windowed to [0, 1]
    assert not _background("case_a", {}, phantom.label.shape).any()  # no image: black


def test_written_seg_reads_back_exactly_and_tilted_series_are_refused(tmp_path, phantom):
    import highdicom as hd

    from voxpipe.phantoms.dicom import write_dicom_series
    from voxpipe.transforms.dicom_seg import write_dicom_seg

    write_dicom_series(phantom.image, phantom.affine, tmp_path / "ct")
    out = write_dicom_seg(
        phantom.label, tmp_path / "ct", tmp_path / "seg.dcm", names={1: "liver", 2: "tumour"}
    )
    assert np.array_equal(seg_to_label_map(read_seg(out), phantom.label.shape, phantom.affine), phantom.label)
    seg = hd.seg.segread(out)  # highdicom reads it too, with the codes
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence] == [
        "Liver",
        "Neoplasm",
    ]
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == phantom.label.shape[2]
    write_dicom_series(phantom.image, phantom.affine, tmp_path / "tilted", tilt_pixels=1)
    with pytest.raises(GeometryError, match="resampled on loading"):
        write_dicom_seg(
            phantom.label, tmp_path / "tilted", tmp_path / "bad.dcm", names={1: "liver", 2: "tumour"}
        )
    assert not (tmp_path / "bad.dcm").exists()
    with pytest.raises(InputError, match=r"label values \[2\] have no name"):
        write_dicom_seg(phantom.label, tmp_path / "ct", tmp_path / "bad.dcm", names={1: "liver"})


@pytest.mark.realdata
def test_totalsegmentator_labels_round_trip_through_seg_on_the_jpeg2000_series(real_data, tmp_path):
    import json

    from voxpipe.pipelines.evaluation.evaluate import resample_nearest
    from voxpipe.transforms.dicom_seg import write_dicom_seg

    folder = real_data / "totalsegmentator"
    if not (folder / "example_ct_dicom").is_dir() or not (folder / "example_seg_dicom.nii.gz").is_file():
        absent("TotalSegmentator DICOM example is absent", required_by="VOXPIPE_REQUIRE_REAL_DATA")
    ct = load_volume(folder / "example_ct_dicom")
    label = resample_nearest(load_volume(folder / "example_seg_dicom.nii.gz", label=True), ct).astype(
        np.uint8
    )  # same lattice, other axis order
    classes = json.loads((folder / "class_map_total_and_total_mr.json").read_text())["total"]
    present = sorted(int(v) for v in np.unique(label) if v)
    out = write_dicom_seg(
        label, folder / "example_ct_dicom", tmp_path / "seg.dcm", names={v: classes[str(v)] for v in present}
    )
    seg = read_seg(out)
    assert len(seg.labels) == len(present) and seg.labels[present.index(5) + 1] == "liver"
    renumbered = np.zeros(256, np.uint8)
    renumbered[present] = np.arange(1, len(present) + 1)
    assert np.array_equal(seg_to_label_map(seg, ct.array.shape, ct.affine), renumbered[label])


def test_structure_names_get_their_own_snomed_codes():
    from pydicom.sr.codedict import codes

    from voxpipe.transforms.dicom_seg import _SYNONYMS, structure_codes

    expected = {
        "kidney_right": "Kidney",
        "vertebrae_L1": "L1 vertebra",
        "vertebrae_C7": "C7 vertebra",
        "rib_left_3": "Rib",
        "urinary_bladder": "Bladder",
        "small_bowel": "Small intestine",
        "autochthon_left": "Erector spinae muscle",
        "lung_middle_lobe_right": "Middle lobe of right lung",
        "femur_left": "Femur",
        "inferior_vena_cava": "Inferior vena cava",
        "liver": "Liver",
        "left lung": "Lung",
    }
    for name, meaning in expected.items():
        category, kind = structure_codes(name)
        assert (category.meaning, kind.meaning) == ("Anatomical Structure", meaning), name
    assert structure_codes("liver tumour")[1].meaning == "Neoplasm"
    assert structure_codes("kidney_cyst_left")[1].meaning == "Cyst"
    assert structure_codes("part1_structure_3")[1].meaning == "Tissue"
    for target in _SYNONYMS.values():  # every synonym names a concept pydicom knows
        assert target in dir(codes.SCT), target


#: TotalSegmentator's 117 ``total`` classes with the SNOMED CT type and laterality of each (for the
#: kidney cysts: Cyst, the laterality of their region, Kidney), written out from TotalSegmentator
#: 2.18.0's own coding table (its resources/totalsegmentator_snomed_mapping.csv).
TOTAL_CODES = """
    spleen: Spleen
    kidney_right: Kidney | Right
    kidney_left: Kidney | Left
    gallbladder: Gallbladder
    liver: Liver
    stomach: Stomach
    pancreas: Pancreas
    adrenal_gland_right: Adrenal gland | Right
    adrenal_gland_left: Adrenal gland | Left
    lung_upper_lobe_left: Upper lobe of lung | Left
    lung_lower_lobe_left: Lower lobe of lung | Left
    lung_upper_lobe_right: Upper lobe of lung | Right
    lung_middle_lobe_right: Middle lobe of right lung
    lung_lower_lobe_right: Lower lobe of lung | Right
    esophagus: Esophagus
    trachea: Trachea
    thyroid_gland: Thyroid gland
    small_bowel: Small Intestine
    duodenum: Duodenum
    colon: Colon
    urinary_bladder: Urinary bladder
    prostate: Prostate
    kidney_cyst_left: Cyst | Left
    kidney_cyst_right: Cyst | Right
    sacrum: Sacrum
    vertebrae_S1: S1 vertebra
    vertebrae_L5: L5 vertebra
    vertebrae_L4: L4 vertebra
    vertebrae_L3: L3 vertebra
    vertebrae_L2: L2 vertebra
    vertebrae_L1: L1 vertebra
    vertebrae_T12: T12 vertebra
    vertebrae_T11: T11 vertebra
    vertebrae_T10: T10 vertebra
    vertebrae_T9: T9 vertebra
    vertebrae_T8: T8 vertebra
    vertebrae_T7: T7 vertebra
    vertebrae_T6: T6 vertebra
    vertebrae_T5: T5 vertebra
    vertebrae_T4: T4 vertebra
    vertebrae_T3: T3 vertebra
    vertebrae_T2: T2 vertebra
    vertebrae_T1: T1 vertebra
    vertebrae_C7: C7 vertebra
    vertebrae_C6: C6 vertebra
    vertebrae_C5: C5 vertebra
    vertebrae_C4: C4 vertebra
    vertebrae_C3: C3 vertebra
    vertebrae_C2: C2 vertebra
    vertebrae_C1: C1 vertebra
    heart: Heart
    aorta: Aorta
    pulmonary_vein: Pulmonary vein
    brachiocephalic_trunk: Brachiocephalic artery
    subclavian_artery_right: Subclavian artery | Right
    subclavian_artery_left: Subclavian artery | Left
    common_carotid_artery_right: Common carotid artery | Right
    common_carotid_artery_left: Common carotid artery | Left
    brachiocephalic_vein_left: Brachiocephalic vein | Left
    brachiocephalic_vein_right: Brachiocephalic vein | Right
    atrial_appendage_left: Auricular appendage | Left
    superior_vena_cava: Superior vena cava
    inferior_vena_cava: Inferior vena cava
    portal_vein_and_splenic_vein: Portal vein and splenic vein
    iliac_artery_left: Common iliac artery | Left
    iliac_artery_right: Common iliac artery | Right
    iliac_vena_left: Common iliac vein | Left
    iliac_vena_right: Common iliac vein | Right
    humerus_left: Humerus | Left
    humerus_right: Humerus | Right
    scapula_left: Scapula | Left
    scapula_right: Scapula | Right
    clavicula_left: Clavicle | Left
    clavicula_right: Clavicle | Right
    femur_left: Femur | Left
    femur_right: Femur | Right
    hip_left: Hip | Left
    hip_right: Hip | Right
    spinal_cord: Spinal cord
    gluteus_maximus_left: Gluteus maximus muscle | Left
    gluteus_maximus_right: Gluteus maximus muscle | Right
    gluteus_medius_left: Gluteus medius muscle | Left
    gluteus_medius_right: Gluteus medius muscle | Right
    gluteus_minimus_left: Gluteus minius muscle | Left
    gluteus_minimus_right: Gluteus minius muscle | Right
    autochthon_left: Deep muscle of back | Left
    autochthon_right: Deep muscle of back | Right
    iliopsoas_left: Iliopsoas muscle | Left
    iliopsoas_right: Iliopsoas muscle | Right
    brain: Brain
    skull: Skull
    rib_left_1: First rib | Left
    rib_left_2: Second rib | Left
    rib_left_3: Third rib | Left
    rib_left_4: Fourth rib | Left
    rib_left_5: Fifth rib | Left
    rib_left_6: Sixth rib | Left
    rib_left_7: Seventh rib | Left
    rib_left_8: Eighth rib | Left
    rib_left_9: Ninth rib | Left
    rib_left_10: Tenth rib | Left
    rib_left_11: Eleventh rib | Left
    rib_left_12: Twelfth rib | Left
    rib_right_1: First rib | Right
    rib_right_2: Second rib | Right
    rib_right_3: Third rib | Right
    rib_right_4: Fourth rib | Right
    rib_right_5: Fifth rib | Right
    rib_right_6: Sixth rib | Right
    rib_right_7: Seventh rib | Right
    rib_right_8: Eighth rib | Right
    rib_right_9: Ninth rib | Right
    rib_right_10: Tenth rib | Right
    rib_right_11: Eleventh rib | Right
    rib_right_12: Twelfth rib | Right
    sternum: Sternum
    costal_cartilages: Costal cartilage

"""


def test_every_totalsegmentator_class_gets_its_specific_concept_and_side():
    from voxpipe.pipelines.inference.totalseg.tasks import classes
    from voxpipe.transforms.dicom_seg import structure_concept

    expected = {}
    for line in TOTAL_CODES.strip().splitlines():
        name, coded = line.strip().split(": ", 1)
        meaning, _, side = coded.partition(" | ")
        expected[name] = (meaning, side or None)
    assert len(expected) == 117 and set(expected) == set(classes("total").values())
    for name, (meaning, side) in expected.items():
        concept = structure_concept(name)
        assert concept.type.meaning == meaning, name
        found = concept.modifier or concept.region_modifier
        assert (found.meaning if found is not None else None) == side, name
        finding = meaning == "Cyst"
        assert concept.category.meaning == (
            "Morphologically Altered Structure" if finding else "Anatomical Structure"
        )
        assert (concept.region.meaning if finding else concept.region) == ("Kidney" if finding else None)
    assert structure_concept("mystery_gland_left_2").modifier.meaning == "Left"  # other names keep their side


def test_a_written_seg_keeps_the_side_of_each_structure(tmp_path, phantom):
    from voxpipe.phantoms.dicom import write_dicom_series
    from voxpipe.transforms.dicom_seg import write_dicom_seg

    write_dicom_series(phantom.image, phantom.affine, tmp_path / "ct")
    names = {1: "kidney_left", 2: "kidney_cyst_right"}
    out = write_dicom_seg(phantom.label, tmp_path / "ct", tmp_path / "seg.dcm", names=names)
    segments = pydicom.dcmread(out).SegmentSequence
    kidney, cyst = segments
    kind = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert (kind.CodeValue, kind.CodeMeaning) == ("64033007", "Kidney")
    assert kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # Left
    assert cyst.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Cyst"
    region = cyst.AnatomicRegionSequence[0]
    assert region.CodeMeaning == "Kidney" and region.AnatomicRegionModifierSequence[0].CodeValue == "24028007"
