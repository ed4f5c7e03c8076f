"""Metric functions equal the reference implementations: surface-distance, medpy, scikit-learn.

The references are in the dev extra; each comparison skips when its package is missing. Masks are
random anisotropic blobs, plus empty, one-voxel and edge-touching cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import require

from voxpipe.metrics import surface
from voxpipe.metrics.classification import classification_summary, confusion_matrix, roc_auc, roc_auc_ovr
from voxpipe.metrics.conventions import apply_convention
from voxpipe.metrics.lesions import detect_lesions
from voxpipe.metrics.overlap import (
    confusion,
    dice,
    iou_from,
    precision_from,
    sensitivity_from,
    specificity_from,
    volume_ml,
)

SPACINGS = [(1.0, 1.0, 1.0), (0.8, 0.7, 2.5), (3.0, 0.5, 1.2)]


def blob(shape, rng, *, count=2):
    """Union of random ellipsoids, smoothed by nothing: jagged enough to exercise every surfel code."""
    grid = np.indices(shape).astype(float)
    mask = np.zeros(shape, bool)
    for _ in range(count):
        centre = rng.uniform(0.25, 0.75, 3) * shape
        radius = rng.uniform(0.1, 0.3, 3) * shape + 1
        mask |= (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0) <= 1
    return mask ^ (rng.random(shape) < 0.02) & mask  # holes and speckle-free edges


def pairs():
    rng = np.random.default_rng(42)
    shape = (24, 30, 18)
    out = []
    for i in range(6):
        out.append((f"random{i}", blob(shape, rng), blob(shape, rng), SPACINGS[i % 3]))
    one = np.zeros(shape, bool)
    one[5, 6, 7] = True
    edge = np.zeros(shape, bool)
    edge[:4, :, :3] = True  # touches the volume border on three faces
    out.append(("one-voxel", one, blob(shape, rng), (0.8, 0.7, 2.5)))
    out.append(("edge", edge, blob(shape, rng), (1.0, 1.0, 2.0)))
    out.append(("one-vs-one", one, np.roll(one, 3, axis=2), (0.8, 0.7, 2.5)))
    # Fine voxels: the grid-ball search covers under 3 mm, so most distances come from the k-d tree.
    out.append(("fine-grid", blob(shape, rng), np.roll(blob(shape, rng), 5, axis=0), (0.3, 0.35, 0.4)))
    return out


PAIRS = pairs()


@pytest.fixture
def surface_distance(monkeypatch):
    module = require("surface_distance")
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)  # the package predates NumPy 2
    return module


@pytest.mark.parametrize("name,pred,ref,spacing", PAIRS, ids=[p[0] for p in PAIRS])
def test_surface_metrics_equal_deepmind_surface_distance(surface_distance, name, pred, ref, spacing):
    reference = surface_distance.compute_surface_distances(ref, pred, spacing)  # (gt, pred) order
    d = surface.surface_distances(pred, ref, spacing)
    assert np.allclose(np.sort(d.b_to_a), reference["distances_gt_to_pred"], atol=1e-9)
    assert np.allclose(np.sort(d.a_to_b), reference["distances_pred_to_gt"], atol=1e-9)
    assert math.isclose(d.a_weights.sum(), reference["surfel_areas_pred"].sum(), rel_tol=1e-12)
    hd = surface_distance.compute_robust_hausdorff(reference, 100)
    hd95 = surface_distance.compute_robust_hausdorff(reference, 95)
    gt_to_pred, pred_to_gt = surface_distance.compute_average_surface_distance(reference)
    assert surface.hausdorff(d) == pytest.approx(hd, abs=1e-6)
    assert surface.hausdorff(d, 95) == pytest.approx(hd95, abs=1e-6)
    assert surface.mean_surface_distance(d) == pytest.approx((gt_to_pred + pred_to_gt) / 2, abs=1e-6)
    areas_gt, areas_pred = reference["surfel_areas_gt"], reference["surfel_areas_pred"]
    symmetric = (
        np.sum(reference["distances_gt_to_pred"] * areas_gt)
        + np.sum(reference["distances_pred_to_gt"] * areas_pred)
    ) / (areas_gt.sum() + areas_pred.sum())
    assert surface.assd(d) == pytest.approx(symmetric, abs=1e-6)
    for tolerance in (0.5, 1.0, 2.0, 5.0):
        expected = surface_distance.compute_surface_dice_at_tolerance(reference, tolerance)
        assert surface.normalised_surface_dice(d, tolerance) == pytest.approx(expected, abs=1e-9)


def test_empty_masks_follow_surface_distance(surface_distance):
    empty = np.zeros((10, 10, 10), bool)
    full = empty.copy()
    full[3:6, 3:6, 3:6] = True
    reference = surface_distance.compute_surface_distances(full, empty, (1, 1, 1))
    d = surface.surface_distances(empty, full, (1, 1, 1))
    assert surface.hausdorff(d, 95) == surface_distance.compute_robust_hausdorff(reference, 95) == np.inf
    assert (
        surface.normalised_surface_dice(d, 1.0)
        == surface_distance.compute_surface_dice_at_tolerance(reference, 1.0)
        == 0.0
    )
    both = surface.surface_distances(empty, empty, (1, 1, 1))
    assert math.isnan(surface.hausdorff(both)) and math.isnan(surface.normalised_surface_dice(both, 1.0))


@pytest.mark.parametrize("name,pred,ref,spacing", PAIRS, ids=[p[0] for p in PAIRS])
def test_medpy_definitions_equal_medpy(name, pred, ref, spacing):
    binary = require("medpy.metric.binary")
    d = surface.surface_distances(pred, ref, spacing, definition="medpy")
    assert surface.hausdorff(d) == pytest.approx(binary.hd(pred, ref, voxelspacing=spacing), abs=1e-6)
    assert surface.hausdorff(d, 95) == pytest.approx(binary.hd95(pred, ref, voxelspacing=spacing), abs=1e-6)
    assert surface.assd(d) == pytest.approx(binary.assd(pred, ref, voxelspacing=spacing), abs=1e-6)


@pytest.mark.parametrize("name,pred,ref,spacing", PAIRS, ids=[p[0] for p in PAIRS])
def test_overlap_metrics_equal_medpy(name, pred, ref, spacing):
    binary = require("medpy.metric.binary")
    c = confusion(pred, ref)
    assert dice(pred, ref) == pytest.approx(binary.dc(pred, ref))
    assert iou_from(c) == pytest.approx(binary.jc(pred, ref))
    assert sensitivity_from(c) == pytest.approx(binary.recall(pred, ref))
    assert precision_from(c) == pytest.approx(binary.precision(pred, ref))
    assert specificity_from(c) == pytest.approx(binary.specificity(pred, ref))


def test_overlap_on_a_4x4x4_example():
    pred = np.zeros((4, 4, 4), bool)
    ref = np.zeros((4, 4, 4), bool)
    pred[:2] = True  # 32 voxels
    ref[1:3] = True  # 32 voxels, 16 shared
    c = confusion(pred, ref)
    assert (c.tp, c.fp, c.fn, c.tn) == (16, 16, 16, 16)
    assert dice(pred, ref) == 0.5 and iou_from(c) == pytest.approx(1 / 3)
    assert volume_ml(pred, (2.0, 2.0, 2.5)) == pytest.approx(32 * 10 / 1000)
    assert math.isnan(dice(np.zeros(3), np.zeros(3)))


def test_conventions_for_empty_masks():
    raw = {"dice": math.nan, "iou": math.nan, "nsd": math.nan, "hd95": math.nan, "sensitivity": math.nan}
    nnunet = apply_convention(
        raw, prediction_empty=True, reference_empty=True, convention="nnunet", worst_distance=300.0
    )
    flare = apply_convention(
        raw, prediction_empty=True, reference_empty=True, convention="flare", worst_distance=300.0
    )
    assert math.isnan(nnunet["dice"]) and math.isnan(nnunet["hd95"])
    assert flare["dice"] == flare["nsd"] == flare["sensitivity"] == 1.0 and flare["hd95"] == 0.0
    one = {"dice": 0.0, "nsd": 0.0, "hd95": math.inf}
    for convention in ("nnunet", "flare", "lits"):
        out = apply_convention(
            one, prediction_empty=False, reference_empty=True, convention=convention, worst_distance=300.0
        )
        assert out == {"dice": 0.0, "nsd": 0.0, "hd95": 300.0}
    with pytest.raises(ValueError, match="convention"):
        apply_convention(
            raw, prediction_empty=True, reference_empty=True, convention="brats", worst_distance=1.0
        )


def test_lesion_detection_counts_matches():
    ref = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:5, 2:5, 2:5] = True  # detected
    pred[2:5, 2:5, 3:6] = True
    ref[10:13, 10:13, 10:13] = True  # missed
    pred[15:18, 2:4, 2:4] = True  # false positive
    ref[16, 16, 16] = True  # one voxel, touched by a big prediction: IoU 1/8 ≥ 0.1 → detected
    pred[15:17, 15:17, 15:17] = True
    result = detect_lesions(pred, ref)
    assert (result.n_reference, result.n_predicted, result.tp, result.fp, result.fn) == (3, 3, 2, 1, 1)
    assert result.recall == pytest.approx(2 / 3) and result.precision == pytest.approx(2 / 3)
    strict = detect_lesions(pred, ref, threshold=0.5)
    assert strict.tp == 1


def test_classification_metrics_equal_scikit_learn():
    metrics = require("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    scores = np.round(y * 0.6 + rng.random(200), 1)  # rounded: many ties
    assert roc_auc(y, scores) == pytest.approx(metrics.roc_auc_score(y, scores), abs=1e-12)
    labels3 = rng.integers(0, 3, 300)
    probs = rng.dirichlet((1, 1, 1), 300) + np.eye(3)[labels3] * 0.3
    probs /= probs.sum(1, keepdims=True)
    assert roc_auc_ovr(labels3, probs) == pytest.approx(
        metrics.roc_auc_score(labels3, probs, multi_class="ovr"), abs=1e-12
    )
    predicted = probs.argmax(1)
    assert (confusion_matrix(labels3, predicted, 3) == metrics.confusion_matrix(labels3, predicted)).all()
    summary = classification_summary(labels3, predicted, 3)
    assert summary["accuracy"] == pytest.approx(metrics.accuracy_score(labels3, predicted))
    assert summary["f1_macro"] == pytest.approx(metrics.f1_score(labels3, predicted, average="macro"))
    binary = (scores > 0.8).astype(int)
    two = classification_summary(y, binary, 2)
    assert two["sensitivity"] == pytest.approx(metrics.recall_score(y, binary))
    assert two["specificity"] == pytest.approx(metrics.recall_score(1 - y, 1 - binary))
    assert two["f1"] == pytest.approx(metrics.f1_score(y, binary))
    assert math.isnan(roc_auc(np.ones(5), np.arange(5)))
