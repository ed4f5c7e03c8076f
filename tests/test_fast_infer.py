"""FastSlidingWindowInferer: MONAI's windows over the body mask, background elsewhere; body crop, organ ROI, bf16."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.sliding_window import FastSlidingWindowInferer, body_box, body_mask


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8).eval()


def test_body_box_grows_by_the_margin_and_clips():
    image = torch.zeros(1, 1, 40, 30, 20)
    image[0, 0, 10:20, 5:8, 3:4] = 1.0
    assert body_box(image, threshold=0.0, margin=[4, 10, 2]) == (slice(6, 24), slice(0, 18), slice(1, 6))
    assert body_box(torch.zeros(1, 1, 4, 4, 4), threshold=0.0, margin=[1, 1, 1]) is None


def test_crop_matches_monai_inside_the_box_and_is_background_outside(net):
    image = torch.zeros(1, 1, 64, 64, 32)
    image[0, 0, 20:40, 24:44, 8:24] = torch.rand(20, 20, 16) + 0.1
    inferer = FastSlidingWindowInferer(
        [32, 32, 16],
        sw_batch_size=2,
        precision="fp32",
        margin=[8, 8, 4],
        skip_air=False,
        crop_body=True,
        channels_last=False,
    )
    with torch.no_grad():
        fast = inferer(image, net)
        box = body_box(image, threshold=0.0, margin=[8, 8, 4])
        plain = sliding_window_inference(
            image[(slice(None), slice(None), *box)], [32, 32, 16], 2, net, overlap=0.25, mode="gaussian"
        )
    assert fast.shape == (1, 3, 64, 64, 32) and fast.dtype == torch.float32
    assert torch.allclose(fast[(slice(None), slice(None), *box)], plain, atol=1e-5)
    outside = torch.ones(64, 64, 32, dtype=torch.bool)
    outside[box] = False
    assert (fast.argmax(1)[0][outside] == 0).all()


def test_body_mask_drops_the_table_and_small_islands_keeps_large_parts_and_fills_holes():
    image = torch.zeros(1, 1, 60, 60, 10)
    image[0, 0, 10:50, 10:40] = 1.0  # the body
    image[0, 0, 20:30, 20:30] = 0.0  # a lung: a hole in every slice
    image[0, 0, 5:55, 44:46] = 1.0  # the table: two voxels thick, 4 voxels below the body
    image[0, 0, 52:58, 10:16] = 1.0  # an arm: a separate small component
    mask = body_mask(image, threshold=0.0, opening=2, keep_fraction=0.2)
    assert mask.shape == (60, 60, 10) and mask.dtype == torch.bool
    assert mask[12:48, 12:38].all() and mask[20:30, 20:30].all()  # body and its hole
    assert not mask[:, 43:].any() and not mask[53:].any()  # no table, no arm (the mask is grown by 2 voxels)
    image[0, 0, 52:60, 10:40] = 1.0  # a second leg (20 % of the first): kept at keep_fraction 0.1
    assert body_mask(image, threshold=0.0, opening=1, keep_fraction=0.1)[54:58, 12:38].all()
    assert not body_mask(torch.zeros(1, 1, 8, 8, 8), threshold=0.0).any()


def test_windows_over_the_body_mask_are_monais_windows_inside_the_body(net):
    image = torch.zeros(1, 1, 96, 96, 32)
    image[0, 0, 8:40, 10:44, 4:28] = torch.rand(32, 34, 24) + 0.1
    image[0, 0, 2:94, 60:62] = 0.7  # a table, far from the body: its windows are not run
    with torch.no_grad():
        fast = FastSlidingWindowInferer([32, 32, 16], sw_batch_size=2, precision="fp32", crop_body=False)
        out = fast(image, net)
        plain = sliding_window_inference(image, [32, 32, 16], 2, net, overlap=0.25, mode="gaussian")
    body = body_mask(image, threshold=0.0)
    assert fast.last_counts["skipped"] > fast.last_counts["run"] > 0
    assert 0.05 < fast.last_counts["body_fraction"] < 0.25
    assert torch.allclose(out[0][:, body], plain[0][:, body], atol=1e-5)  # MONAI's own windows, same blending
    assert (out.argmax(1)[0][:, 58:64] == 0).all()  # the table: background


class _Bright(torch.nn.Module):
    """A 'network' that calls a voxel class 1 where its input is above 0.5 (deterministic, any size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 10.0 * (x - 0.5), torch.full_like(x, -5.0)], dim=1)


def test_the_window_grid_over_the_body_box_runs_fewer_windows_and_covers_the_body():
    image = torch.zeros(1, 1, 128, 128, 32)
    image[0, 0, 30:90, 28:92, 4:28] = torch.rand(60, 64, 24) * 0.4 + 0.3
    image[0, 0, 2:126, 110:112] = 0.7  # the table: outside the box
    with torch.no_grad():
        whole = FastSlidingWindowInferer([32, 32, 16], precision="fp32", crop_body=False)
        reference = whole(image, _Bright())
        cropped = FastSlidingWindowInferer(
            [32, 32, 16], precision="fp32", crop_body=True
        )  # the grid over the body box
        out = cropped(image, _Bright())
    assert cropped.last_counts["run"] < whole.last_counts["run"]
    body = body_mask(image, threshold=0.0)
    assert torch.equal(
        out.argmax(1)[0][body], reference.argmax(1)[0][body]
    )  # a pointwise 'network': every body voxel covered
    assert (out.argmax(1)[0][:, 100:] == 0).all()


def test_organ_roi_runs_full_resolution_only_around_the_coarse_foreground():
    image = torch.zeros(1, 1, 96, 96, 48)
    image[0, 0, 8:88, 8:88, 4:44] = 0.3  # the body
    image[0, 0, 20:36, 24:40, 10:22] = 0.9  # the organ
    with torch.no_grad():
        whole = FastSlidingWindowInferer([32, 32, 16], precision="fp32")
        reference = whole(image, _Bright())
        roi = FastSlidingWindowInferer([32, 32, 16], precision="fp32", organ_roi=True, roi_margin=[4, 4, 2])
        out = roi(image, _Bright())
    counts = roi.last_counts
    assert counts["roi"] == [[16, 40], [20, 44], [8, 24]]  # the organ box (coarse, 2x) plus the margin
    assert counts["run"] < whole.last_counts["run"] and counts["coarse_run"] > 0
    assert torch.equal(out.argmax(1), reference.argmax(1))
    assert (out[0, 0, 50:] == 20.0).all()  # outside the ROI: background with certainty
    with pytest.raises(InputError, match="roi_zoom"):
        FastSlidingWindowInferer([32, 32, 16], roi_zoom=0.5)


def test_bf16_agrees_with_fp32_and_fp16_needs_cuda(net):
    image = torch.rand(1, 1, 48, 48, 24)
    with torch.no_grad():
        full = FastSlidingWindowInferer([32, 32, 16], precision="fp32", crop_body=False)(image, net)
        half = FastSlidingWindowInferer([32, 32, 16], precision="bf16", crop_body=False)(image, net)
    assert half.dtype == torch.float32 and (full.argmax(1) == half.argmax(1)).float().mean() > 0.9
    with pytest.raises(InputError, match="needs CUDA"):
        FastSlidingWindowInferer([32, 32, 16], precision="fp16")(image, net)


def test_air_windows_are_skipped_and_channels_last_changes_nothing_that_matters(net):
    image = torch.zeros(1, 1, 96, 96, 32)
    image[0, 0, 10:40, 12:40, 4:28] = torch.rand(30, 28, 24) + 0.1
    image[0, 0, 70:80, 70:80, 10:14] = 0.5  # a second island: the body box spans most of the volume
    with torch.no_grad():
        plain = FastSlidingWindowInferer(
            [32, 32, 16], precision="fp32", skip_air=False, crop_body=False, channels_last=False
        )
        reference = plain(image, net)
        fast = FastSlidingWindowInferer(
            [32, 32, 16], precision="fp32", body_mask=False, crop_body=False, channels_last=True
        )
        out = fast(image, net)
    assert fast.last_counts["skipped"] > 0 and fast.last_counts["run"] < plain.last_counts["run"]
    body = image[0, 0] > 0
    assert (out.argmax(1)[0][body] == reference.argmax(1)[0][body]).float().mean() > 0.999
    assert torch.allclose(
        out[0][:, body], reference[0][:, body], atol=1e-3
    )  # channels-last: same values to ~1e-4
    assert all(p.is_contiguous() for p in net.parameters())  # the network is given back in its own layout


def test_flip_tta_averages_the_flipped_passes(net):
    image = torch.rand(1, 1, 40, 36, 20)
    with torch.no_grad():
        tta = FastSlidingWindowInferer([32, 32, 16], precision="fp32", crop_body=False, tta=True)
        out = tta(image, net)
        flips = [[], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]]
        manual = sum(
            torch.flip(
                sliding_window_inference(
                    torch.flip(image, f), [32, 32, 16], 4, net, overlap=0.25, mode="gaussian"
                ),
                f,
            )
            for f in flips
        ) / len(flips)
    assert tta.last_counts["passes"] == 8 and torch.allclose(out, manual, atol=1e-5)
    with pytest.raises(InputError, match="stitch_device"):
        FastSlidingWindowInferer([32, 32, 16], stitch_device="gpu")


def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    from voxpipe.pipelines.inference import predictor as sliding_window  # the precision rules live there

    monkeypatch.setattr(sliding_window, "cpu_bf16_supported", lambda: False)
    assert sliding_window.resolve_precision(torch.device("cpu"), "auto") == "fp32"
    monkeypatch.setattr(sliding_window, "cpu_bf16_supported", lambda: True)
    assert sliding_window.resolve_precision(torch.device("cpu"), "auto") == "bf16"
    assert sliding_window.resolve_precision(torch.device("cuda"), "auto") == "fp16"
    assert sliding_window.resolve_precision(torch.device("cpu"), "fp32") == "fp32"


def test_many_classes_are_blended_in_float16_close_to_float32():
    torch.manual_seed(1)
    many = SegResNet(spatial_dims=3, in_channels=1, out_channels=20, init_filters=8).eval()
    image = torch.rand(1, 1, 40, 40, 24)
    with torch.no_grad():
        auto = FastSlidingWindowInferer([32, 32, 16], precision="fp32")(image, many)
        full = FastSlidingWindowInferer([32, 32, 16], precision="fp32", stitch_dtype="float32")(image, many)
        plain = sliding_window_inference(image, [32, 32, 16], 4, many, overlap=0.25, mode="gaussian")
        few = FastSlidingWindowInferer([32, 32, 16], precision="fp32")(
            image, SegResNet(init_filters=8).eval()
        )
    assert auto.dtype == torch.float16 and full.dtype == torch.float32 and few.dtype == torch.float32
    assert torch.allclose(full, plain, atol=1e-4)
    scale = float(full.abs().max())
    assert float((auto.float() - full).abs().max()) < 2e-3 * max(scale, 1.0)  # float16 rounding of the blend
    with pytest.raises(InputError, match="stitch_dtype"):
        FastSlidingWindowInferer([32, 32, 16], stitch_dtype="int8")
