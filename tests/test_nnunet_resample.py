"""Slab-by-slab resampling and export against the same computation on the whole array.

The whole-array functions are checked against nnunetv2 itself by test_nnunet_predict.py; here the
slabs must equal them bit for bit on generated shapes, spacings and row splits (float16 logits, where
values on a rounding midpoint make any change in float64 arithmetic visible).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxpipe.transforms.nnunet_resample import RowResampler, labels_by_rows, resample


def _case(rng, *, anisotropic: bool, same_rows: bool = False):
    ins = [int(rng.integers(3, 22)) for _ in range(3)]
    outs = [max(1, int(round(i * rng.uniform(0.3, 3.0)))) for i in ins]
    if same_rows:
        outs[0] = ins[0]
    current = [float(rng.uniform(0.6, 2.5)) for _ in range(3)]
    if anisotropic:
        current[0] *= 4
    new = [c * i / o for c, i, o in zip(current, ins, outs, strict=True)]
    return ins, outs, current, new


@pytest.mark.parametrize("seed", range(6))
def test_rows_equal_the_whole_resampling_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for trial in range(30):
        ins, outs, current, new = _case(rng, anisotropic=trial % 3 == 0, same_rows=trial % 7 == 0)
        order_z = int(trial % 2)
        data = (rng.normal(size=(1, *ins)) * 4).astype(np.float16)
        whole = resample(data, outs, current, new, order=1, order_z=order_z)[0]
        resampler = RowResampler(ins, outs, current, new, order=1, order_z=order_z)
        if not resampler.by_rows:  # random spacings made Y or X the coarse axis: resampled whole
            assert resampler.axis not in (None, 0)
            continue
        resampler._scratch = np.full(ins, np.nan)  # a row read that was not handed over shows as NaN
        step = int(rng.integers(1, 5))
        for a in range(0, outs[0], step):
            b = min(outs[0], a + step)
            lo, hi = resampler.needs(a, b)
            rows = resampler.rows(data[0, lo:hi], lo, a, b)
            assert np.isfinite(rows).all()
            np.testing.assert_array_equal(rows, whole[a:b])
            checked += 1
    assert checked > 100


def test_third_order_or_another_coarse_axis_is_resampled_whole():
    assert not RowResampler([8, 9, 10], [16, 9, 10], [1, 1, 1], [0.5, 1, 1], order=3).by_rows
    # the coarse axis is Y: planes across it hold whole columns of Z
    assert not RowResampler([8, 4, 10], [16, 16, 10], [1, 5, 1], [0.5, 1.25, 1], order=1).by_rows
    assert RowResampler([4, 8, 10], [16, 16, 10], [5, 1, 1], [1.25, 0.5, 1], order=3, order_z=0).by_rows


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("regions", [False, True])
def test_labels_from_row_blocks_equal_argmax_of_the_whole(seed, regions):
    rng = np.random.default_rng(100 + seed)
    for trial in range(12):
        ins, outs, current, new = _case(rng, anisotropic=trial % 2 == 0)
        heads = int(rng.integers(2, 7))
        data = rng.normal(size=(heads, *ins)).astype(np.float16)
        data[:, :, : ins[1] // 3] = data[:1, :, : ins[1] // 3]  # ties: the first maximum wins
        whole = resample(data, outs, current, new, order=1, order_z=0)
        if regions:
            order = list(range(1, heads + 1))
            expected = np.zeros(outs, dtype=np.uint8)
            probabilities = torch.sigmoid(torch.from_numpy(whole).float()).numpy()
            for index, value in enumerate(order):
                expected[probabilities[index] > 0.5] = value
        else:
            order, expected = None, whole.argmax(0)
        cuts = sorted({0, ins[0], *rng.integers(1, ins[0], size=3).tolist()})
        blocks = [
            (a, torch.from_numpy(data[:, a:b].copy())) for a, b in zip(cuts[:-1], cuts[1:], strict=False)
        ]
        found = labels_by_rows(
            RowResampler(ins, outs, current, new, order=1, order_z=0),
            iter(blocks),
            heads=heads,
            regions=order,
            dtype=np.uint8,
            slab=int(rng.integers(1, 6)),
        )
        np.testing.assert_array_equal(found, expected)


def test_missing_rows_are_an_error_not_a_partial_map():
    resampler = RowResampler([10, 4, 4], [20, 4, 4], [1, 1, 1], [0.5, 1, 1])
    blocks = [(0, torch.zeros((2, 6, 4, 4), dtype=torch.float16))]
    with pytest.raises(RuntimeError, match="covered output rows up to"):
        labels_by_rows(resampler, blocks, heads=2, regions=None, dtype=np.uint8)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_a_float32_image_resizes_as_its_float64_copy_bit_for_bit(order):
    from scipy import ndimage

    from voxpipe.transforms.nnunet_resample import resize

    rng = np.random.default_rng(order)
    for _ in range(5):
        image = (rng.normal(size=[int(n) for n in rng.integers(4, 14, size=3)]) * 300).astype(np.float32)
        shape = [max(1, int(round(n * rng.uniform(0.4, 2.5)))) for n in image.shape]
        found = resize(image, shape, order)
        wide = image.astype(np.float64)
        zoom = [s / n for s, n in zip(shape, image.shape, strict=True)]
        expected = ndimage.zoom(wide, zoom, order=order, mode="nearest", grid_mode=True)
        if order:
            np.clip(expected, wide.min(), wide.max(), out=expected)
        assert found.dtype == np.float64
        np.testing.assert_array_equal(found, expected)


def _zoom_reference(image, shape, order):
    from scipy import ndimage

    zoom = [s / n for s, n in zip(shape, image.shape, strict=True)]
    expected = ndimage.zoom(image, zoom, output=np.float64, order=order, mode="nearest", grid_mode=True)
    if order:
        np.clip(expected, image.min(), image.max(), out=expected)
    return expected


@pytest.mark.parametrize("seed", range(4))
def test_splines_from_our_coefficients_equal_scipys_zoom_bit_for_bit(seed):
    """Orders 2-5 in 1-3 dimensions, shrinking, growing, equal sizes, single voxels and integer ties;
    float32 results equal SciPy's float64 values cast once."""
    from voxpipe.transforms.nnunet_resample import resize

    rng = np.random.default_rng(seed)
    for trial in range(40):
        ndim = int(rng.integers(1, 4))
        image = rng.normal(size=[int(n) for n in rng.integers(1, 13, size=ndim)]) * 300
        if trial % 3 == 0:
            image = np.round(image / 100)  # many equal values
        image = image.astype(np.float32 if trial % 2 else np.float64)
        shape = [
            int(n) if trial % 5 == 0 else max(1, int(round(n * rng.uniform(0.3, 2.5)))) for n in image.shape
        ]
        order = int(rng.integers(2, 6))
        expected = _zoom_reference(image, shape, order)
        np.testing.assert_array_equal(resize(image, shape, order), expected)
        np.testing.assert_array_equal(
            resize(image, shape, order, dtype=np.float32), expected.astype(np.float32)
        )
        fast = resize(image, shape, order, dtype=np.float32, coefficients=np.float32)
        np.testing.assert_allclose(fast, expected, rtol=0, atol=2e-6 * max(1.0, float(np.abs(image).max())))


def test_splines_need_less_memory_than_scipys_zoom():
    """SciPy's zoom pads a copy of the image and filters a float64 copy of that; ours pads into the one
    float64 array (float32 with ``coefficients=np.float32``): measured by tracemalloc, which NumPy reports to.
    Order 4 (two poles) is resized whole; orders 2 and 3 go by slabs (tests/test_spline_rows.py)."""
    import tracemalloc

    from voxpipe.transforms.nnunet_resample import resize

    image = np.random.default_rng(0).normal(size=(60, 60, 60)).astype(np.float32)
    padded = 84**3  # 12 voxels of edge on each side

    def peak(function):
        tracemalloc.start()
        function()
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    scipy_peak = peak(lambda: _zoom_reference(image, (30, 30, 30), 4))
    ours = peak(lambda: resize(image, (30, 30, 30), 4))
    halved = peak(lambda: resize(image, (30, 30, 30), 4, dtype=np.float32, coefficients=np.float32))
    assert scipy_peak - ours > 0.7 * padded * 4  # the padded float32 copy is gone (less line buffers)
    assert ours - halved > 0.7 * padded * 4  # float32 coefficients: half the float64 array


def test_bands_shift_in_place_as_a_copy_would():
    from voxpipe.pipelines.inference.predictor import shift_rows as _shift_rows

    rng = np.random.default_rng(3)
    for depth in (1, 2, 5, 8, 13):
        for n in range(1, depth + 1):
            band = torch.from_numpy(rng.normal(size=(3, depth, 4, 2)).astype(np.float16))
            expected = torch.zeros_like(band)
            expected[:, : depth - n] = band[:, n:].clone()
            _shift_rows(band, n)
            assert torch.equal(band, expected), (depth, n)
