"""nnU-Net's resampling in torch (voxpipe.transforms.torch_resample, what a GPU runs) against SciPy's:
the plain zoom against ``scipy.ndimage.zoom`` itself, the anisotropic path against voxpipe's SciPy
version of nnU-Net's rule (itself checked against nnunetv2 by test_nnunet_predict.py), on generated
shapes (axes of 1 and 2 voxels, up and down), orders 0, 1, 3 and both ``order_z``. The torch code runs
here on the CPU: the same code a GPU runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from voxpipe.transforms.nnunet_resample import resample as scipy_resample
from voxpipe.transforms.torch_resample import resample, zoom


def _shapes(rng, count):
    for _ in range(count):
        ins = [int(v) for v in rng.integers(1, 20, size=3)]
        outs = [max(1, int(round(n * rng.uniform(0.3, 2.6)))) for n in ins]
        yield ins, outs


@pytest.mark.parametrize("order", [0, 1, 3])
def test_zoom_equals_scipys_zoom_as_skimage_calls_it(order):
    rng = np.random.default_rng(order)
    for ins, outs in _shapes(rng, 25):
        image = (rng.normal(size=ins) * 300).astype(np.float32)
        expected = ndimage.zoom(
            image.astype(np.float64),
            [o / n for o, n in zip(outs, ins, strict=True)],
            order=order,
            mode="nearest",
            grid_mode=True,
        )
        if order:
            np.clip(expected, image.min(), image.max(), out=expected)
        found = zoom(torch.from_numpy(image), outs, order).numpy()
        assert found.dtype == np.float64 and found.shape == expected.shape
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("seed", range(4))
def test_the_anisotropic_rule_equals_nnunets_to_1e_6(seed):
    rng = np.random.default_rng(40 + seed)
    for trial, (ins, outs) in enumerate(_shapes(rng, 12)):
        data = (rng.normal(size=(2, *ins)) * 5).astype(np.float32)
        coarse = int(rng.integers(0, 3))
        current = [1.0, 1.0, 1.0]
        current[coarse] = float(rng.choice([1.0, 3.5, 5.0]))  # beyond 3:1: the coarse axis on its own
        new = [1.0, 1.0, 1.0]
        options = {
            "order": int(rng.choice([1, 3])),
            "order_z": int(rng.choice([0, 1])),
            "force_separate_z": [None, True, False][trial % 3],
        }
        expected = scipy_resample(data, outs, current, new, dtype=np.float64, **options)
        found = resample(torch.from_numpy(data), outs, current, new, **options).numpy()
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6 * max(1.0, np.abs(expected).max()))


def test_nnunet_preprocessing_on_a_device_equals_scipys(tmp_path):
    """The preprocessing a GPU case takes (torch resampling there), here with device="cpu"."""
    from test_nnunet_predict import make_image, make_model

    from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder
    from voxpipe.pipelines.inference.nnunet.preprocess import preprocess
    from voxpipe.pipelines.inference.nnunet.readers import read_case

    folder = NnUNetFolder(
        make_model(
            tmp_path / "model",
            spacing=[3.0, 1.0, 1.0],
            patch=[8, 16, 16],
            schemes=["CTNormalization"],
            labels={"background": 0, "liver": 1},
        )
    )
    image = make_image(tmp_path / "ct_0000.nii.gz", shape=(24, 18, 12), spacing=(1.3, 1.6, 2.4), seed=3)
    on_scipy = preprocess(read_case([image]), folder)
    on_torch = preprocess(read_case([image]), folder, device="cpu")
    assert on_torch.dtype == on_scipy.dtype == np.float32 and on_torch.shape == on_scipy.shape
    np.testing.assert_allclose(on_torch, on_scipy, rtol=0, atol=1e-6 * np.abs(on_scipy).max())


@pytest.mark.parametrize("seed", range(4))
def test_the_export_on_a_device_gives_scipys_values_and_labels_bit_for_bit(seed):
    """What a GPU runs after the network (RowResampler.rows_on_device, the argmax or regions in torch),
    here on the CPU: the same float16 values as SciPy's path and the same labels, ties included."""
    from test_nnunet_resample import _case

    from voxpipe.transforms.nnunet_resample import RowResampler, labels_by_rows

    rng = np.random.default_rng(300 + seed)
    for trial in range(24):
        ins, outs, current, new = _case(rng, anisotropic=trial % 3 == 0, same_rows=trial % 7 == 0)
        heads, order_z, regions = int(rng.integers(2, 7)), trial % 2, trial % 4 == 3
        data = rng.normal(size=(heads, *ins)).astype(np.float16)
        data[:, :, : ins[1] // 3] = data[:1, :, : ins[1] // 3]  # ties: the first maximum wins
        resampler = RowResampler(ins, outs, current, new, order=1, order_z=order_z)
        for c in range(heads):
            np.testing.assert_array_equal(
                resampler.rows_on_device(torch.from_numpy(data[c]), 0, 0, outs[0]).numpy(),
                resampler.rows(data[c], 0, 0, outs[0]),
            )
        cuts = sorted({0, ins[0], *rng.integers(1, ins[0], size=3).tolist()})
        found = []
        for device in (None, "cpu"):
            blocks = [
                (a, torch.from_numpy(data[:, a:b].copy())) for a, b in zip(cuts[:-1], cuts[1:], strict=False)
            ]
            found.append(
                labels_by_rows(
                    RowResampler(ins, outs, current, new, order=1, order_z=order_z),
                    iter(blocks),
                    heads=heads,
                    regions=list(range(1, heads + 1)) if regions else None,
                    dtype=np.uint8,
                    device=device,
                )
            )
        np.testing.assert_array_equal(found[1], found[0])


def test_float64_to_float16_rounds_once_as_numpy_does():
    from voxpipe.transforms.torch_resample import to_half

    rng = np.random.default_rng(5)
    values = rng.normal(size=200_000) * np.exp(rng.uniform(-12, 9, size=200_000))
    halves = values.astype(np.float16).astype(np.float64)
    ulp = np.spacing(values.astype(np.float16)).astype(np.float64)
    values = np.concatenate(
        [values, halves + ulp / 2 * (1 + 2**-30), halves + ulp / 2]
    )  # near and on midpoints
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(to_half(torch.from_numpy(values)).numpy(), expected)


def test_an_nnunet_model_with_its_steps_on_the_device_exports_the_same_labels(tmp_path):
    """NnUNetModel's GPU wiring (torch resampling of the image, torch export), switched on here on the
    CPU: the image within 1e-6 of SciPy's, the labels from the same logits identical."""
    from test_nnunet_predict import make_image, make_model

    from voxpipe.pipelines.inference.nnunet.model import NnUNetModel
    from voxpipe.pipelines.inference.nnunet.readers import read_case

    folder = make_model(
        tmp_path / "model",
        spacing=[4.0, 1.5, 1.5],
        patch=[8, 16, 16],
        schemes=["CTNormalization"],
        labels={"background": 0, "liver": 1, "tumour": 2},
    )
    image = make_image(tmp_path / "ct_0000.nii.gz", shape=(14, 30, 26), spacing=(1.2, 1.2, 2.5), seed=8)
    plain, on_device = NnUNetModel(folder), NnUNetModel(folder)
    on_device.steps_on_device = True
    cases = [read_case([image]), read_case([image])]
    data = [plain.preprocess(cases[0]), on_device.preprocess(cases[1])]
    np.testing.assert_allclose(data[1], data[0], rtol=0, atol=1e-6 * np.abs(data[0]).max())
    logits = plain.logits(data[0])
    expected = plain.export(logits, cases[0])
    np.testing.assert_array_equal(on_device.export(logits, cases[1]), expected)
    assert len(np.unique(expected)) > 1
