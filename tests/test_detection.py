"""Nodule detection: box transforms against SimpleITK, anchor planning, weighted box clustering, empty-scan
training, the NaN guard, and synth → train → detect --classify → evaluate-detections end to end (CPU),
with the DICOM-SEG of the detections read back on the series grid."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO

from voxpipe.errors import InputError
from voxpipe.networks.retinanet import build_detector, build_retinanet
from voxpipe.phantoms.dicom import oblique_affine
from voxpipe.pipelines.training.detection import (
    DetectionCPM,
    DetectionTrainStep,
    detection_datalist,
    plan_anchors,
    read_anchors,
    world_centres,
)
from voxpipe.transforms.boxes import WorldBoxesToVoxeld, voxel_boxes_to_world, weighted_box_clustering
from voxpipe.transforms.io import write_volume

BUNDLE = REPO / "configs" / "lung_nodule_ct_retinanet"
CLASSIFIER = REPO / "configs" / "lung_nodule_ct_densenet"
FLIPPED = np.array([[-0.7, 0, 0, 120.0], [0, 0.8, 0, -80.0], [0, 0, -2.5, 40.0], [0, 0, 0, 1]])


@pytest.mark.parametrize(
    "affine", [FLIPPED, oblique_affine((0.8, 0.9, 2.0), degrees=25.0)], ids=["flipped", "oblique"]
)
def test_world_boxes_follow_the_resampled_grid_to_the_same_physical_point(tmp_path, affine):
    """A world box → voxel box on the grid MONAI resamples to (RAS, 1 x 1 x 1.5 mm) → its centre is the same
    physical point, by SimpleITK's index → physical mapping of the source image."""
    from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd

    from voxpipe.transforms.io import LoadVolumed

    path = write_volume(np.zeros((40, 36, 20), dtype=np.int16), affine, tmp_path / "scan.mha")
    image = sitk.ReadImage(str(path))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((20.3, 17.1, 9.6)))  # LPS mm
    box = np.r_[centre - 4.0, centre + 4.0][None].astype(np.float32)
    chain = Compose(
        [
            LoadVolumed(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(1.0, 1.0, 1.5)),
            WorldBoxesToVoxeld(keys="box", space="world_lps"),
        ]
    )
    item = chain({"image": str(path), "box": box})
    voxel = item["box"].numpy()
    assert voxel.shape == (1, 6)
    back = world_centres(voxel, item["image"].affine.numpy())[0]
    np.testing.assert_allclose(back, centre, atol=1e-3)
    if np.allclose(
        np.abs(affine[:3, :3]), np.diag(np.abs(np.diag(affine[:3, :3])))
    ):  # axis-aligned: extents exact
        np.testing.assert_allclose(voxel[0, 3:] - voxel[0, :3], [8.0, 8.0, 8.0 / 1.5], atol=1e-4)


def test_no_boxes_stay_an_empty_array():
    from monai.data import MetaTensor

    item = WorldBoxesToVoxeld(keys="box")(
        {"image": MetaTensor(torch.zeros(1, 4, 4, 4)), "box": np.zeros((0, 6))}
    )
    assert tuple(item["box"].shape) == (0, 6)


def test_weighted_box_clustering_merges_views_and_keeps_separate_objects():
    a = np.array([10, 10, 10, 20, 20, 20], dtype=float)
    b = np.array([50, 50, 50, 56, 56, 56], dtype=float)
    boxes = np.stack([a, a + 1, b])
    scores = np.array([0.9, 0.3, 0.8])
    merged, merged_scores = weighted_box_clustering(boxes, scores, iou_threshold=0.1, n_views=2)
    assert len(merged) == 2
    np.testing.assert_allclose(merged[0], (a * 0.9 + (a + 1) * 0.3) / 1.2)  # score-weighted mean
    np.testing.assert_allclose(merged_scores, [(0.9 + 0.3) / 2, 0.8 / 2])  # a view that missed it counts 0
    empty, empty_scores = weighted_box_clustering(np.zeros((0, 6)), np.zeros(0), n_views=8)
    assert empty.shape == (0, 6) and empty_scores.shape == (0,)


def test_anchor_plan_fits_the_box_sizes_and_says_how_well(tmp_path):
    pixdim = (1.0, 1.0, 2.0)
    boxes = [
        np.array([[0, 0, 0, 8, 8, 16]], dtype=float),
        np.array([[0, 0, 0, 16, 16, 32]], dtype=float),
        np.zeros((0, 6)),
    ]
    shapes = plan_anchors(
        datalist=[{"box": b} for b in boxes], pixdim=pixdim, n_shapes=1, output_dir=tmp_path
    )
    written = json.loads((tmp_path / "models" / "anchors.json").read_text())
    assert written["base_anchor_shapes"] == shapes
    assert (
        written["mean_best_iou"] == 1.0
    )  # 8 x 8 x 8 voxels at scale 1 and 2 (or 4 x 4 x 4 at 2 and 4) fit both exactly
    assert written["boxes"] == 2 and written["boxes_with_best_iou_below_0.3"] == 0
    assert read_anchors(checkpoint=tmp_path / "models" / "model.pt") == shapes
    with pytest.raises(InputError, match="at least one annotated nodule"):
        plan_anchors(datalist=[{"box": np.zeros((0, 6))}], pixdim=pixdim)
    with pytest.raises(InputError, match="anchors.json"):
        read_anchors(checkpoint=tmp_path / "elsewhere" / "model.pt")


def test_datalist_keeps_scans_without_nodules_and_names_bad_rows(tmp_path):
    (tmp_path / "images").mkdir()
    for uid in ("1.2.3", "1.2.4"):
        write_volume(np.zeros((8, 8, 8), dtype=np.int16), FLIPPED, tmp_path / "images" / f"{uid}.mha")
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1.0,2.0,3.0,6.0\n"
    )
    entries = {e["seriesuid"]: e for e in detection_datalist(tmp_path, part="all")}
    np.testing.assert_allclose(entries["1.2.3"]["box"], [[-2.0, -1.0, 0.0, 4.0, 5.0, 6.0]])
    assert entries["1.2.4"]["box"].shape == (0, 6) and entries["1.2.4"]["label"].shape == (0,)
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1.0,x,3.0,6.0\n"
    )
    with pytest.raises(InputError, match=r"annotations.csv.*line 2"):
        detection_datalist(tmp_path, part="all")


def _tiny_detector() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    network = build_retinanet(block_inplanes=(8, 8, 16, 16), fpn_channels=16)
    return network, build_detector(
        network=network, base_anchor_shapes=[[4, 4, 2], [6, 6, 3], [8, 8, 4]], roi_size=(32, 32, 16)
    )


class _Engine:
    def __init__(self, network):
        self.optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
        self.state = type("State", (), {"device": torch.device("cpu")})()
        self.scaler = None


def test_patches_without_nodules_train_and_update_the_weights():
    network, detector = _tiny_detector()
    step = DetectionTrainStep(detector)
    engine = _Engine(network)
    before = [p.detach().clone() for p in network.parameters()]
    batch = [
        {
            "image": torch.rand(1, 32, 32, 16),
            "box": torch.zeros(0, 6),
            "label": torch.zeros(0, dtype=torch.long),
        },
        {
            "image": torch.rand(1, 32, 32, 16),
            "box": torch.tensor([[8.0, 8, 4, 16, 16, 8]]),
            "label": torch.zeros(1, dtype=torch.long),
        },
    ]
    out = step(engine, batch)
    assert np.isfinite(float(out["loss"])) and float(out["classification"]) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    only_empty = step(
        engine, [batch[0]]
    )  # a batch of background patches only: classification loss, no box loss
    assert np.isfinite(float(only_empty["loss"])) and float(only_empty["box_regression"]) == 0.0


def test_nan_logits_become_a_nan_loss_for_the_guard():
    from voxpipe.pipelines.training.handlers import NanGuard, TrainingDiverged

    network, detector = _tiny_detector()
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    out = DetectionTrainStep(detector)(
        _Engine(network),
        [
            {
                "image": torch.rand(1, 32, 32, 16),
                "box": torch.zeros(0, 6),
                "label": torch.zeros(0, dtype=torch.long),
            }
        ],
    )
    assert np.isnan(float(out["loss"]))
    engine = type("E", (), {"state": type("S", (), {"output": out, "epoch": 1, "iteration": 1})()})()
    with pytest.raises(TrainingDiverged, match="expected a finite value"):
        NanGuard()(engine)


def test_cpm_metric_scores_by_the_luna16_rule():
    from voxpipe.metrics.detection import Finding

    metric = DetectionCPM()
    metric.reset()
    metric.update(
        {
            "candidates": [Finding("a", 0, 0, 0, 0.9), Finding("a", 50, 0, 0, 0.8)],
            "nodules": [Finding("a", 1, 0, 0, 6.0)],
            "scans": ["a"],
        }
    )
    metric.update({"candidates": [], "nodules": [], "scans": ["b"]})
    assert metric.compute() == pytest.approx(
        1.0
    )  # the hit outranks the false positive: sensitivity 1 at every rate


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voxpipe.cli", *args], capture_output=True, text=True, cwd=REPO
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 tiny chest CTs (one without nodules), a 2-epoch detector trained with `voxpipe train`, an untrained
    classifier bundle copy with weights: what the end-to-end tests share."""
    root = tmp_path_factory.mktemp("detection")
    data = root / "data"
    done = _cli("synth", "nodules-ct", "-o", str(data), "--n-train", "6", "--size", "tiny")
    assert done.returncode == 0, done.stderr
    run = root / "run"
    common = [
        "--set",
        f"dataset_dir={data}",
        "--set",
        f"output_dir={run}",
        "--set",
        "val_interval=1",
        "--set",
        "progress=false",
        "--set",
        "val_fraction=0.34",
        "--set",
        "network_def#block_inplanes=[8,16,16,32]",
        "--set",
        "network_def#fpn_channels=32",
    ]
    done = _cli("train", str(BUNDLE), *common, "--set", "max_epochs=1")
    assert done.returncode == 0, done.stderr
    done = _cli("train", str(BUNDLE), *common, "--set", "max_epochs=2", "--resume")  # continues at epoch 2
    assert done.returncode == 0, done.stderr
    classifier = root / "classifier"
    import shutil

    shutil.copytree(CLASSIFIER, classifier)
    from voxpipe.networks import build_network

    torch.manual_seed(0)
    (classifier / "models").mkdir()
    torch.save(
        build_network("densenet121", in_channels=1, out_channels=2).state_dict(),
        classifier / "models" / "model.pt",
    )
    return {"root": root, "data": data, "run": run, "classifier": classifier}


def _detect(trained, inputs, out, **options):
    from voxpipe.pipelines.inference.detect import detect_with_bundle

    overrides = {
        "network_def#block_inplanes": [8, 16, 16, 32],
        "network_def#fpn_channels": 32,
        **options.pop("overrides", {}),
    }
    return detect_with_bundle(
        BUNDLE,
        inputs,
        output_dir=out,
        weights=trained["run"] / "models" / "model.pt",
        overrides=overrides,
        **options,
    )


@pytest.mark.slow
def test_synth_train_detect_classify_evaluate_end_to_end(trained):
    run, data = trained["run"], trained["data"]
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in metrics] == [1, 2] and all(r["val_cpm"] for r in metrics)
    assert (run / "models" / "anchors.json").is_file() and (run / "models" / "model.pt").is_file()
    out = trained["root"] / "out"
    done = _cli(
        "detect",
        str(BUNDLE),
        str(data / "images"),
        "-o",
        str(out),
        "--weights",
        str(run / "models" / "model.pt"),
        "--set",
        "network_def#block_inplanes=[8,16,16,32]",
        "--set",
        "network_def#fpn_channels=32",
        "--classify",
        str(trained["classifier"]),
        "--classify-top",
        "3",
        "--safe",
    )
    assert done.returncode == 0, done.stderr
    assert "malig." in done.stdout and "world mm, LPS" in done.stdout
    uids = [line.strip() for line in (data / "seriesuids.csv").read_text().splitlines() if line.strip()]
    for uid in uids:  # every scan has its table, nodule-free scans too
        document = json.loads((out / f"{uid}.json").read_text())
        assert document["space"] == "world_lps" and document["mode"] == "cccwhd"
        classified = [box["malignancy"] for box in document["boxes"] if "malignancy" in box]
        assert len(classified) == min(3, len(document["boxes"])) and all(0.0 <= p <= 1.0 for p in classified)
        assert all(box["side"] in ("left", "right") for box in document["boxes"])
    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert rows and set(rows[0]) == {"seriesuid", "coordX", "coordY", "coordZ", "probability"}
    scored = trained["root"] / "scored"
    done = _cli(
        "evaluate-detections",
        str(out / "candidates.csv"),
        str(data / "annotations.csv"),
        "--excluded",
        str(data / "annotations_excluded.csv"),
        "--seriesuids",
        str(data / "seriesuids.csv"),
        "-o",
        str(scored),
    )
    assert done.returncode == 0, done.stderr
    assert "CPM" in done.stdout and "95% CI" in done.stdout
    summary = json.loads((scored / "summary.json").read_text())
    assert summary["scans"] == len(uids) and 0.0 <= summary["cpm"] <= 1.0


@pytest.mark.slow
def test_detections_are_the_same_in_world_mm_whatever_the_storage_order(trained, tmp_path):
    """The same scan stored flipped and with its axes permuted (same physical space) gives the same candidates."""
    data = trained["data"]
    uid = (data / "seriesuids.csv").read_text().split()[0]
    image = sitk.ReadImage(str(data / "images" / f"{uid}.mha"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sitk.WriteImage(image, str(tmp_path / "a" / f"{uid}.mha"))
    sitk.WriteImage(sitk.Flip(image, [True, False, True]), str(tmp_path / "b" / f"{uid}.mha"))
    found = {}
    for name in ("a", "b"):
        _detect(trained, [tmp_path / name], tmp_path / f"out_{name}")
        found[name] = np.array(
            [
                [float(r[k]) for k in ("coordX", "coordY", "coordZ", "probability")]
                for r in csv.DictReader((tmp_path / f"out_{name}" / "candidates.csv").open())
            ]
        )
    top = found["a"][np.argsort(-found["a"][:, 3])][:5]
    for row in top:  # each strong candidate has its twin at the same world point
        distance = np.linalg.norm(found["b"][:, :3] - row[:3], axis=1)
        assert distance.min() < 1.0


@pytest.mark.slow
def test_dicom_seg_of_detections_reads_back_on_the_series_grid(trained, tmp_path):
    from voxpipe.phantoms.chest import chest_case
    from voxpipe.phantoms.dicom import write_dicom_series
    from voxpipe.pipelines.inference.detect import nodule_label_map, read_case
    from voxpipe.transforms.dicom_seg import read_seg, seg_to_label_map
    from voxpipe.transforms.io import read_geometry

    case = chest_case(3, size="tiny")
    series = tmp_path / "series"
    write_dicom_series(case.image, case.affine, series)
    out = tmp_path / "out"
    _detect(
        trained,
        [series],
        out,
        dicom_seg=True,
        overrides={"seg_score_threshold": 0.0, "detections_per_image": 3},
    )
    rows = read_case(out / "series.json")
    assert len(rows) == 3
    shape, affine = read_geometry(series)
    expected = nodule_label_map(rows, shape, affine)
    seg = read_seg(out / "series_nodules.dcm")
    assert set(seg.labels) == {1, 2, 3}
    read_back = seg_to_label_map(seg, shape, affine)
    np.testing.assert_array_equal(read_back > 0, expected > 0)
    for row, value in zip(
        rows, range(1, 4), strict=True
    ):  # each sphere is centred on its detection's world centre
        voxels = np.argwhere(expected == value)
        assert len(voxels) > 20  # every detection's sphere is drawn (else the centre check below is void)
        middle = voxels.mean(0) + 0.5
        centre = voxel_boxes_to_world(np.r_[middle, middle][None], affine)[0, :3]
        assert np.linalg.norm(centre - row["centre"]) < 2.0
    with pytest.raises(InputError, match="expected DICOM series folders"):
        _detect(trained, [trained["data"] / "images"], tmp_path / "x", dicom_seg=True)


@pytest.mark.slow
def test_classifier_patches_are_centred_on_the_world_point(tmp_path):
    """A bright voxel at a known LPS point lands at the centre of the classifier's patch (flipped storage, near the edge)."""
    from voxpipe.pipelines.inference.classify import NoduleClassifier

    bundle = tmp_path / "classifier"
    import shutil

    shutil.copytree(CLASSIFIER, bundle)
    (bundle / "models").mkdir()
    from voxpipe.networks import build_network

    torch.save(
        build_network("densenet121", in_channels=1, out_channels=2).state_dict(),
        bundle / "models" / "model.pt",
    )
    affine = np.array(
        [[-1.5, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, -1.5, 10.0], [0, 0, 0, 1]]
    )  # already at 1.5 mm
    hu = np.full((30, 30, 30), -1000, dtype=np.int16)
    hu[3, 15, 20] = 400
    path = write_volume(hu, affine, tmp_path / "scan.mha")
    point = np.array(sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint((3, 15, 20)))
    classifier = NoduleClassifier(bundle)
    patch = classifier.patches(path, point[None])
    assert tuple(patch.shape) == (1, 1, 32, 32, 32)
    peak = np.unravel_index(int(torch.argmax(patch[0, 0])), (32, 32, 32))
    assert peak == (16, 16, 16)
    probability = classifier(path, point[None])
    assert probability.shape == (1,) and 0.0 <= probability[0] <= 1.0


@pytest.mark.slow
def test_detect_refuses_missing_weights_and_a_bundle_that_is_not_a_classifier(tmp_path):
    scan = write_volume(np.zeros((8, 8, 8), dtype=np.int16), FLIPPED, tmp_path / "scan.mha")
    done = _cli(
        "detect", str(BUNDLE), str(scan), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pt")
    )
    assert done.returncode == 2 and "none.pt" in done.stderr
    network, _ = _tiny_detector()
    torch.save(network.state_dict(), tmp_path / "w.pt")
    done = _cli(
        "detect",
        str(BUNDLE),
        str(scan),
        "-o",
        str(tmp_path / "o"),
        "--weights",
        str(tmp_path / "w.pt"),
        "--classify",
        str(REPO / "configs" / "liver_ct_segresnet"),
    )
    assert done.returncode == 2 and "liver_ct_segresnet" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_broken_scan_fails_alone_and_the_others_are_written(trained, tmp_path):
    from voxpipe.pipelines.inference.cases import InferenceFailed

    uid = (trained["data"] / "seriesuids.csv").read_text().split()[0]
    good = trained["data"] / "images" / f"{uid}.mha"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "0_truncated.mha").write_bytes(good.read_bytes()[:3000])  # first: the scan after it still runs
    with pytest.raises(InferenceFailed, match=r"1 of 2 scans failed \(.*\n  0_truncated: .*0_truncated.mha"):
        _detect(trained, [folder], tmp_path / "out")
    # one detector built and loaded for the run; the failing scan did not cost a rebuild
    engine = json.loads((tmp_path / "out" / "detections.json").read_text())["engine"]
    assert (engine["builds"], engine["weight_loads"], engine["cases"]) == (1, 1, 1)
    assert (tmp_path / "out" / f"{uid}.json").is_file() and not (
        tmp_path / "out" / "0_truncated.json"
    ).exists()
    rows = list(csv.DictReader((tmp_path / "out" / "candidates.csv").open()))
    assert rows and {r["seriesuid"] for r in rows} == {uid}


@pytest.mark.parametrize(
    "text",
    [
        '{"base_anchor_shapes": [[4, 4], [8, 8, 8]]}',
        '{"base_anchor_shapes": "big"}',
        '{"shapes": []}',
        "{nope",
    ],
)
def test_promise_a_broken_anchors_file_is_named_not_the_config(trained, tmp_path, text):
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained["run"] / "models" / "model.pt", models / "model.pt")
    (models / "anchors.json").write_text(text)
    uid = (trained["data"] / "seriesuids.csv").read_text().split()[0]
    with pytest.raises(InputError) as error:
        from voxpipe.pipelines.inference.detect import detect_with_bundle

        detect_with_bundle(
            BUNDLE,
            [trained["data"] / "images" / f"{uid}.mha"],
            output_dir=tmp_path / "out",
            weights=models / "model.pt",
            overrides={"network_def#block_inplanes": [8, 16, 16, 32], "network_def#fpn_channels": 32},
        )
    assert str(error.value).startswith(repr(str(models / "anchors.json"))), str(error.value)
    assert "inference.yaml" not in str(error.value).splitlines()[0]


def test_datalist_reads_box_files_in_any_space(tmp_path):
    """Box files in voxel, world RAS and world LPS give the same world LPS boxes as their LUNA16 rows would."""
    from voxpipe.transforms.boxes import world_boxes_to_voxel, write_boxes_json

    (tmp_path / "images").mkdir()
    lps = np.array([[10.0, -20.0, 5.0, 16.0, -12.0, 11.0]])
    for uid in ("a", "b", "c", "none"):
        write_volume(np.zeros((60, 60, 20), dtype=np.int16), FLIPPED, tmp_path / "images" / f"{uid}.mha")
    write_boxes_json(tmp_path / "boxes" / "a.json", lps, space="world_lps", mode="xyzxyz")
    ras = np.array([[-16.0, 12.0, 5.0, -10.0, 20.0, 11.0]])
    write_boxes_json(tmp_path / "boxes" / "b.json", ras, space="world_ras", mode="cccwhd")
    voxel = world_boxes_to_voxel(lps, FLIPPED, space="world_lps")
    write_boxes_json(tmp_path / "boxes" / "c.json", voxel, space="voxel", mode="xyzwhd")
    entries = {e["seriesuid"]: e for e in detection_datalist(tmp_path, part="all")}
    for uid in ("a", "b", "c"):
        np.testing.assert_allclose(entries[uid]["box"], lps, atol=1e-3)
        np.testing.assert_allclose(entries[uid]["centres"], [[13.0, -16.0, 8.0]], atol=1e-3)
    assert entries["none"]["box"].shape == (0, 6)


@pytest.mark.slow
def test_monai_runner_trains_and_detects_with_the_bundle(trained, tmp_path):
    """`python -m monai.bundle run` (MONAI's own CLI) runs the train config, then the inference config on its weights."""
    import os

    small = ["--network_def#block_inplanes", "[8,16,16,32]", "--network_def#fpn_channels", "32"]
    common = [
        "--meta_file",
        str(BUNDLE / "configs" / "metadata.json"),
        "--bundle_root",
        str(BUNDLE),
        "--dataset_dir",
        str(trained["data"]),
        *small,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    train = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLE / "configs" / "train.yaml"),
        *common,
        "--output_dir",
        str(tmp_path / "run"),
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--progress",
        "False",
    ]
    done = subprocess.run(train, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = tmp_path / "run" / "models" / "model.pt"
    assert weights.is_file() and (tmp_path / "run" / "models" / "anchors.json").is_file()
    infer = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(BUNDLE / "configs" / "inference.yaml"),
        *common,
        "--checkpoint",
        str(weights),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(infer, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    uids = (trained["data"] / "seriesuids.csv").read_text().split()
    assert all((tmp_path / "out" / f"{uid}.json").is_file() for uid in uids)
    assert {r["seriesuid"] for r in csv.DictReader((tmp_path / "out" / "candidates.csv").open())} <= set(uids)
