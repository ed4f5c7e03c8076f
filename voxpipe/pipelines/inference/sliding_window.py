"""Sliding-window inference that skips windows without body and runs in reduced precision, as a MONAI ``Inferer``.

MONAI's ``SlidingWindowInferer`` runs every window of the volume in the network's precision and
memory layout. On CT part of the grid is air, table and arms around the body; on CPUs with bf16
support a bf16 forward pass is about twice as fast. :class:`FastSlidingWindowInferer` runs MONAI's
window grid, Gaussian blending and overlap, bit for bit as ``sliding_window_inference`` computes them,
on voxpipe's one streamed sliding window (:mod:`voxpipe.pipelines.inference.predictor`, the one the
nnU-Net path uses too), with these changes:

* **windows over the body mask**: the body is ``input > threshold`` (the normalised image; for a
  CT window clipped to [0, 1], 0 is everything below the window) after a morphological opening
  (which removes thin structures: the CT table's shell, skin, cables), keeping the largest connected
  component (and any at least ``keep_fraction`` of its size: the second leg), closed and with the
  holes of every axial slice filled (the lungs, the bowel gas). MONAI's window grid over the whole
  volume is kept, window for window, but a window that holds no body voxel is not run: it returns
  background with certainty. Inside the body the logits are MONAI's own windows blended the same
  way. How much this saves depends on the window size: with the liver bundle's 96 × 96 × 48 windows
  on a 274 × 274 × 120 grid (a 512 × 512 CT at 0.8 mm), every one of the 48 windows touches the body
  and none is skipped; smaller windows or a wider field of view skip more;
* **why not fewer, other windows by default**: a window grid laid elsewhere (over the body's box,
  over an organ box) changes what each window sees, and the networks here depend on it: the same
  trained SegResNet with its grid shifted by 8 voxels agrees with itself at Dice 0.978 (liver) /
  0.966 (tumour), with overlap 0.5 instead of 0.25 at 0.942 / 0.731 (benchmarks/README.md). So the
  default keeps MONAI's windows, and the options that move them are opt-in, with that risk stated;
* **coarse-to-fine organ ROI** (opt-in, ``organ_roi``): the same network runs first on the image
  downsampled ``roi_zoom`` times (area averaging), over that grid's own body mask; the box of the
  predicted foreground (components at least ``keep_fraction`` of the largest) plus ``roi_margin``
  voxels is then the only place full-resolution windows run, on a window grid of its own, and
  everything outside it is background. The risks: a network trained at one spacing sees organs at
  half their size, so a part the coarse pass misses beyond the margin is lost (post-processing cannot
  bring it back); the windows are not MONAI's (see above); when the coarse pass finds no foreground
  the whole body is used (and logged). ``last_counts`` and the log record the box and the windows;
* **body crop** (opt-in, ``crop_body``): the window grid is laid over the bounding box of the body
  mask plus ``margin`` voxels instead of the whole volume (fewer windows where the body is small in
  its field of view, but windows at other places than MONAI's);
* **precision**: ``"bf16"`` autocast on CPU, ``"fp16"`` AMP on CUDA, or ``"fp32"``;
* **channels-last 3D** (opt-in): the network's 5D weights and the windows are converted for the
  call (and the network converted back afterwards). About 1.3–1.45× faster again here, but oneDNN's
  channels-last convolutions differ from the default ones by ~1e-3 relative, and on the briefly
  trained demo network that moved tumour agreement with plain fp32 from 0.992 to 0.971 (below the
  0.99 the project asks for), so it is off by default;
* **torch.compile** (opt-in): the network is compiled once per inferer. On the 2-core CPU here a
  SegResNet(8) batch of 4 × 96³ in bf16 went from 1.55 s to 1.38 s, after 62 s of compilation, so
  it pays only over many cases;
* **flip TTA** (opt-in): the logits of the input flipped along every combination of spatial axes
  (8 passes in 3D) are flipped back and averaged, as nnU-Net's mirroring does;
* **streamed into the labels** (``stream``, used whenever voxpipe's inference engine runs a bundle
  whose post-processing starts with ``ResampleArgmaxd``): :func:`stream_sliding_window` blends
  MONAI's windows in MONAI's order with MONAI's arithmetic (bit-identical, tested) but hands each
  finished block of rows straight to the inversion to the source grid, so only a window-deep band
  of the output is held (100 classes on a 600-slice CT: 0.9 GB of float16 instead of 2.5 GB, and
  no second copy for the inversion). With TTA, organ ROI or body crop the same rows are gathered
  into the whole output instead;
* **stitching device**: windows run on the input's device; on CUDA the blended output stays on the
  GPU when it fits in free GPU memory (twice its size) and is stitched on the CPU otherwise.

Outputs are logits of the full input size on the stitching device, so ``Activationsd`` and
:class:`voxpipe.transforms.invert.ResampleArgmaxd` (or MONAI's ``Invertd``) work unchanged: float32,
or float16 for networks of more than :data:`MANY_CLASSES` outputs (``stitch_dtype="auto"``), where a
float32 C × grid tensor alone would be gigabytes (100 classes on a 256 × 256 × 192 grid: 5 GB; in
float16 2.5 GB, with each window still computed in float32 or bf16).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.predictor import (
    PRECISIONS,
    NotStreamable,
    WindowCounts,
    WindowSkipper,
    autocast,
    stream_windows,
)
from voxpipe.transforms.body import body_box, body_mask, box_of

logger = logging.getLogger(__name__)

MANY_CLASSES = 16  # above this many outputs, stitch_dtype "auto" blends in float16


class _WindowNetwork:
    """The callable the streamed sliding window runs on each batch of windows: a float16 stitch's
    windows taken to float32, channels-last, autocast. Its output keeps the network's type (bf16 under
    autocast): the stitch weights each window in float32 on its own, so a batch of 100-class windows
    is not held in float32 at once."""

    def __init__(self, network: Any, *, precision: str, channels_last: bool) -> None:
        self.network, self.precision, self.channels_last = network, precision, channels_last

    def __call__(self, windows: torch.Tensor, fold: int = 0) -> torch.Tensor:
        """(N, C_in, *roi) → (N, C_out, *roi) logits."""
        if windows.dtype == torch.float16:  # a float16 stitch: the network still sees float32 windows
            windows = windows.float()
        if self.channels_last and windows.ndim == 5:
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        with autocast(windows.device, self.precision):
            return self.network(windows)


def _out_channels(network: Any) -> int | None:
    """The output channels of the network's last convolution (its classes, for the segmentation
    networks MONAI and nnU-Net build); None when it has none."""
    if not isinstance(network, torch.nn.Module):
        return None
    convolutions = [m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return int(convolutions[-1].out_channels) if convolutions else None


@contextlib.contextmanager
def _channels_last(network: Any, enabled: bool) -> Any:
    """Convert ``network``'s 5D parameters to channels-last 3D for the block, and back after it."""
    if not enabled or not isinstance(network, torch.nn.Module):
        yield
        return
    network.to(memory_format=torch.channels_last_3d)
    try:
        yield
    finally:
        network.to(memory_format=torch.contiguous_format)


def _scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[int]:
    """MONAI's window step: ``int(roi × (1 − overlap))`` (at least 1); the whole axis when the window spans it."""
    return [
        int(r) if r == n else max(int(r * (1 - overlap)), 1)
        for n, r in zip(image_size, roi_size, strict=True)
    ]


def stream_sliding_window(
    inputs: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    rows: Callable[[int, torch.Tensor], None],
    *,
    overlap: float = 0.25,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    cval: float = 0.0,
    device: torch.device | str | None = None,
    body: torch.Tensor | float | None = None,
    background: int = 0,
    counts: WindowCounts | None = None,
    progress: bool = False,
) -> None:
    """MONAI's ``sliding_window_inference`` over one volume, handing on finished rows of the first
    spatial axis instead of returning the whole blended output.

    The windows, their order, the importance map, the padding and every addition and division are
    MONAI's (the values are bit-identical to ``sliding_window_inference``'s output; the tests compare
    them), run by voxpipe's one streamed sliding window
    (:func:`voxpipe.pipelines.inference.predictor.stream_windows`): finished rows are divided by the
    summed weights and handed to ``rows(start, values)`` (values ``(C, n, Y, Z)`` in ``inputs``'
    type, rows of the unpadded grid, in order, each once); only a band of rows a window deep is held:
    with 100 output classes on a 256 × 256 × 192 grid, 0.9 GB in float16 instead of MONAI's 2.5 GB
    output (and 5 GB in float32).

    Why our own: MONAI's ``buffer_steps`` option buffers windows on the window device but still
    returns the whole C × grid output.

    Args:
        inputs: ``(1, C_in, X, Y, Z)``.
        predictor: windows ``(N, C_in, *roi)`` → ``(N, C_out, *roi)``; an output in float16 or
            bfloat16 is taken to float32 window by window (MONAI's numbers for a predictor that
            returns float32, without the batch's float32 copy).
        rows: receives each finished block of rows.
        device: where the band is held (default: ``inputs``' device).
        body: windows holding no body voxel are not run and stand for background with certainty
            (logits +20 for ``background``, -20 for the rest, weighted like any window). A bool
            ``(X, Y, Z)`` mask (the padding is not body), or a threshold: voxels of the padded input
            above it in any channel are body. None: every window runs, as MONAI's.
        counts: filled with the windows run and skipped.

    Raises:
        NotStreamable: the predictor returned something else than one tensor of the window's size.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
    from monai.utils import fall_back_tuple

    if inputs.ndim != 5 or inputs.shape[0] != 1:
        raise NotStreamable(f"expected one 3D volume (1, C, X, Y, Z), found {tuple(inputs.shape)}")
    compute_dtype = inputs.dtype
    original = [int(v) for v in inputs.shape[2:]]
    roi = [int(v) for v in fall_back_tuple(roi_size, original)]
    image_size = [max(n, r) for n, r in zip(original, roi, strict=True)]
    pad_size: list[int] = []  # torch's pad order: last axis first
    for n, r in reversed(list(zip(original, roi, strict=True))):
        diff = max(r - n, 0)
        pad_size.extend([diff // 2, diff - diff // 2])
    plain = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
    if any(pad_size):
        plain = torch.nn.functional.pad(plain, pad=pad_size, mode="constant", value=cval)
    low = [pad_size[2 * (2 - axis)] for axis in range(3)]  # padding before each axis
    inner = tuple(slice(lo, lo + n) for lo, n in zip(low, original, strict=True))
    slices = dense_patch_slices(image_size, roi, _scan_interval(image_size, roi, overlap))
    weight = compute_importance_map(
        get_valid_patch_size(image_size, roi),
        mode=mode,
        sigma_scale=sigma_scale,
        device=inputs.device,
        dtype=compute_dtype,
    ).to(dtype=compute_dtype, device=inputs.device)
    skip = None
    if isinstance(body, torch.Tensor):
        mask = torch.zeros(image_size, dtype=torch.bool)
        mask[inner] = body.cpu()
        skip = WindowSkipper(mask)
    elif body is not None:
        skip = WindowSkipper((plain[0] > body).any(dim=0))

    def certain_background(classes: int) -> torch.Tensor:
        fill = torch.full((classes,), -20.0)  # ±20 are exact in every type
        fill[background] = 20.0
        return fill

    for start, values in stream_windows(
        plain[0],
        [tuple(w) for w in slices],
        lambda windows, fold: predictor(windows),
        weight=weight,
        inner=inner,
        band_dtype=compute_dtype,
        device=device,
        batch=sw_batch_size,
        skip=skip,
        skipped_logits=certain_background if skip is not None else None,
        counts=counts,
        progress=progress,
    ):
        rows(start, values)


class FastSlidingWindowInferer(Inferer):
    """``SlidingWindowInferer`` that runs only the windows over the body, in reduced precision, with
    optional body crop, coarse-to-fine organ ROI, channels-last layout and flip TTA (see module doc).

    Args:
        roi_size, sw_batch_size, overlap, mode: as MONAI's ``SlidingWindowInferer``.
        precision: ``"auto"`` (fp16 on CUDA; bf16 on a CPU with native bf16, else fp32), ``"bf16"``,
            ``"fp16"`` (CUDA only) or ``"fp32"``.
        skip_air: do not run windows without body (False: every window runs, as MONAI).
        body_mask: the body is :func:`body_mask` (table, arms and air excluded); False: any voxel
            above ``threshold``.
        threshold: input value above which a voxel counts as body (0 for a [0, 1] CT window).
        opening: radius (voxels) of the body mask's opening.
        keep_fraction: body components at least this fraction of the largest are kept.
        crop_body: lay the window grid over the body's bounding box plus ``margin`` (with
            ``organ_roi``: over the organ box) rather than the whole volume: fewer windows, placed
            elsewhere than MONAI's (False: MONAI's own windows, those without body skipped).
        margin: voxels added around the body box per side (default: an eighth of the window).
        organ_roi: first a coarse pass at ``roi_zoom`` times the spacing; full-resolution windows
            only inside the box of its foreground plus ``roi_margin`` voxels.
        roi_zoom: downsampling factor of the coarse pass.
        roi_margin: voxels (full grid) added to the coarse foreground's box per side
            (default: a quarter of the window).
        roi_labels: classes that make the ROI (default: every class but ``background``).
        background: output channel set to certainty where no window ran.
        channels_last: run the network in channels-last 3D layout (faster, less exact; see module doc).
        tta: average the logits over flips along every combination of spatial axes (2^3 passes).
        compile: run the network through ``torch.compile`` (compiled once, on first use).
        stitch_device: ``"auto"`` (the input's device when the output fits there, else the CPU),
            ``"cpu"`` or ``"input"``.
        stitch_dtype: the blended output's type: ``"float32"``, ``"float16"``, or ``"auto"``
            (float16 when the network has more than :data:`MANY_CLASSES` output channels).
        stream: when the inference engine has linked this inferer to a ``ResampleArgmaxd`` that starts
            the post-processing (``stream_into``), hand it the logits row block by row block as the
            windows finish (:func:`stream_sliding_window`) and return its source-grid labels: the
            same labels, without the C × network grid (with 100 classes on a 600-slice CT, 2.5 GB).
            Not with TTA, organ ROI or body crop, which take the whole output.
        progress: a progress bar over each volume's windows (MONAI's, tqdm).

    After each call ``last_counts`` holds ``run`` and ``skipped`` windows, ``passes``, the body
    fraction of the volume and, with ``organ_roi``, the ROI box, its fraction and the coarse windows.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        *,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        precision: str = "auto",
        skip_air: bool = True,
        body_mask: bool = True,
        threshold: float = 0.0,
        opening: int = 2,
        keep_fraction: float = 0.2,
        crop_body: bool = False,
        margin: Sequence[int] | None = None,
        organ_roi: bool = False,
        roi_zoom: float = 2.0,
        roi_margin: Sequence[int] | None = None,
        roi_labels: Sequence[int] | None = None,
        background: int = 0,
        channels_last: bool = False,
        tta: bool = False,
        compile: bool = False,
        runtime: str = "torch",
        stitch_device: str = "auto",
        stitch_dtype: str = "auto",
        stream: bool = True,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise InputError(f"precision: expected one of {PRECISIONS}, found {precision!r}")
        self.roi_size = [int(v) for v in roi_size]
        self.sw_batch_size, self.overlap, self.mode = sw_batch_size, overlap, mode
        self.precision, self.crop_body, self.threshold = precision, crop_body, threshold
        self.body_mask, self.opening, self.keep_fraction = bool(body_mask), int(opening), float(keep_fraction)
        self.margin = [int(v) for v in margin] if margin is not None else [r // 8 for r in self.roi_size]
        if roi_zoom < 1:
            raise InputError(f"roi_zoom: expected a downsampling factor >= 1, found {roi_zoom!r}")
        self.organ_roi, self.roi_zoom = bool(organ_roi), float(roi_zoom)
        self.roi_margin = (
            [int(v) for v in roi_margin] if roi_margin is not None else [r // 4 for r in self.roi_size]
        )
        self.roi_labels = [int(v) for v in roi_labels] if roi_labels is not None else None
        self.background = background
        self.skip_air, self.channels_last = skip_air, channels_last
        if stitch_device not in ("auto", "cpu", "input"):
            raise InputError(f"stitch_device: expected 'auto', 'cpu' or 'input', found {stitch_device!r}")
        self.tta, self.compile, self.stitch_device = bool(tta), bool(compile), stitch_device
        if stitch_dtype not in ("auto", "float32", "float16"):
            raise InputError(f"stitch_dtype: expected 'auto', 'float32' or 'float16', found {stitch_dtype!r}")
        self.stitch_dtype = stitch_dtype
        self.stream = bool(stream)
        # Set by the inference engine to the bundle's first post-processing transform when that is
        # ResampleArgmaxd: its streamer() then takes the logits row block by row block.
        self.stream_into: Any = None
        self.progress = bool(progress)
        self._compiled: tuple[Any, Any] | None = None  # (network, its compiled version)
        from voxpipe.pipelines.inference.runtimes import check_runtime

        self.runtime = check_runtime(runtime)
        self._converted: tuple[Any, Any] | None = None  # (network, its OpenVINO version)
        self.last_counts: dict[str, Any] = {}

    def _network(self, network: Any, inputs: torch.Tensor | None = None) -> Any:
        if self.runtime != "torch" and inputs is not None and inputs.device.type == "cpu":
            return self._openvino(network, inputs)
        if not self.compile:
            return network
        if self._compiled is None or self._compiled[0] is not network:
            self._compiled = (network, torch.compile(network))
        return self._compiled[1]

    def _openvino(self, network: Any, inputs: torch.Tensor) -> Any:
        """``network`` converted by :mod:`voxpipe.pipelines.inference.runtimes` once per inferer (int8:
        calibrated on windows of the first image, spread over it)."""
        if self._converted is not None and self._converted[0] is network:
            return self._converted[1]
        from voxpipe.pipelines.inference.runtimes import CALIBRATION_WINDOWS, compile_network, spread

        roi = self.roi_size

        def calibration() -> list[Any]:
            image = inputs[:1].float()
            pad = [
                p
                for r, s in zip(reversed(roi), reversed(image.shape[2:]), strict=True)
                for p in (0, max(r - s, 0))
            ]
            image = torch.nn.functional.pad(image, pad)
            starts = itertools.product(
                *[sorted({0, (s - r) // 2, s - r}) for r, s in zip(roi, image.shape[2:], strict=True)]
            )
            windows = [
                image[(slice(None), slice(None), *(slice(a, a + r) for a, r in zip(start, roi, strict=True)))]
                for start in starts
            ]
            return [w.contiguous().numpy() for w in spread(windows, CALIBRATION_WINDOWS)]

        timed = getattr(network, "timed", None)  # --timings' wrapper: convert what it wraps, time the calls
        shape, source = [1, int(inputs.shape[1]), *roi], network.wrapped if timed else network
        compiled = compile_network(
            source, shape, self.runtime, calibration=calibration, calibrated_on="the first image"
        )
        self._converted = (network, timed(compiled) if timed else compiled)
        return self._converted[1]

    def _stitch_dtype(self, network: Any) -> torch.dtype:
        if self.stitch_dtype == "auto":
            classes = _out_channels(network)
            return torch.float16 if classes is not None and classes > MANY_CLASSES else torch.float32
        return torch.float16 if self.stitch_dtype == "float16" else torch.float32

    def _output_device(self, inputs: torch.Tensor, classes_hint: int = 8) -> torch.device:
        if self.stitch_device == "cpu" or inputs.device.type != "cuda":
            return torch.device("cpu") if self.stitch_device == "cpu" else inputs.device
        if self.stitch_device == "input":
            return inputs.device
        free, _ = torch.cuda.mem_get_info(inputs.device)
        needed = 2 * 4 * classes_hint * inputs[0, 0].numel() * inputs.shape[0]  # output + weight map, float32
        return inputs.device if needed < free else torch.device("cpu")

    def _windows(
        self,
        inputs: torch.Tensor,
        network: Any,
        mask: torch.Tensor | None,
        *,
        tta: bool,
        rows: Callable[[int, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, int]]:
        """Blended logits of MONAI's window grid over ``inputs`` (each batch item on its own); with
        ``mask`` (X, Y, Z), only windows holding some of it run. With ``rows``, the logits are handed
        on row block by row block (no TTA) and None is returned; otherwise the rows are gathered into
        the whole output (the same values as MONAI's ``sliding_window_inference``)."""
        predictor = _WindowNetwork(
            self._network(network, inputs), precision=self.precision, channels_last=self.channels_last
        )
        if self._stitch_dtype(network) == torch.float16:  # MONAI blends in the input's type
            inputs = inputs.to(torch.float16)
        body: torch.Tensor | float | None = (
            mask if mask is not None else (self.threshold if self.skip_air else None)
        )
        spatial = list(range(2, inputs.ndim))
        flips = (
            [list(c) for n in range(len(spatial) + 1) for c in itertools.combinations(spatial, n)]
            if tta
            else [[]]
        )
        device = self._output_device(inputs)
        counts = WindowCounts()
        options = {
            "overlap": self.overlap,
            "mode": self.mode,
            "device": device,
            "background": self.background,
            "counts": counts,
            "progress": self.progress,
        }
        total: torch.Tensor | None = None
        with _channels_last(network, self.channels_last):
            if rows is not None:
                stream_sliding_window(
                    inputs, self.roi_size, self.sw_batch_size, predictor, rows, body=body, **options
                )
                return None, {"run": counts.run, "skipped": counts.skipped, "passes": 1}
            plain = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
            for dims in flips:
                view = torch.flip(plain, dims) if dims else plain
                flipped = body
                if isinstance(body, torch.Tensor) and dims:
                    flipped = torch.flip(body, [d - 2 for d in dims])
                out: torch.Tensor | None = None
                for item in range(view.shape[0]):

                    def gather(
                        start: int, values: torch.Tensor, item: int = item, view: torch.Tensor = view
                    ) -> None:
                        nonlocal out
                        if out is None:
                            shape = (view.shape[0], values.shape[0], *view.shape[2:])
                            out = torch.empty(shape, dtype=values.dtype, device=values.device)
                        out[item, :, start : start + values.shape[1]] = values

                    stream_sliding_window(
                        view[item : item + 1],
                        self.roi_size,
                        self.sw_batch_size,
                        predictor,
                        gather,
                        body=flipped,
                        **options,
                    )
                assert out is not None
                out = out if out.dtype == torch.float16 else out.float()
                out = torch.flip(out, dims) if dims else out
                total = out if total is None else total.add_(out)
        assert total is not None
        result = {"run": counts.run, "skipped": counts.skipped, "passes": len(flips)}
        return (total / len(flips) if len(flips) > 1 else total), result

    def _organ_box(
        self, inputs: torch.Tensor, network: Any
    ) -> tuple[tuple[slice, ...] | None, dict[str, int]]:
        """The full-grid box of the foreground a pass at ``roi_zoom`` times the spacing predicts, plus ``roi_margin``."""
        import numpy as np
        from scipy import ndimage

        plain = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        coarse = torch.nn.functional.interpolate(plain, scale_factor=1.0 / self.roi_zoom, mode="area")
        mask = (
            body_mask(
                coarse,
                threshold=self.threshold,
                opening=max(1, round(self.opening / self.roi_zoom)),
                keep_fraction=self.keep_fraction,
            )
            if self.skip_air and self.body_mask
            else None
        )
        logits, counts = self._windows(coarse, network, mask, tta=False)
        assert logits is not None
        labels = logits.argmax(1).cpu().numpy()
        foreground = (
            np.isin(labels, self.roi_labels) if self.roi_labels is not None else labels != self.background
        )
        components, count = ndimage.label(foreground.any(axis=0))
        if count == 0:
            return None, counts
        sizes = np.bincount(components.ravel())[1:]
        kept = torch.from_numpy(
            np.isin(components, np.flatnonzero(sizes >= self.keep_fraction * sizes.max()) + 1)
        )
        box = box_of(kept, [0, 0, 0])
        assert box is not None
        scale = [full / small for full, small in zip(inputs.shape[2:], coarse.shape[2:], strict=True)]
        full_box = tuple(
            slice(max(int(np.floor(b.start * f)) - m, 0), min(int(np.ceil(b.stop * f)) + m, n))
            for b, f, m, n in zip(box, scale, self.roi_margin, inputs.shape[2:], strict=True)
        )
        return full_box, counts

    def _streamed(
        self, inputs: torch.Tensor, network: Any, mask: torch.Tensor | None, counts: dict[str, Any]
    ) -> torch.Tensor | None:
        """The source-grid labels of ``stream_into``'s streamer fed row block by row block; None when
        it declines (the whole output is needed) or the network's output cannot be streamed."""
        from monai.data import MetaTensor

        from voxpipe.transforms.invert import SOURCE_LABELS

        streamer = self.stream_into.streamer(inputs)
        if streamer is None:
            return None
        try:
            _, run = self._windows(inputs, network, mask, tta=False, rows=streamer.add)
        except NotStreamable as why:
            logger.info("sliding window: the whole output is stitched (%s)", why)
            return None
        labels, _ = streamer.result()
        counts.update(run, streamed=True, invert_seconds=streamer.seconds)
        self.last_counts = counts
        logger.info(
            "sliding window: %d windows run, %d skipped; rows streamed into the source grid's labels",
            counts["run"],
            counts["skipped"],
        )
        meta = dict(getattr(inputs, "meta", {}))
        meta[SOURCE_LABELS] = True
        return MetaTensor(labels[None, None], meta=meta)

    def _background_outside(self, out: torch.Tensor, box: tuple[slice, ...]) -> None:
        """Set ``out`` (B, C, X, Y, Z) to background with certainty outside ``box``, slab by slab."""
        fill = torch.full((out.shape[1],), -20.0, dtype=out.dtype, device=out.device)
        fill[self.background] = 20.0
        fill = fill.view(1, -1, *([1] * (out.ndim - 2)))
        for axis, b in enumerate(box):
            for part in (slice(0, b.start), slice(b.stop, out.shape[2 + axis])):
                if part.stop > part.start:
                    index = [slice(None)] * out.ndim
                    index[2 + axis] = part
                    out[tuple(index)] = fill

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """(B, C_in, X, Y, Z) → (B, C_out, X, Y, Z) logits (float32; float16 with many classes), or,
        streamed (see ``stream``), (1, 1, *source shape) labels flagged ``SOURCE_LABELS`` in their metadata."""
        self.last_counts = {}
        spatial = tuple(inputs.shape[2:])
        mask = None
        if self.skip_air and self.body_mask:
            mask = body_mask(
                inputs, threshold=self.threshold, opening=self.opening, keep_fraction=self.keep_fraction
            )
        counts: dict[str, Any] = {}
        if mask is not None:
            counts["body_fraction"] = float(mask.float().mean())
        roi = None
        if self.organ_roi:
            roi, coarse = self._organ_box(inputs, network)
            counts["coarse_run"] = coarse["run"]
            if roi is None:
                logger.warning(
                    "organ ROI: the coarse pass found no foreground; windows run over the whole body"
                )
            else:
                inside = torch.zeros(spatial, dtype=torch.bool)
                inside[roi] = True
                mask = inside if mask is None else mask & inside
                counts["roi"] = [[b.start, b.stop] for b in roi]
                counts["roi_fraction"] = float(inside.float().mean())
        if (
            self.stream
            and self.stream_into is not None
            and roi is None
            and not self.crop_body
            and not self.tta
        ):
            labels = self._streamed(inputs, network, mask, counts)
            if labels is not None:
                return labels
        box = None
        if roi is not None:  # full resolution runs on a window grid of its own over the organ box
            box = roi
        elif self.crop_body and (
            mask is None or bool(mask.any())
        ):  # no body at all: the windows learn the classes
            box = (
                box_of(mask, self.margin)
                if mask is not None
                else body_box(inputs, threshold=self.threshold, margin=self.margin)
            )
        if box is None or box == tuple(slice(0, n) for n in spatial):
            out, run = self._windows(inputs, network, mask, tta=self.tta)
        else:
            region = (slice(None), slice(None), *box)
            cropped, run = self._windows(
                inputs[region], network, None if mask is None else mask[box], tta=self.tta
            )
            out = torch.empty(
                (inputs.shape[0], cropped.shape[1], *spatial), dtype=cropped.dtype, device=cropped.device
            )
            out[region] = cropped
            self._background_outside(out, box)  # outside the body box: background with certainty
        if roi is not None:
            self._background_outside(out, roi)  # outside the organ box: background with certainty
        counts.update(run)
        self.last_counts = counts
        logger.info(
            "sliding window: %d windows run, %d skipped%s",
            counts["run"],
            counts["skipped"],
            f"; organ ROI {counts['roi']} ({100 * counts['roi_fraction']:.0f} % of the volume)"
            if "roi" in counts
            else "",
        )
        if hasattr(inputs, "meta") and not hasattr(out, "meta"):  # keep MONAI metadata (affine) for Invertd
            from monai.data import MetaTensor

            out = MetaTensor(
                out, meta=inputs.meta, applied_operations=getattr(inputs, "applied_operations", [])
            )
        return out
