"""voxpipe's copies of nnU-Net's preprocessing and window rules against nnunetv2 2.8.1's own functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import require

from voxpipe.errors import InputError
from voxpipe.transforms.nnunet import SCHEMES, gaussian_weights, normalise_channel, window_starts


def _oracle(module: str):
    require("acvl_utils")
    return require(module)


@pytest.mark.parametrize("seed", range(60))
def test_window_starts_equal_nnunets(seed):
    oracle = _oracle("nnunetv2.inference.sliding_window_prediction")
    rng = np.random.default_rng(seed)
    dims = 2 if seed % 5 == 0 else 3
    tile = [int(v) for v in rng.integers(1, 40, size=dims)]
    image = [t + int(rng.integers(0, 90)) for t in tile]
    step = float(rng.choice([0.5, 0.8, 1.0, 0.25, 0.33, float(rng.uniform(0.05, 1.0))]))
    assert window_starts(image, tile, step) == oracle.compute_steps_for_sliding_window(
        tuple(image), tuple(tile), step
    )


@pytest.mark.parametrize(
    "tile", [(8, 8, 8), (128, 128, 128), (96, 160, 160), (1, 64, 64), (5, 7, 3), (512, 512), (40, 224, 192)]
)
def test_gaussian_weights_equal_nnunets_float16_map(tile):
    oracle = _oracle("nnunetv2.inference.sliding_window_prediction")
    expected = oracle.compute_gaussian(
        tile, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu")
    )
    assert expected.dtype == torch.float16
    assert torch.equal(gaussian_weights(tile), expected.float())


def _nnunet_normalise(scheme, image, properties, nonzero, use_mask):
    schemes = _oracle("nnunetv2.preprocessing.normalization.default_normalization_schemes")
    normaliser = getattr(schemes, scheme)(use_mask_for_norm=use_mask, intensityproperties=properties)
    seg = np.where(nonzero, 0, -1).astype(np.int8) if nonzero is not None else None
    return normaliser.run(image.copy(), seg)


@pytest.mark.parametrize("seed", range(40))
def test_every_normalisation_scheme_equals_nnunets(seed):
    rng = np.random.default_rng(seed)
    scheme = SCHEMES[seed % len(SCHEMES)]
    shape = tuple(int(v) for v in rng.integers(3, 20, size=3))
    if scheme == "RGBTo01Normalization":
        image = rng.integers(0, 256, size=shape).astype(np.float32)
    elif seed % 3 == 0:
        image = rng.integers(-1024, 2000, size=shape).astype(np.int16)  # CT in HU, integer storage
    else:
        image = (rng.normal(size=shape) * rng.uniform(1, 500) + rng.uniform(-100, 100)).astype(np.float32)
    if seed % 7 == 0:
        image = np.full(shape, 5, dtype=np.float32)  # constant: std 0, nnU-Net's eps
    properties = {
        "mean": float(rng.uniform(-50, 150)),
        "std": float(rng.uniform(10, 300)),
        "percentile_00_5": float(rng.uniform(-1000, -500)),
        "percentile_99_5": float(rng.uniform(200, 1500)),
        "median": 0.0,
        "min": -1024.0,
        "max": 3000.0,
    }
    nonzero = rng.random(shape) < 0.7 if seed % 2 else None
    use_mask = nonzero is not None
    expected = _nnunet_normalise(scheme, image.astype(np.float32), properties, nonzero, use_mask)
    found = normalise_channel(image, scheme, properties=properties, nonzero=nonzero, use_mask=use_mask)
    assert found.dtype == np.float32
    np.testing.assert_array_equal(found, expected)


def test_unknown_schemes_and_missing_ct_properties_are_named():
    with pytest.raises(InputError, match="p.json: normalization_schemes: .*'MyNorm'"):
        normalise_channel(np.zeros((2, 2, 2)), "MyNorm", source="p.json")
    with pytest.raises(InputError, match="CTNormalization needs"):
        normalise_channel(np.zeros((2, 2, 2)), "CTNormalization", properties={"mean": 1})
    with pytest.raises(InputError, match="values 0-255"):
        normalise_channel(np.full((2, 2, 2), 300.0), "RGBTo01Normalization")
    with pytest.raises(InputError, match="smaller than the window"):
        window_starts([10, 10], [12, 8], 0.5)


def test_hole_filling_and_the_nonzero_box_equal_scipys_and_nnunets():
    from scipy import ndimage

    from voxpipe.pipelines.inference.nnunet.preprocess import fill_holes
    from voxpipe.pipelines.inference.nnunet.preprocess import nonzero_box as _nonzero_box

    rng = np.random.default_rng(7)
    for trial in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 14, size=int(rng.integers(2, 4))))
        mask = rng.random(shape) < rng.uniform(0.2, 0.9)
        if trial % 2:
            mask = ndimage.binary_closing(mask)  # larger enclosed holes
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    many = np.ones((100, 100, 100), bool)  # 117649 one-voxel holes: more than a uint16 label map holds
    many[1:-1:2, 1:-1:2, 1:-1:2] = False
    many[50, 50, 0] = False  # and a pocket open to a face
    np.testing.assert_array_equal(fill_holes(many), ndimage.binary_fill_holes(many))
    image = np.zeros((1, 9, 8, 7), np.float32)
    image[0, 2:5, 3, 1:6] = 5
    image[0, 3, 3, 3] = 0  # a hole inside: still in the box
    _, box = _nonzero_box(image)
    assert box == [[2, 5], [3, 4], [1, 6]]
    assert _nonzero_box(np.zeros((1, 3, 3, 3), np.float32))[1] == [[0, 0]] * 3
