"""ResampleArgmaxd gives MONAI's Invertd + AsDiscreted labels, slab by slab, for any storage orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    Orientationd,
    Spacingd,
)
from scipy import ndimage

from voxpipe.errors import InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.phantoms.dicom import oblique_affine
from voxpipe.transforms.invert import ResampleArgmaxd, resample_argmax
from voxpipe.transforms.io import LoadVolumed, write_volume


def _preprocessed(path, pixdim):
    chain = Compose(
        [
            LoadVolumed(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
        ]
    )
    return chain, chain({"image": str(path)})


@pytest.mark.parametrize("orientation", ["LPS", "LPI", "RAS", "oblique"])
def test_labels_equal_monais_invertd_then_argmax(tmp_path, orientation):
    phantom = liver_phantom(3, orientation=None if orientation == "oblique" else orientation, size="tiny")
    spacing = np.linalg.norm(phantom.affine[:3, :3], axis=0)
    affine = oblique_affine(spacing, degrees=15.0) if orientation == "oblique" else phantom.affine
    path = write_volume(phantom.image.astype(np.int16), affine, tmp_path / "case.nii.gz")
    chain, data = _preprocessed(path, [1.5, 1.5, 2.5])
    rng = np.random.default_rng(0)
    logits = (
        ndimage.gaussian_filter(rng.normal(size=(3, *data["image"].shape[1:])), (0, 2, 2, 1)).astype(
            np.float32
        )
        * 20
    )
    data["pred"] = MetaTensor(torch.from_numpy(logits), meta=data["image"].meta)
    data = Activationsd(keys="pred", softmax=True)(data)
    monai = AsDiscreted(keys="pred", argmax=True)(
        Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=False)(dict(data))
    )
    ours = ResampleArgmaxd(keys="pred", slab=5, probabilities_dir=tmp_path / "p")(dict(data))
    expected = monai["pred"][0].numpy().astype(np.uint8)
    assert ours["pred"].dtype == torch.uint8 and ours["pred"].shape == (1, *phantom.image.shape)
    assert np.allclose(np.asarray(ours["pred"].affine), affine, atol=1e-4)  # NIfTI stores float32
    assert (ours["pred"][0].numpy() != expected).mean() < 1e-4  # float summation order may flip exact ties
    saved = np.load(tmp_path / "p" / "case_probabilities.npz")
    assert saved["probabilities"].dtype == np.float16 and saved["probabilities"].shape == (
        3,
        *phantom.image.shape,
    )
    assert np.allclose(saved["probabilities"].astype(np.float32).sum(0), 1.0, atol=3e-3)
    assert np.allclose(saved["affine"], affine, atol=1e-4)
    assert (
        saved["probabilities"].argmax(0) == expected
    ).mean() > 0.999  # float16 rounding may break near-ties


def test_slab_size_does_not_change_the_result():
    probabilities = torch.softmax(torch.randn(4, 9, 8, 7), 0)
    network = np.diag([2.0, 2.0, 3.0, 1.0])
    source = np.diag([0.7, 0.9, 1.1, 1.0])
    source[:3, 3] = [0.4, -0.3, 0.2]
    one, _ = resample_argmax(
        probabilities, source_affine=source, network_affine=network, source_shape=(20, 15, 17), slab=1
    )
    many, kept = resample_argmax(
        probabilities,
        source_affine=source,
        network_affine=network,
        source_shape=(20, 15, 17),
        slab=64,
        keep_probabilities=True,
    )
    assert torch.equal(one, many) and kept is not None
    assert (
        kept.float().argmax(0).to(torch.uint8) == many
    ).float().mean() > 0.99  # float16 may break near-ties


@pytest.mark.parametrize("where", ["inside", "at the edge", "nowhere"])
def test_only_the_region_a_foreground_reaches_is_interpolated_and_the_labels_do_not_change(where):
    rng = np.random.default_rng(1)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(3, 30, 28, 20)).astype(np.float32)), 0)
    probabilities[0] += 3.0  # class 0 everywhere ...
    if where != "nowhere":  # ... but in one blob, which touches the grid's last slice "at the edge"
        zs = slice(8, 14) if where == "inside" else slice(15, 20)
        probabilities[1:, 10:18, 9:16, zs] += torch.from_numpy(
            rng.uniform(2.0, 4.0, size=(2, 8, 7, zs.stop - zs.start)).astype(np.float32)
        )
    network = np.diag([1.5, 1.5, 2.5, 1.0])
    source = oblique_affine(np.array([0.8, 0.7, 1.3]), degrees=20.0)
    source[:3, 3] = [1.0, -2.0, 0.5]
    restricted, _ = resample_argmax(
        probabilities, source_affine=source, network_affine=network, source_shape=(50, 52, 36)
    )
    everywhere, _ = resample_argmax(
        probabilities,
        source_affine=source,
        network_affine=network,
        source_shape=(50, 52, 36),
        keep_probabilities=True,
    )  # interpolates every source voxel
    assert torch.equal(restricted, everywhere)
    assert bool((everywhere > 0).any()) == (where != "nowhere")


def test_axis_aligned_grids_interpolate_separably_as_scipys_trilinear_with_border_values():
    rng = np.random.default_rng(2)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(3, 9, 8, 7)).astype(np.float32) * 3), 0)
    network = np.diag([2.0, 2.0, 3.0, 1.0])
    source = np.diag(
        [-0.7, 0.9, 1.1, 1.0]
    )  # x flipped (LPS-like storage), finer, reaching past the network grid
    source[:3, 3] = [14.0, -2.5, -1.0]
    labels, kept = resample_argmax(
        probabilities,
        source_affine=source,
        network_affine=network,
        source_shape=(25, 22, 24),
        keep_probabilities=True,
    )
    mapping = np.linalg.inv(network) @ source
    points = mapping[:3, :3] @ np.indices((25, 22, 24)).reshape(3, -1) + mapping[:3, 3:4]
    expected = np.stack(
        [
            ndimage.map_coordinates(c, points, order=1, mode="nearest").reshape(25, 22, 24)
            for c in probabilities.numpy()
        ]
    )
    assert np.allclose(kept.float().numpy(), expected, atol=2e-3)  # float16 storage
    assert (labels.numpy() == expected.argmax(0)).mean() > 0.999


def test_a_prediction_without_source_geometry_is_refused():
    with pytest.raises(InputError, match="original_affine, spatial_shape"):
        ResampleArgmaxd(keys="pred")(
            {"image": MetaTensor(torch.zeros(1, 4, 4, 4)), "pred": torch.zeros(2, 4, 4, 4)}
        )


@pytest.mark.parametrize("oblique", [False, True])
def test_softmax_on_the_way_equals_softmax_first_and_float16_logits_are_read_as_they_are(oblique):
    torch.manual_seed(3)
    logits = torch.randn(6, 10, 9, 8) * 4
    network = np.diag([2.0, 2.0, 3.0, 1.0])
    source = oblique_affine([0.9, 0.8, 1.2], degrees=10.0) if oblique else np.diag([0.7, -0.9, 1.1, 1.0])
    kwargs = {"source_affine": source, "network_affine": network, "source_shape": (20, 18, 21)}
    first, first_p = resample_argmax(torch.softmax(logits, 0), keep_probabilities=True, **kwargs)
    onway, onway_p = resample_argmax(logits, softmax=True, keep_probabilities=True, **kwargs)
    assert torch.equal(first, onway)
    assert torch.allclose(first_p.float(), onway_p.float(), atol=1e-3)
    half = logits.half()
    from_half, _ = resample_argmax(half, softmax=True, **kwargs)
    expected, _ = resample_argmax(half.float(), softmax=True, **kwargs)
    assert torch.equal(from_half, expected)
    many = torch.randn(40, 10, 9, 8)  # many classes: slabs shrink, the labels do not change
    assert torch.equal(
        resample_argmax(many, softmax=True, slab=16, **kwargs)[0],
        resample_argmax(torch.softmax(many, 0), slab=1, **kwargs)[0],
    )
