"""Streamed stitching and inversion: the same numbers as MONAI's sliding window and as the whole-grid path.

The inferer may hand its logits on row block by row block (``stream_sliding_window``) into the
source-grid argmax (``SourceArgmax``) instead of holding the C × network grid. These tests compare,
on many generated cases (padding, every overlap, batch sizes that span window rows, float16
blending, flips), the streamed rows with MONAI's ``sliding_window_inference`` bit for bit, and the
streamed labels with ``resample_argmax`` of the whole grid, and a bundle's run with and without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from voxpipe.pipelines.inference.sliding_window import NotStreamable, stream_sliding_window
from voxpipe.transforms.invert import SourceArgmax, resample_argmax


def _network(classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, classes, 3, padding=1)
    ).eval()


def _cases() -> list[dict]:
    rng = np.random.default_rng(11)
    cases = []
    for index in range(40):
        roi = [int(v) for v in rng.integers(4, 13, size=3)]
        shape = [int(max(2, r + rng.integers(-5, 20))) for r in roi]  # some axes smaller than the window
        cases.append(
            {
                "shape": shape,
                "roi": roi if index % 9 else [-1, roi[1], roi[2]],  # -1: the whole axis, as MONAI allows
                "overlap": float(rng.choice([0.0, 0.25, 0.5, 0.6, 0.8])),
                "batch": int(rng.choice([1, 2, 3, 5, 16])),
                "mode": "gaussian" if index % 3 else "constant",
                "dtype": torch.float16 if index % 4 == 1 else torch.float32,
                "classes": int(rng.choice([2, 3, 7])),
                "seed": index,
            }
        )
    return cases


@pytest.mark.parametrize(
    "case", _cases(), ids=lambda c: f"{c['shape']}-{c['roi']}-o{c['overlap']}-b{c['batch']}"
)
def test_streamed_rows_equal_monais_sliding_window_bit_for_bit(case):
    network = _network(case["classes"], case["seed"])
    image = torch.rand(1, 1, *case["shape"], generator=torch.Generator().manual_seed(case["seed"]))
    image = image.to(case["dtype"])

    raw = case["seed"] % 5 == 2  # the streamed predictor returns bfloat16, taken to float32 window by window

    def predictor(windows):
        with torch.no_grad():
            out = network(windows.float()).contiguous()
        return out.to(torch.bfloat16) if raw else out

    expected = sliding_window_inference(
        image,
        case["roi"],
        case["batch"],
        lambda windows: predictor(windows).float(),  # voxpipe's predictor gives MONAI float32
        overlap=case["overlap"],
        mode=case["mode"],
    )
    blocks = []
    stream_sliding_window(
        image,
        case["roi"],
        case["batch"],
        predictor,
        lambda start, rows: blocks.append((start, rows.clone())),
        overlap=case["overlap"],
        mode=case["mode"],
    )
    starts = [start for start, _ in blocks]
    sizes = [rows.shape[1] for _, rows in blocks]
    assert (
        starts == list(np.cumsum([0, *sizes[:-1]])) and sum(sizes) == case["shape"][0]
    )  # each row once, in order
    streamed = torch.cat([rows for _, rows in blocks], dim=1)
    assert streamed.dtype == expected.dtype
    assert torch.equal(streamed, torch.as_tensor(expected)[0])


def test_a_network_whose_output_is_not_the_window_is_not_streamed():
    def halves(windows):
        return windows[:, :, ::2, ::2, ::2]

    with pytest.raises(NotStreamable, match="window's size"):
        stream_sliding_window(torch.rand(1, 1, 10, 10, 10), [4, 4, 4], 2, halves, lambda s, r: None)


def _geometry(rng):
    flips = rng.choice([-1.0, 1.0], size=3)
    network = np.diag([*rng.uniform(1.2, 2.6, size=3), 1.0])
    network[:3, 3] = rng.uniform(-3, 3, size=3)
    source = np.diag([*(flips * rng.uniform(0.5, 1.4, size=3)), 1.0])
    source[:3, 3] = rng.uniform(-4, 4, size=3)
    shape = [int(v) for v in rng.integers(9, 30, size=3)]
    # the source reaches about as far as the network grid (a little past it, as border values)
    extent = np.abs(np.diag(network)[:3]) * (np.array(shape) - 1)
    source_shape = [
        int(e / abs(s)) + int(rng.integers(-2, 4)) for e, s in zip(extent, np.diag(source)[:3], strict=True)
    ]
    for axis in range(3):
        if flips[axis] < 0:
            source[axis, 3] += abs(source[axis, axis]) * (source_shape[axis] - 1)
    return network, source, shape, [max(v, 2) for v in source_shape]


@pytest.mark.parametrize("seed", range(30))
def test_labels_streamed_in_any_blocks_equal_the_whole_grid_path(seed):
    rng = np.random.default_rng(seed)
    network, source, shape, source_shape = _geometry(rng)
    classes = int(rng.choice([2, 3, 5, 40]))
    logits = torch.from_numpy(rng.normal(size=(classes, *shape)).astype(np.float32)) * 3
    if seed % 3 == 0:  # mostly background, a blob of the rest: the region shortcut matters
        logits[0] += 6.0
        logits[1:, 2:6, 3:7, 1:5] += 9.0
    if seed % 5 == 1:
        logits = logits.half()
    kwargs = {
        "source_affine": source,
        "network_affine": network,
        "source_shape": source_shape,
        "softmax": True,
    }
    whole, _ = resample_argmax(logits, slab=int(rng.integers(1, 20)), **kwargs)
    stream = SourceArgmax(classes=None, network_shape=shape, slab=int(rng.integers(1, 20)), **kwargs)
    start = 0
    while start < shape[0]:
        size = int(rng.integers(1, 8))
        stream.add(start, logits[:, start : start + size].clone())
        start += size
        assert stream.held is None or stream.held.shape[1] <= size + 2 * (  # rows no slab needs are dropped
            int(np.ceil(16 * abs(source[0, 0]) / network[0, 0])) + 2
        )
    labels, _ = stream.result()
    assert torch.equal(labels, whole)
    assert (labels != 0).any()


def test_rows_out_of_order_or_missing_are_refused():
    stream = SourceArgmax(
        classes=2,
        source_affine=np.eye(4),
        network_affine=np.eye(4),
        source_shape=(6, 5, 4),
        network_shape=(6, 5, 4),
    )
    stream.add(0, torch.zeros(2, 3, 5, 4))
    with pytest.raises(ValueError, match="rows from 3"):
        stream.add(4, torch.zeros(2, 2, 5, 4))
    with pytest.raises(ValueError, match="3 of 6 network rows"):
        stream.result()


@pytest.mark.parametrize(
    ("orientation", "classes", "precision"), [("LPS", 3, "fp32"), ("RAS", 40, "fp32"), ("LPI", 3, "bf16")]
)
def test_a_bundle_run_streamed_writes_the_labels_of_the_whole_grid_path(
    liver_bundle, tmp_path, caplog, orientation, classes, precision
):
    """voxpipe infer's engine links the inferer to ResampleArgmaxd: the label files equal those of the
    whole-grid run (``inferer#stream=false``), for stored flips, resampling, and float16 blending."""
    import nibabel as nib

    from voxpipe.networks import build_network
    from voxpipe.phantoms.ct import liver_phantom
    from voxpipe.pipelines.inference.infer import infer_with_bundle
    from voxpipe.transforms.io import write_volume

    phantom = liver_phantom(5, orientation=orientation, size="tiny")
    nx, ny, nz = phantom.image.shape
    air = np.full((nx + 160, ny + 160, nz), -1024, dtype=np.int16)
    air[80:-80, 80:-80] = phantom.image  # air around: windows without body are skipped, beside others
    image = write_volume(air, phantom.affine, tmp_path / "in" / "case.nii.gz")
    torch.manual_seed(classes)
    weights = tmp_path / "model.pt"
    network = build_network("segresnet", in_channels=1, out_channels=classes, init_filters=8)
    torch.save(network.state_dict(), weights)
    overrides = {
        "num_classes": classes,
        "network_def#init_filters": 8,
        "patch_size": [32, 32, 16],
        "pixdim": [1.7, 1.3, 2.2],
        "precision": precision,
    }
    written, streamed = {}, {}
    for stream in (True, False):
        caplog.clear()
        with caplog.at_level("INFO", logger="voxpipe.pipelines.inference.sliding_window"):
            (out,) = infer_with_bundle(
                liver_bundle,
                [image],
                output_dir=tmp_path / f"out_{stream}",
                weights=weights,
                overrides={**overrides, "inferer#stream": stream},
            )
        streamed[stream] = "rows streamed" in caplog.text
        assert " 0 skipped" not in caplog.text  # some windows held only air
        written[stream] = np.asanyarray(nib.load(out).dataobj)
    assert streamed == {True: True, False: False}
    assert written[True].shape == air.shape
    assert np.array_equal(written[True], written[False])
    assert len(np.unique(written[True])) > 1  # a random network still predicts more than background


@pytest.mark.parametrize("seed", range(24))
def test_skipping_classes_that_cannot_win_changes_no_label(monkeypatch, seed):
    """Per block, classes whose largest corner value is below another's smallest are not interpolated:
    on trained-like scores (one class clearly ahead per region), near-ties and plain noise, the labels
    equal those with every class interpolated."""
    import voxpipe.transforms.invert as invert

    rng = np.random.default_rng(100 + seed)
    network, source, shape, source_shape = _geometry(rng)
    kind = seed % 3
    classes = int(rng.choice([20, 60])) if kind == 0 else int(rng.choice([6, 20, 60]))
    if kind == 0:  # trained-like: regions each won by one class, smooth transitions between them
        from scipy import ndimage

        regions = rng.integers(0, classes, size=(2, 2, 2))
        zoom = [int(np.ceil(n / 2)) for n in shape]
        winner = np.kron(regions, np.ones(zoom, dtype=int))[: shape[0], : shape[1], : shape[2]]
        onehot = (np.arange(classes)[:, None, None, None] == winner[None]).astype(np.float32)
        logits = 12 * ndimage.gaussian_filter(onehot, (0, 1.5, 1.5, 1.5)) + rng.normal(
            scale=0.3, size=onehot.shape
        ).astype(np.float32)
    elif kind == 1:  # near-ties: two classes within float rounding of each other everywhere
        logits = rng.normal(size=(classes, *shape)).astype(np.float32) - 5
        logits[1] = 3.0
        logits[2] = np.nextafter(np.float32(3.0), np.float32(4.0)) * (rng.random(shape) < 0.5)
    else:
        logits = rng.normal(size=(classes, *shape)).astype(np.float32) * 2
    kwargs = {
        "source_affine": source,
        "network_affine": network,
        "source_shape": source_shape,
        "softmax": True,
    }
    kept = []
    candidates = invert._candidates
    monkeypatch.setattr(invert, "_candidates", lambda v: kept.append(r := candidates(v)) or r)
    pruned, _ = resample_argmax(torch.from_numpy(logits), **kwargs)
    if kind == 0:  # a few classes win here: most are skipped in most blocks
        skipped = [r is not None and len(r) < classes / 2 for r in kept]
        assert kept and sum(skipped) > len(kept) / 2, [None if r is None else len(r) for r in kept]
    monkeypatch.setattr(invert, "PRUNE_ABOVE", 10**6)
    every, _ = resample_argmax(torch.from_numpy(logits), **kwargs)
    assert torch.equal(pruned, every)
