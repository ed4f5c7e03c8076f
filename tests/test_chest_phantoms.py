"""Chest CTs with nodules in the LUNA16 layout: the world coordinates land on the nodules (checked with SimpleITK)."""

from __future__ import annotations

import csv

import numpy as np
import SimpleITK as sitk

from voxpipe.metrics.detection import luna16_froc, read_findings, read_seriesuids
from voxpipe.phantoms.chest import KINDS, LOCATIONS, chest_case, write_nodule_ct_dataset


def test_nodules_of_every_kind_and_location_and_scans_without_any():
    cases = [chest_case(seed, size="tiny") for seed in range(12)]
    counts = [len(c.nodules) for c in cases]
    assert 0 in counts and max(counts) <= 6
    seen = {(n["kind"], n["location"]) for c in cases for n in c.nodules}
    assert {k for k, _ in seen} == set(KINDS) and {loc for _, loc in seen} == set(LOCATIONS)
    for case in cases:
        assert sorted(np.unique(case.instances[case.instances > 0]).tolist()) == list(
            range(1, len(case.nodules) + 1)
        )
        assert all(2.5 < n["diameter_mm"] < 40 for n in case.nodules)


def test_annotations_are_world_lps_centres_that_simpleitk_maps_onto_the_nodule(tmp_path):
    root = write_nodule_ct_dataset(tmp_path / "nct", n=4, seed=3, size="tiny")
    rows = list(csv.DictReader((root / "annotations.csv").open()))
    assert rows and set(read_seriesuids(root / "seriesuids.csv")) >= {r["seriesuid"] for r in rows}
    numbers: dict[str, int] = {}
    for row in rows:
        image = sitk.ReadImage(str(root / "images" / f"{row['seriesuid']}.mha"))
        instances = sitk.GetArrayFromImage(
            sitk.ReadImage(str(root / "instances" / f"{row['seriesuid']}.nii.gz"))
        )
        index = image.TransformPhysicalPointToIndex([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
        numbers[row["seriesuid"]] = numbers.get(row["seriesuid"], 0) + 1
        assert instances[index[2], index[1], index[0]] == numbers[row["seriesuid"]]
    # The annotations scored against themselves as candidates: every nodule found, no false positive.
    truth = read_findings(root / "annotations.csv", value="diameter_mm")
    perfect = [type(t)(t.series, t.x, t.y, t.z, 0.9) for t in truth]
    result = luna16_froc(
        perfect,
        truth,
        excluded=read_findings(root / "annotations_excluded.csv", value="diameter_mm"),
        seriesuids=read_seriesuids(root / "seriesuids.csv"),
        n_bootstrap=0,
    )
    assert result.cpm == 1.0 and result.false_positives == 0


def test_box_files_hold_each_nodule_in_world_mm(tmp_path):
    from voxpipe.transforms.boxes import read_boxes_json

    root = write_nodule_ct_dataset(tmp_path / "nct", n=2, seed=5, size="tiny")
    rows = list(csv.DictReader((root / "annotations.csv").open()))
    for uid in read_seriesuids(root / "seriesuids.csv"):
        boxes, space, items = read_boxes_json(root / "boxes" / f"{uid}.json")
        centres = [
            np.array([float(r[k]) for k in ("coordX", "coordY", "coordZ")])
            for r in rows
            if r["seriesuid"] == uid
        ]
        assert space == "world_lps" and len(boxes) == len(centres)
        for box, centre in zip(boxes, centres, strict=True):  # the centre of mass lies inside its box
            assert np.all(box[:3] <= centre) and np.all(centre <= box[3:])
