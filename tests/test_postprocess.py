"""Post-processing labels components slab by slab; the result must equal the whole-array labelling's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from voxpipe.transforms import postprocess
from voxpipe.transforms.postprocess import PostProcessd, SlabComponents, postprocess_labels

FULL = ndimage.generate_binary_structure(3, 3)


def reference(label, *, voxel_mm3=1.0, largest=(), inside=None, min_size_mm3=None):
    """The rules on the whole array with scipy alone (the straightforward implementation)."""
    out = label.copy()
    for group in largest:
        components, count = ndimage.label(np.isin(out, group), structure=FULL)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != np.argmax(sizes) + 1)] = 0
    for value, hosts in (inside or {}).items():
        components, count = ndimage.label(out == value, structure=FULL)
        near = ndimage.binary_dilation(np.isin(out, hosts), structure=FULL)
        touching = np.unique(components[near & (components > 0)])
        out[np.isin(components, np.setdiff1d(np.arange(1, count + 1), touching))] = 0
    for value, limit in (min_size_mm3 or {}).items():
        components, count = ndimage.label(out == value, structure=FULL)
        sizes = np.bincount(components.ravel())[1:] * voxel_mm3
        out[np.isin(components, np.flatnonzero(sizes < limit) + 1)] = 0
    return out


def random_label(rng, shape, density):
    label = np.zeros(shape, np.uint8)
    noise = rng.random(shape)
    label[noise < density] = 1
    label[noise < density / 3] = 2
    if rng.random() < 0.5:  # blobs as well as salt: components that span slabs
        label = ndimage.grey_dilation(label, size=(2, 2, 2)) * (rng.random(shape) < 0.9)
    return label.astype(np.uint8)


@pytest.mark.parametrize("seed", range(60))
def test_slab_wise_components_equal_the_whole_array_labelling(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(2, 14, size=3))
    label = random_label(rng, shape, float(rng.uniform(0.05, 0.6)))
    monkeypatch.setattr(postprocess, "SLAB", int(rng.integers(1, 5)))  # many slab faces
    monkeypatch.setattr(
        postprocess, "WHOLE_FIRST", seed % 4 == 3
    )  # mostly the slab path, sometimes the whole one
    rules = {
        "largest": [[1, 2]] if seed % 3 else [[1], [2]],
        "inside": {2: [1]} if seed % 2 else None,
        "min_size_mm3": {2: float(rng.integers(1, 6)), 1: 2.0} if seed % 4 else None,
        "voxel_mm3": 0.5 if seed % 5 == 0 else 1.0,
    }
    expected = reference(label, **rules)
    assert np.array_equal(postprocess_labels(label, **rules), expected)
    in_place = label.copy()
    postprocess_labels(in_place, in_place=True, **rules)
    assert np.array_equal(in_place, expected)


@pytest.mark.parametrize("seed", range(40))
def test_components_sizes_and_membership_equal_scipys(seed):
    rng = np.random.default_rng(1000 + seed)
    shape = tuple(int(n) for n in rng.integers(1, 12, size=3))
    mask = random_label(rng, shape, float(rng.uniform(0.02, 0.7))) > 0
    scipy_labels, count = ndimage.label(mask, structure=FULL)
    components = SlabComponents(mask.astype(np.uint8), [1], slab=int(rng.integers(1, 4)))
    assert components.count == count
    ours = np.zeros(shape, np.int64)
    for start, stop, numbers in components.slabs():
        ours[..., start:stop] = numbers
    # the same partition: a one-to-one map between the two numberings
    pairs = np.unique(np.stack([scipy_labels[mask], ours[mask]], axis=1), axis=0)
    assert len(pairs) == count and len(np.unique(pairs[:, 1])) == count
    assert sorted(components.sizes.tolist()) == sorted(np.bincount(scipy_labels.ravel())[1:].tolist())


def test_a_tie_keeps_the_component_scipy_numbers_first():
    label = np.zeros((6, 4, 9), np.uint8)
    label[4, 1, 1:3] = 1  # two components of two voxels; this one's first voxel comes later in C order
    label[1, 2, 6:8] = 1  # ... than this one's (x = 1 < 4), though it lies in a later slab
    for slab in (1, 2, 3, 9):
        kept = postprocess_labels(label, largest=[[1]]) if slab == 9 else None
        components = SlabComponents(label, [1], slab=slab)
        assert components.count == 2
        numbers = np.zeros(label.shape, np.int64)
        for start, stop, part in components.slabs():
            numbers[..., start:stop] = part
        assert numbers[1, 2, 6] == components.largest()
        if kept is not None:
            assert kept[1, 2, 6] == 1 and kept[4, 1, 1] == 0


def test_the_transform_changes_its_tensor_in_place_and_copies_arrays():
    label = np.zeros((1, 5, 5, 5), np.uint8)
    label[0, 0, 0, 0] = 1
    label[0, 2:5, 2:5, 2:5] = 1
    tensor = torch.as_tensor(label.copy())
    out = PostProcessd("pred", largest=[[1]])({"pred": tensor})["pred"]
    assert out[0, 0, 0, 0] == 0 and tensor[0, 0, 0, 0] == 0  # the chain's own array, no second map
    array = label.copy()
    PostProcessd("pred", largest=[[1]])({"pred": array})
    assert array[0, 0, 0, 0] == 1  # a caller's numpy array is left alone


def test_more_components_than_uint16_holds_take_the_slab_path_with_the_same_result(monkeypatch):
    label = np.zeros((100, 100, 60), np.uint8)
    label[::2, ::2, ::2] = 1  # 75 000 isolated voxels: more components than a uint16 map can number
    label[10:30, 10:30, 10:30] = 1
    rules = {"largest": [[1]]}
    calls = []
    original = postprocess.SlabComponents._labelled

    def counting(self):
        calls.append(self.slab)
        yield from original(self)

    monkeypatch.setattr(postprocess.SlabComponents, "_labelled", counting)
    found = postprocess_labels(label, **rules)
    assert calls and calls[0] == postprocess.SLAB  # the whole-box uint16 attempt overflowed
    assert np.array_equal(found, reference(label, **rules))


def test_a_box_larger_than_the_whole_box_limit_takes_the_slab_path(monkeypatch):
    rng = np.random.default_rng(7)
    label = random_label(rng, (30, 30, 40), 0.3)
    seen = []
    original = postprocess.SlabComponents._labelled

    def counting(self):
        seen.append(self.slab)
        yield from original(self)

    monkeypatch.setattr(postprocess.SlabComponents, "_labelled", counting)
    monkeypatch.setattr(postprocess, "WHOLE_MAX_VOXELS", 1000)
    assert np.array_equal(postprocess_labels(label, largest=[[1, 2]]), reference(label, largest=[[1, 2]]))
    assert seen and seen[0] == postprocess.SLAB


@pytest.mark.parametrize("seed", range(12))
def test_lesion_statistics_equal_the_whole_array_labelling(seed, monkeypatch):
    from voxpipe.pipelines.inference.stats import case_statistics, largest_diameter_mm

    rng = np.random.default_rng(500 + seed)
    label = random_label(
        rng, tuple(int(n) for n in rng.integers(4, 16, size=3)), float(rng.uniform(0.05, 0.5))
    )
    monkeypatch.setattr(postprocess, "SLAB", int(rng.integers(1, 4)))
    monkeypatch.setattr(postprocess, "WHOLE_FIRST", seed % 2 == 0)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    found = case_statistics(label, affine, names={1: "liver", 2: "tumour"}, lesion_labels=[2])["tumour"]
    components, count = ndimage.label(label == 2, structure=FULL)
    assert found["lesion_count"] == count
    if count:
        sizes = np.bincount(components.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        assert found["largest_lesion_ml"] == pytest.approx(sizes[biggest - 1] * 0.8 * 0.9 * 2.5 / 1000)
        assert found["largest_lesion_diameter_mm"] == pytest.approx(
            largest_diameter_mm(components == biggest, affine)
        )
