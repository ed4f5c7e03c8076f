"""An nnU-Net model folder loaded once and run case by case, step for step as nnU-Net 2.8's
``nnUNetPredictor`` does, through voxpipe's one streamed sliding window.

The steps: read with the plans' reader (:mod:`.readers`), preprocess (:mod:`.preprocess`), nnU-Net's
windows with its float16 Gaussian, one float16 band per fold (mirroring over the allowed axes on
request), run by :func:`voxpipe.pipelines.inference.predictor.stream_windows`, then the logits
resampled back to the cropped shape row by row and argmaxed (or the regions' sigmoid > 0.5), pasted
into the crop box, ``transpose_backward``, written with the input's geometry.

What differs from nnU-Net is memory, not numbers: rows of logits go from the window loop to the
export as soon as no later window touches them, so neither the C × preprocessed grid nor the
C × full-resolution grid (37 GB in float16 for TotalSegmentator's 117 classes on a 512 × 512 × 600
CT) is held. On CUDA the windows run under fp16 autocast and the window arithmetic stays in float16,
as nnU-Net's predictor does on a GPU; on the CPU in float32 (``fast``: bf16 where the CPU has it).
On a GPU the image is resampled there (:mod:`voxpipe.transforms.torch_resample`: SciPy's spline to
~1e-12) and the export's resampling and argmax run there too, with SciPy's values bit for bit.

Why our own: nnU-Net's predictor cannot be installed beside voxpipe (its packaging pulls torchvision,
which breaks the CPU torch), loads checkpoints with ``weights_only=False``, and holds its inputs and
outputs in memory whole. The tests compare this module with ``nnUNetPredictor`` itself on generated
model folders. Named ``NnUNetModel`` so that it is not mistaken for nnU-Net's ``nnUNetPredictor``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder
from voxpipe.pipelines.inference.nnunet.preprocess import preprocess, resampling_options
from voxpipe.pipelines.inference.nnunet.readers import Case, read_case
from voxpipe.pipelines.inference.predictor import (
    HEAD_CLASSES,
    HeadChunks,
    WindowSkipper,
    autocast,
    cut_window,
    resolve_precision,
    stream_windows,
)
from voxpipe.runtime import select_device
from voxpipe.transforms.nnunet import gaussian_weights, window_starts
from voxpipe.transforms.nnunet_resample import RowResampler, labels_by_rows

logger = logging.getLogger(__name__)

#: Where a CT channel counts as body for ``fast``'s window skipping (HU, before normalisation).
BODY_HU = -500.0


def _precision(device: torch.device, *, fast: bool) -> str:
    """nnU-Net's autocast: fp16 on CUDA (its predictor's default there); on the CPU float32, or bf16
    with ``fast`` where the CPU runs bf16 natively; MPS in float32, as nnU-Net runs it."""
    return resolve_precision(device, "auto" if fast or device.type == "cuda" else "fp32")


class NnUNetModel:
    """An nnU-Net model folder, loaded once (its folds' weights held), then run case by case.

    Args:
        folder: an :class:`NnUNetFolder` (or its path).
        step: the window step as a fraction of the patch (nnU-Net's ``tile_step_size``, 0.5).
        mirroring: test-time mirroring over the checkpoint's allowed axes.
        fast: voxpipe's fast path, not nnU-Net's numbers: the network in bf16 where the CPU runs
            bf16 natively, and windows holding no body voxel (nothing above -500 HU in a CT channel)
            not run, their voxels background (:attr:`skipped` counts them per case), and an image
            resampled whole (spline orders 4-5) with float32 coefficients (values within ~1e-6).
            ``benchmarks/nnunet_cpu.py`` states its agreement with the reference path.
        channels_last: run the windows in channels-last 3D layout (oneDNN; faster on some CPUs,
            ~1e-3 relative differences).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``: where the networks run and
            the bands are held (fp16 autocast on CUDA, as nnU-Net).
        runtime: ``"torch"`` (nnU-Net's numbers), ``"openvino"`` or ``"openvino-int8"`` (the windows
            run by OpenVINO on the CPU: :mod:`voxpipe.pipelines.inference.runtimes`; not nnU-Net's
            numbers, their agreement is measured by ``benchmarks/routes.py``; float32 coefficients
            where an image is resampled whole, as ``fast``).
    """

    def __init__(
        self,
        folder: NnUNetFolder | str | os.PathLike[str],
        *,
        step: float = 0.5,
        mirroring: bool = False,
        fast: bool = False,
        channels_last: bool = False,
        device: str | torch.device = "cpu",
        runtime: str = "torch",
    ) -> None:
        from voxpipe.networks.nnunet import network_from_plans, read_checkpoint
        from voxpipe.pipelines.inference.nnunet.validate import check_outputs

        self.device = select_device(device) if isinstance(device, str) else torch.device(device)
        self.fast, self.channels_last = bool(fast), bool(channels_last)
        from voxpipe.pipelines.inference.runtimes import check_runtime

        self.runtime = check_runtime(runtime)
        if self.runtime != "torch" and self.device.type != "cpu":
            raise InputError(
                f"runtime {runtime!r} runs on the CPU, not on {self.device}", hint="--device cpu"
            )
        self._compiled: list[Any] | None = None  # the folds' OpenVINO networks, once converted
        self._compiled_heads: list[torch.nn.Module] | None = None  # their heads, where run apart
        self._head_chunks: bool | None = None  # whether the head runs by class chunks (probed once)
        self.case_name = ""  # the case being run (an int8 model records what calibrated it)
        self.precision = _precision(self.device, fast=self.fast)
        # resampling and argmax in torch on the device (SciPy's values); on the CPU SciPy itself
        self.steps_on_device = self.device.type != "cpu"
        # an image resampled whole (orders 4-5): float64 spline coefficients where nnU-Net's labels
        # are promised, float32 elsewhere (orders 2-3 go by slabs with SciPy's values on every route)
        self.exact = self.runtime == "torch" and not self.fast and not self.channels_last
        self.skipped = 0

        self.folder = folder if isinstance(folder, NnUNetFolder) else NnUNetFolder(folder)
        config = self.folder.configuration
        self.step, self.mirroring = float(step), bool(mirroring)
        checkpoints = [read_checkpoint(p) for p in self.folder.checkpoints]
        self.mirror_axes = checkpoints[0].mirroring_axes
        source = str(self.folder.path / "plans.json")
        dims = len(config["patch_size"])
        for checkpoint in checkpoints:  # the axes index the network's input: within the patch's
            if self.mirroring and any(a >= dims for a in checkpoint.mirroring_axes or ()):
                raise BundleError(
                    f"{checkpoint.path!r}: inference_allowed_mirroring_axes: expected axes below {dims} "
                    f"(the {dims}D patch of {source!r}), found {list(checkpoint.mirroring_axes or ())}",
                    hint="--disable-tta runs the model without mirroring",
                )
            check_outputs(
                checkpoint.weights,
                self.folder.labels.heads,
                checkpoint.path,
                str(self.folder.path / "dataset.json"),
            )
        # a cascade stage: the first stage runs first, its labels are extra input channels (one-hot)
        self.previous = (
            NnUNetModel(
                NnUNetFolder(self.folder.previous_folder()),
                step=step,
                mirroring=mirroring,
                fast=fast,
                channels_last=channels_last,
                device=self.device,
                runtime=runtime,
            )
            if self.folder.previous_stage
            else None
        )
        self.foreground = [v for v in self.folder.labels.values if v != 0]
        self.network = network_from_plans(
            self.folder.plans,
            config,
            input_channels=len(self.folder.channels) + (len(self.foreground) if self.previous else 0),
            num_classes=self.folder.labels.heads,
            source=source,
        ).eval()
        self.network.to(self.device)
        self.weights = []
        for checkpoint in checkpoints:
            weights = {k: v.to(self.device) for k, v in checkpoint.weights.items()}
            try:
                self.network.load_state_dict(weights)
            except RuntimeError as error:
                raise BundleError(
                    f"{checkpoint.path!r}: the weights do not fit the network of {source!r} "
                    f"({str(error).splitlines()[0]})"
                ) from None
            self.weights.append(weights)
        self.patch = [int(p) for p in config["patch_size"]]
        self.spacing = [float(s) for s in config["spacing"]]

    # -- the steps --------------------------------------------------------------------------------
    def preprocess(self, case: Case) -> np.ndarray:
        """The case as the network sees it (C, *spatial) float32; ``case.data`` is released."""
        previous = self._previous_stage(case) if self.previous is not None else None
        return preprocess(
            case,
            self.folder,
            previous=previous,
            foreground=self.foreground,
            device=self.device if self.steps_on_device else None,  # the CPU: SciPy, as nnU-Net
            exact=self.exact,
        )

    def _previous_stage(self, case: Case) -> np.ndarray:
        """A cascade's first-stage labels on this case's array (in the reader's order, as nnU-Net reads
        the first stage's written prediction back)."""
        assert self.previous is not None and case.data is not None
        first = Case(case.data.copy(), list(case.spacing), dict(case.geometry), dict(case.properties))
        logits = self.previous.stream(self.previous.preprocess(first))
        return self.previous.export(logits, first, to_file=False)

    def _networks(self) -> list[torch.nn.Module]:
        """One callable per fold, sharing the module: each fold's weights are swapped in per call."""
        if len(self.weights) == 1:
            self.network.load_state_dict(self.weights[0])
            return [self.network]
        self.network._voxpipe_fold = None  # type: ignore[assignment]
        return [_FoldNetwork(self.network, w) for w in self.weights]

    def _runtime_networks(
        self, padded: torch.Tensor, windows: Sequence[tuple[slice, ...]], flat: bool, *, apart: bool = False
    ) -> list[Any]:
        """The folds' networks converted to :attr:`runtime` once (int8: calibrated on windows of the
        first case, spread over its grid); all folds in PyTorch if any fold's conversion failed.

        ``apart``: convert the network without its head (the last 1 × 1 convolution), which then runs
        in PyTorch a few classes at a time (:attr:`_compiled_heads`): a 118-class window's output
        (1 GB at 128³, held by OpenVINO and again as its copy) never exists whole."""
        if self._compiled is not None:
            return self._compiled
        from voxpipe.pipelines.inference.runtimes import CALIBRATION_WINDOWS, compile_network, spread

        shape = [1, int(padded.shape[0]), *self.patch]

        def calibration() -> list[np.ndarray]:
            picks = spread(list(windows), CALIBRATION_WINDOWS)
            return [cut_window(padded, w, flat)[None].float().numpy() for w in picks]

        apart = apart and hasattr(self.network, "features")
        compiled, heads = [], []
        for weights in self.weights:
            self.network.load_state_dict(weights)
            self.network._voxpipe_fold = None  # type: ignore[assignment]
            source = _Features(self.network) if apart else self.network
            network = compile_network(
                source,
                shape,
                self.runtime,
                calibration=calibration,
                calibrated_on=self.case_name or "the first case",
            )
            if network is source:  # fell back (warned): every fold in PyTorch
                compiled, heads = self._networks(), []
                break
            compiled.append(network)
            if apart:
                heads.append(copy.deepcopy(self.network.head))
        self._compiled, self._compiled_heads = compiled, heads or None
        return compiled

    def release_runtime(self) -> None:
        """Drop the folds' OpenVINO networks (their weights and activation buffers, GBs for a large
        model); the next case loads them again from the conversion cache."""
        self._compiled, self._compiled_heads = None, None

    def _body(self, padded: torch.Tensor) -> WindowSkipper | None:
        """The fast path's window test: a window with no body voxel is not run. The body is every
        voxel above ``max(BODY_HU, the plans' 0.5th percentile)`` (normalised as the plans normalise)
        in any CT channel; models without a CT channel run every window. CT normalisation clips at
        that percentile, so below it nothing can be told apart: where a plan's percentile lies above
        -500 HU (fat is about -100 HU), fat counts as air, and a warning says so with the number."""
        config, plans = self.folder.configuration, self.folder.plans
        schemes = config.get("normalization_schemes", [])
        properties = plans.get("foreground_intensity_properties_per_channel", {})
        body: torch.Tensor | None = None
        for c, scheme in enumerate(schemes):
            if scheme != "CTNormalization" or str(c) not in properties:
                continue
            p = properties[str(c)]
            floor = float(p["percentile_00_5"])
            if floor > BODY_HU and not getattr(self, "_floor_said", False):
                logger.warning(
                    "--approximate: windows with nothing above %.0f HU are skipped (channel %d): the plans' "
                    "0.5th percentile, where CT normalisation clips, lies above %.0f HU, so tissue below it "
                    "(fat, about -100 HU) counts as air",
                    floor,
                    c,
                    BODY_HU,
                )
                self._floor_said = True
            level = (max(BODY_HU, floor) - float(p["mean"])) / max(float(p["std"]), 1e-8)
            above = padded[c] > level
            body = above if body is None else body | above
        return WindowSkipper(body) if body is not None else None

    def _windows(self, padded_shape: Sequence[int]) -> tuple[list[tuple[slice, ...]], bool]:
        """nnU-Net's windows on the padded grid, in its order (rows of windows along Z; a 2D
        configuration slice by slice), and whether they are 2D."""
        patch = self.patch
        flat = len(patch) == len(padded_shape) - 1
        if flat:
            rows, depth = list(range(padded_shape[0])), 1
            in_plane = window_starts(padded_shape[1:], patch, self.step)
            size = patch
        else:
            rows, depth = window_starts(padded_shape[:1], patch[:1], self.step)[0], patch[0]
            in_plane = window_starts(padded_shape[1:], patch[1:], self.step)
            size = patch[1:]
        windows = [
            (slice(row, row + depth), *(slice(s, s + p) for s, p in zip(start, size, strict=True)))
            for row in rows
            for start in itertools.product(*in_plane)
        ]
        return windows, flat

    def stream(self, data: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """Fold-averaged float16 logits on the preprocessed grid ``data`` (C, Z, Y, X), row block by
        row block along Z: ``(first_row, (heads, rows, Y, X))``, in order, on :attr:`device`."""
        image = torch.from_numpy(np.ascontiguousarray(data))
        spatial, patch = list(image.shape[1:]), self.patch
        if len(patch) not in (len(spatial), len(spatial) - 1):
            raise InputError(
                f"{str(self.folder.path / 'plans.json')!r}: patch_size {patch} does not fit a "
                f"{len(spatial)}D image"
            )
        lead = len(spatial) - len(patch)
        pad_low = [0] * lead + [max(p - s, 0) // 2 for p, s in zip(patch, spatial[lead:], strict=True)]
        padded_shape = spatial[:lead] + [max(p, s) for p, s in zip(patch, spatial[lead:], strict=True)]
        padded = torch.zeros((image.shape[0], *padded_shape), dtype=image.dtype)
        inner = tuple(slice(lo, lo + s) for lo, s in zip(pad_low, spatial, strict=True))
        padded[(slice(None), *inner)] = image
        del image
        windows, flat = self._windows(padded_shape)
        skip = self._body(padded) if self.fast else None
        axes = [a + 2 for a in (self.mirror_axes or ())] if self.mirroring else []
        combos = [c for n in range(len(axes)) for c in itertools.combinations(axes, n + 1)]
        many = not combos and not flat and self.folder.labels.heads > 2 * HEAD_CLASSES
        networks = (
            self._networks()
            if self.runtime == "torch"
            else self._runtime_networks(padded, windows, flat, apart=many)
        )
        heads = self._compiled_heads if self.runtime != "torch" else None
        regions = self.folder.labels.regions is not None

        chunkable = (
            not combos
            and not flat
            and self.runtime == "torch"
            and self.folder.labels.heads > 2 * HEAD_CLASSES
            and self._head_chunks is not False
        )

        def predict(window: torch.Tensor, fold: int) -> torch.Tensor | HeadChunks:
            """nnU-Net's ``_internal_maybe_mirror_and_predict``, in the type the network gives (float16
            under CUDA autocast, as nnU-Net keeps it; bf16 is taken to float32). With many classes and
            no mirroring the head runs a few classes at a time (:class:`HeadChunks`), once a probe on
            the first window found its chunks bit for bit the whole head's."""
            network = networks[fold]
            window = window.to(self.device)
            if heads is not None:  # OpenVINO made the features; the head runs here, by classes
                return HeadChunks(network(window), heads[fold], finish=_exact)
            if chunkable and self._head_chunks is not False:
                return self._chunked(network, window)
            if self.channels_last and window.ndim == 5:
                window = window.contiguous(memory_format=torch.channels_last_3d)
            with autocast(self.device, self.precision, cpu_fp16=True):  # (fp16 is set on CUDA only)
                prediction = _exact(network(window))
                for flip in combos:
                    prediction += torch.flip(_exact(network(torch.flip(window, flip))), flip)
            if combos:
                prediction /= len(combos) + 1
            return prediction

        def unreached(heads: int) -> torch.Tensor:  # the fast path's rows no window reached
            if regions:
                return torch.full((heads,), -10.0)
            fill = torch.zeros(heads)
            fill[0] = 10.0
            return fill

        if self.channels_last:
            self.network.to(memory_format=torch.channels_last_3d)
        try:
            with torch.inference_mode():  # (a generator: autocast is entered per window, not across yields)
                yield from stream_windows(
                    padded,
                    windows,
                    predict,
                    weight=gaussian_weights(patch).to(torch.float16),
                    inner=inner,
                    band_dtype=torch.float16,
                    device=self.device,
                    networks=len(networks),
                    as_weighted=lambda values: values,
                    skip=skip,
                    unreached=unreached if skip is not None else None,
                    flat=flat,
                )
        finally:
            self.skipped = skip.skipped if skip is not None else 0
            if self.channels_last:
                self.network.to(memory_format=torch.contiguous_format)

    def _chunked(self, network: Any, window: torch.Tensor) -> torch.Tensor | HeadChunks:
        def context() -> Any:
            return autocast(self.device, self.precision, cpu_fp16=True)

        with context():
            features = network.features(window)
        chunks = HeadChunks(features, network.head, context=context, finish=_exact)
        if self._head_chunks is None:  # the probe: the chunks must be the whole head's numbers
            whole = chunks.whole()
            self._head_chunks = all(
                torch.equal(values, whole[0, classes]) for classes, values in chunks.chunks(0)
            )
            if not self._head_chunks:
                logger.debug("the head's class chunks differ from the whole head here: it runs whole")
            return whole
        return chunks

    def logits(self, data: np.ndarray) -> torch.Tensor:
        """Fold-averaged float16 logits on the preprocessed grid, whole (for tests and probabilities)."""
        return torch.cat([block.cpu() for _, block in self.stream(data)], dim=1)

    def _resampler(self, case: Case, in_shape: Sequence[int]) -> RowResampler:
        spacing = case.properties["spacing_transposed"]
        current = (
            self.spacing
            if len(self.spacing) == len(case.properties["shape_after_cropping"])
            else [spacing[0], *self.spacing]
        )
        options = resampling_options(self.folder.configuration, "resampling_fn_probabilities_kwargs", 1)
        return RowResampler(in_shape, case.properties["shape_after_cropping"], current, spacing, **options)

    def export(
        self, logits: torch.Tensor | Iterable[tuple[int, torch.Tensor]], case: Case, *, to_file: bool = True
    ) -> np.ndarray:
        """The label map on the input's array grid (the input file's SimpleITK array order, z, y, x), from the logits (whole,
        or the row blocks of :meth:`stream`): resampled to the cropped shape slab by slab, argmax (or
        the regions' sigmoid > 0.5 in ``regions_class_order``), pasted into the crop box,
        ``transpose_backward``. The full-resolution C × grid never exists."""
        labels = self.folder.labels
        blocks = [(0, logits)] if isinstance(logits, torch.Tensor) else logits
        dtype = np.uint8 if len([v for v in labels.values if v]) < 255 else np.uint16
        segmentation = labels_by_rows(
            self._resampler(case, case.properties["shape_after_resampling"]),
            blocks,
            heads=labels.heads,
            regions=list(labels.regions_class_order or []) if labels.regions is not None else None,
            dtype=dtype,
            # on a GPU the rows stay there: resampled and argmaxed with SciPy's values, bit for bit
            device=self.device if self.steps_on_device else None,
        )
        return self.place(segmentation, case, to_file=to_file)

    def place(self, segmentation: np.ndarray, case: Case, *, to_file: bool = True) -> np.ndarray:
        """A label map of the cropped preprocessed-space shape pasted into the crop box,
        ``transpose_backward``, and (NibabelIOWithReorient) turned back to the file's order."""
        plans = self.folder.plans
        full = np.zeros(case.properties["shape_before_cropping"], dtype=segmentation.dtype)
        full[tuple(slice(a, b) for a, b in case.properties["box"])] = segmentation
        backward = list(plans.get("transpose_backward", range(full.ndim)))
        full = full.transpose(backward)
        turn = case.properties.get("from_canonical")
        if turn is not None and to_file:  # NibabelIOWithReorient: from RAS back to the file's own voxel order
            from nibabel.orientations import apply_orientation

            full = np.ascontiguousarray(
                apply_orientation(full.transpose((2, 1, 0)), turn).transpose((2, 1, 0))
            )
        return full

    def probabilities(self, logits: torch.Tensor, case: Case) -> np.ndarray:
        """nnU-Net's exported probabilities (``nnUNetv2_predict --save_probabilities``): the logits
        resampled to the cropped shape as for the labels, softmax (regions: sigmoid) in float32, put
        back into the uncropped grid (background 1 outside the crop box), ``transpose_backward``; the
        input's array order, ``(C, z, y, x)``. Unlike the labels, the C × full grid is held: nnU-Net's
        format needs it whole."""
        plans, labels = self.folder.plans, self.folder.labels
        resampler = self._resampler(case, case.properties["shape_after_resampling"])
        source = logits.cpu().numpy()
        rows = resampler.shape[0]
        resampled = torch.stack(
            [
                torch.from_numpy(resampler.rows(source[c], 0, 0, rows).astype(np.float32))
                for c in range(source.shape[0])
            ]
        )
        regions = labels.regions is not None
        # nnU-Net's export runs with its default_num_processes torch threads; the split into threads
        # decides which values take the vectorised exp and which the scalar one (1 ulp apart)
        threads = torch.get_num_threads()
        torch.set_num_threads(int(os.environ.get("nnUNet_def_n_proc", "8")))
        try:
            probabilities = torch.sigmoid(resampled) if regions else torch.softmax(resampled, 0)
        finally:
            torch.set_num_threads(threads)
        full = np.zeros((probabilities.shape[0], *case.properties["shape_before_cropping"]), dtype=np.float32)
        if not regions:
            full[0] = 1
        full[(slice(None), *(slice(a, b) for a, b in case.properties["box"]))] = probabilities.numpy()
        backward = list(plans.get("transpose_backward", range(full.ndim - 1)))
        return full.transpose([0, *(i + 1 for i in backward)])

    def predict(self, paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, Case]:
        reader = str(self.folder.plans.get("image_reader_writer", "SimpleITKIO"))
        case = read_case(paths, reader=reader)
        self.case_name = str(paths[0])
        data = self.preprocess(case)
        return self.export(self.stream(data), case), case

    def write(self, segmentation: np.ndarray, case: Case, path: str | os.PathLike[str]) -> Path:
        """Write as nnU-Net's ``SimpleITKIO.write_seg`` (the input's spacing, origin, direction), atomically."""
        import SimpleITK as sitk

        from voxpipe.transforms.files import atomic_path

        image = sitk.GetImageFromArray(
            segmentation.astype(np.uint8 if np.max(segmentation) < 255 else np.uint16)
        )
        image.SetSpacing(case.geometry["spacing"])
        image.SetOrigin(case.geometry["origin"])
        image.SetDirection(case.geometry["direction"])
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), True)
        return Path(path)


def _exact(prediction: torch.Tensor) -> torch.Tensor:
    """A window's logits in the type nnU-Net sums them in: float16 stays (CUDA autocast), the rest float32."""
    return prediction if prediction.dtype in (torch.float16, torch.float32) else prediction.float()


class _Features(torch.nn.Module):
    """A network without its head (``network.features``), as a module OpenVINO can convert."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.features(x)  # type: ignore[operator]


class _FoldNetwork(torch.nn.Module):
    """One fold of a model: the shared network with this fold's weights loaded before a call when
    another fold's are in it, so five folds hold five state dicts, not five networks. (A copy is
    ~30 ms against seconds for a window; ``torch.func.functional_call`` leaves weights of the
    previous call behind in networks whose modules are registered twice, as nnU-Net's are.)"""

    def __init__(self, network: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.network, self.weights = network, dict(weights)

    def _load(self) -> None:
        if getattr(self.network, "_voxpipe_fold", None) != id(self):
            self.network.load_state_dict(self.weights)
            self.network._voxpipe_fold = id(self)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._load()
        return self.network(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._load()
        return self.network.features(x)

    @property
    def head(self) -> torch.nn.Module:
        """This fold's head (its weights are in the network once :meth:`features` ran)."""
        return self.network.head


__all__ = ["BODY_HU", "NnUNetModel"]
