"""voxpipe.transforms.spline_rows against SciPy's own zoom, bit for bit, on generated cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxpipe.transforms import spline_rows
from voxpipe.transforms.nnunet import normalise_channel
from voxpipe.transforms.nnunet_resample import resize

CT = {"mean": 80.5, "std": 140.25, "percentile_00_5": -990.0, "percentile_99_5": 1500.0}


def _reference(image: np.ndarray, shape, order: int) -> np.ndarray:
    """skimage's resize as nnU-Net calls it: SciPy's zoom (grid mode, edges repeated), clipped."""
    zoom = [s / n for s, n in zip(shape, image.shape, strict=True)]
    wide = image if image.dtype in (np.float32, np.float64) else image.astype(np.float64)
    expected = ndimage.zoom(wide, zoom, output=np.float64, order=order, mode="nearest", grid_mode=True)
    np.clip(expected, wide.min(), wide.max(), out=expected)
    return expected


def _image(rng: np.random.Generator, trial: int) -> np.ndarray:
    shape = [int(n) for n in rng.integers(1, 15, size=3)]
    kind = trial % 6
    if kind == 0:
        return rng.normal(size=shape) * 1000
    if kind == 1:  # ties everywhere
        return rng.integers(-2, 3, size=shape).astype(np.float32)
    if kind == 2:
        return np.full(shape, -7.25)
    if kind == 3:  # a CT as read
        return rng.integers(-1024, 3071, size=shape).astype(np.int16)
    if kind == 4:  # huge and tiny magnitudes together
        return (rng.normal(size=shape) * 10.0 ** rng.integers(-30, 30, size=shape)).astype(np.float64)
    return rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_slabs_give_scipys_zoom_bit_for_bit(seed):
    """Orders 2 and 3; shrinking, growing and equal axes; slabs of 1-6 rows (one slab to one per row);
    float64 and float32 results (SciPy's values cast once)."""
    rng = np.random.default_rng(seed)
    for trial in range(40):
        image = _image(rng, trial)
        shape = [
            int(n) if trial % 7 == 0 else max(1, int(round(n * rng.uniform(0.3, 2.6)))) for n in image.shape
        ]
        order = 2 + trial % 2
        rows = int(rng.integers(1, 7))
        expected = _reference(image, shape, order)
        np.testing.assert_array_equal(spline_rows.zoom(image, shape, order, rows=rows), expected)
        found = spline_rows.zoom(image, shape, order, rows=rows, dtype=np.float32)
        np.testing.assert_array_equal(found, expected.astype(np.float32))


@pytest.mark.parametrize("scheme", ["CTNormalization", "NoNormalization"])
def test_a_transform_on_the_rows_equals_resizing_the_transformed_image(scheme):
    """nnU-Net normalises the whole CT, then resizes it: the same float32 values, then SciPy's."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        image = rng.integers(-1024, 3071, size=[int(n) for n in rng.integers(2, 16, size=3)]).astype(np.int16)
        shape = [max(1, int(round(n * rng.uniform(0.3, 2.6)))) for n in image.shape]

        def transform(values):
            return normalise_channel(values, scheme, properties=CT)

        expected = _reference(transform(image), shape, 3).astype(np.float32)
        found = spline_rows.zoom(
            image, shape, 3, rows=int(rng.integers(1, 5)), dtype=np.float32, transform=transform
        )
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(
            resize(image, shape, 3, dtype=np.float32, transform=transform), expected
        )


def test_only_a_slab_of_coefficient_rows_is_held():
    """The grid holds the slab being filtered and the rows the output rows above it still read,
    not the whole height (which is what SciPy holds: 124 rows here)."""
    image = np.random.default_rng(1).normal(size=(100, 20, 20))
    held: list[int] = []
    found = spline_rows.zoom(image, (53, 11, 30), 3, rows=8, held=held)
    np.testing.assert_array_equal(found, _reference(image, (53, 11, 30), 3))
    assert held and held[0] <= 8 + 8  # the slab and the rows below the next output row's reach
    held.clear()
    spline_rows.zoom(image, (190, 11, 30), 3, rows=8, held=held)  # growing: more output rows per slab
    assert held[0] <= 8 + 8


def test_the_probe_accepts_this_scipy():
    """The probe must pass on the platforms CI runs; else every image would silently go whole."""
    assert spline_rows.available(2) and spline_rows.available(3)
    assert not spline_rows.available(4)  # two poles: resized whole


def test_other_orders_and_planes_are_refused():
    with pytest.raises(ValueError, match="orders"):
        spline_rows.zoom(np.zeros((4, 4, 4)), (2, 2, 2), 4)
    with pytest.raises(ValueError, match="2D"):
        spline_rows.zoom(np.zeros((4, 4)), (2, 2), 3)


@pytest.mark.parametrize("grow", [1.0, 0.7])
def test_resample_with_transforms_equals_normalising_first(grow):
    """nnU-Net's preprocessing: the channel normalised whole, then resampled (or kept at equal shape);
    voxpipe's: normalised as the rows are read. The same float32 values, equal shapes included."""
    from voxpipe.transforms.nnunet_resample import resample

    rng = np.random.default_rng(5)
    data = rng.integers(-1024, 3071, size=(1, 37, 12, 10)).astype(np.int16)
    shape = [max(1, int(round(n * grow))) for n in data.shape[1:]]

    def transform(values):
        return normalise_channel(values, "CTNormalization", properties=CT)

    expected = resample(transform(data[0])[None], shape, [1.0] * 3, [1 / grow] * 3)
    found = resample(data, shape, [1.0] * 3, [1 / grow] * 3, transforms=[transform])
    assert found.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(found, expected)
