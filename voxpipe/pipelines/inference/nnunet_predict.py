"""Run an nnU-Net v2 model folder on an image, step for step as nnU-Net 2.8's ``nnUNetPredictor`` does.

The steps, each nnU-Net's own rule (``voxpipe.transforms.nnunet`` has the normalisation and window
rules, ``voxpipe.transforms.nnunet_resample`` the resampling; this module the rest):

1. read with the plans' reader (``SimpleITKIO``, ``NibabelIO``, ``NibabelIOWithReorient``: the array
   in (z, y, x) order, the spacing reversed);
2. ``transpose_forward``; crop to the box of the non-zero voxels (holes filled);
3. normalise each channel by its scheme; resample to the configuration's spacing (third order; when
   either spacing is anisotropic beyond 3:1, in-plane third order and nearest along the coarse axis);
4. pad to the patch, run nnU-Net's windows (3D, or a 2D configuration slice by slice) with its
   float16 Gaussian, accumulating in float16 as its predictor does (mirroring over the allowed axes
   on request), average the folds' logits;
5. resample the logits back to the cropped shape (first order, float16), argmax (or the regions'
   sigmoid > 0.5 in ``regions_class_order``), paste into the crop box, ``transpose_backward``, write
   with the input's spacing, origin and direction.

What differs from nnU-Net is memory, not numbers: steps 4 and 5 stream. Rows of logits are handed
from the window loop to the export as soon as no later window touches them, and the export computes
the label map slab by slab, so neither the C × preprocessed grid nor the C × full-resolution grid
(37 GB in float16 for TotalSegmentator's 117 classes on a 512 × 512 × 600 CT) is ever held.

Why our own: nnU-Net's predictor cannot be installed beside voxpipe (its packaging pulls torchvision,
which breaks the CPU torch), loads checkpoints with ``weights_only=False``, and holds its inputs and
outputs in memory whole. The tests compare this module with ``nnUNetPredictor`` itself on generated
model folders; ``fast=True`` is voxpipe's faster path, measured against this one.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.inference.nnunet_folder import NnUNetFolder
from voxpipe.transforms.nnunet import gaussian_weights, normalise_channel, window_starts
from voxpipe.transforms.nnunet_resample import RowResampler, labels_by_rows, resample, resample_segmentation

logger = logging.getLogger(__name__)

READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")
ROWS_PER_BLOCK = 8  # rows of logits handed from the window loop to the export at a time


@dataclass
class Case:
    """An image as nnU-Net holds it between the steps."""

    data: np.ndarray | None  # (C, *spatial), float32; released once preprocessed
    spacing: list[float]  # nnU-Net's order (reversed from SimpleITK's)
    geometry: dict[str, Any]  # SimpleITK spacing, origin, direction, for writing
    properties: dict[str, Any] = field(default_factory=dict)


def read_case(paths: Sequence[str | os.PathLike[str]], *, reader: str = "SimpleITKIO") -> Case:
    """The channels of one case, as the nnU-Net reader the plans name returns them.

    ``SimpleITKIO``: SimpleITK's array, (z, y, x), spacing reversed. ``NibabelIO``: nibabel's data
    transposed to the same order (float64 read, as nnU-Net does, then float32). ``NibabelIOWithReorient``:
    the image turned to the closest RAS orientation first; ``case.properties["from_canonical"]`` then
    holds the turn back, which :meth:`NnUNetPredictor.export` applies, so label maps always come back in
    the input file's own (SimpleITK) array order and are written with its geometry.

    Raises:
        InputError: a reader other than :data:`READERS`, a file the reader cannot read, channels of
            different shapes or spacings (named).
    """
    import SimpleITK as sitk

    if reader not in READERS:
        raise InputError(
            f"plans.json: image_reader_writer: expected one of {list(READERS)}, found {reader!r}"
        )
    arrays, spacings, first, turn = [], [], None, None
    for path in paths:
        try:
            if reader == "SimpleITKIO":
                image = sitk.ReadImage(str(path))
                info = image
            else:
                info = sitk.ImageFileReader()
                info.SetFileName(str(path))
                info.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(
                f"{str(path)!r}: expected an image SimpleITK reads, could not read it ({error})"
            ) from None
        if reader == "SimpleITKIO":
            array = sitk.GetArrayFromImage(image)
            if array.ndim == 2:
                array = array[None, None]
                spacing = [max(image.GetSpacing()) * 999, *list(image.GetSpacing())[::-1]]
            elif array.ndim == 3:
                array = array[None]
                spacing = list(image.GetSpacing())[::-1]
            else:
                raise InputError(f"{str(path)!r}: expected a 2D or 3D image, found {array.ndim} dimensions")
        else:
            array, spacing, turn = _read_nibabel(path, reorient=reader == "NibabelIOWithReorient")
        arrays.append(array)
        spacings.append([abs(float(s)) for s in spacing])
        if first is None:
            first = {
                "spacing": info.GetSpacing(),
                "origin": info.GetOrigin(),
                "direction": info.GetDirection(),
            }
    if len({a.shape for a in arrays}) != 1 or len({tuple(s) for s in spacings}) != 1:
        raise InputError(
            f"{str(paths[0])!r}: expected channels of one shape and spacing, found "
            f"{[a.shape[1:] for a in arrays]} and {spacings}"
        )
    assert first is not None
    case = Case(np.vstack(arrays, dtype=np.float32, casting="unsafe"), spacings[0], first)
    if turn is not None:
        case.properties["from_canonical"] = turn
    return case


def _read_nibabel(path: str | os.PathLike[str], *, reorient: bool) -> tuple[np.ndarray, list[float], Any]:
    """nnU-Net's ``NibabelIO`` / ``NibabelIOWithReorient`` reading of one file: (1, z, y, x), spacing, turn back."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many kinds for files it cannot read
        raise InputError(f"{str(path)!r}: expected a NIfTI file nibabel reads ({error})") from None
    if len(image.shape) != 3:
        raise InputError(f"{str(path)!r}: expected a 3D image (NibabelIO), found shape {image.shape}")
    turn = None
    if reorient:
        original = io_orientation(image.affine)
        image = image.as_reoriented(original)
        turn = ornt_transform(axcodes2ornt("RAS"), original)
    array = np.asarray(image.get_fdata()).transpose((2, 1, 0))[None]
    return array, [float(z) for z in image.header.get_zooms()[::-1]], turn


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (face connectivity), in a fraction of its memory.

    SciPy grows the background from the border by iterated dilation and needs ~45 bytes a voxel: 1.4 GB
    for a 512 × 512 × 120 CT, 7 GB at 600 slices, the peak of nnU-Net's preprocessing. The same set,
    by its definition: the background components (face-connected) that touch no face of the array are
    holes. Labelling them takes an int32 label map and a few masks (~7 bytes a voxel)."""
    background = ~mask
    labels = np.empty(mask.shape, dtype=np.int32)
    count = ndimage.label(background, output=labels)
    at_face = np.zeros(count + 1, dtype=bool)  # component number → touches a face of the array
    for axis in range(labels.ndim):
        for end in (0, -1):
            at_face[np.take(labels, end, axis=axis)] = True
    at_face[0] = True  # label 0 is the mask itself
    holes = at_face[labels]
    del labels
    np.logical_not(holes, out=holes)
    return mask | holes


def _nonzero_box(data: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    mask = data[0] != 0
    for channel in data[1:]:
        mask |= channel != 0
    mask = fill_holes(mask)
    box = []
    for axis in range(mask.ndim):  # per axis, the planes holding any voxel (argwhere: 24 bytes a voxel)
        planes = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not len(planes):  # an all-zero image: nnU-Net's box is then empty-safe [0, 0] per axis
            return mask, [[0, 0] for _ in range(mask.ndim)]
        box.append([int(planes[0]), int(planes[-1]) + 1])
    return mask, box


class NnUNetPredictor:
    """An nnU-Net model folder, loaded once (its folds' weights held), then run case by case.

    Args:
        folder: an :class:`NnUNetFolder` (or its path).
        step: the window step as a fraction of the patch (nnU-Net's ``tile_step_size``, 0.5).
        mirroring: test-time mirroring over the checkpoint's allowed axes (nnU-Net's default: on).
        fast: voxpipe's fast path, not nnU-Net's numbers: the network in bf16 where the CPU runs
            bf16 natively, and windows holding no body voxel (nothing above -500 HU in a CT channel)
            not run, their voxels background (:attr:`skipped` counts them per case).
            ``benchmarks/nnunet_cpu.py`` states its agreement with the reference path.
        channels_last: run the windows in channels-last 3D layout (oneDNN; faster on some CPUs,
            ~1e-3 relative differences).
    """

    def __init__(
        self,
        folder: NnUNetFolder | str | os.PathLike[str],
        *,
        step: float = 0.5,
        mirroring: bool = False,
        fast: bool = False,
        channels_last: bool = False,
    ) -> None:
        from voxpipe.networks.nnunet import network_from_plans, read_checkpoint
        from voxpipe.pipelines.inference.sliding_window import cpu_bf16_supported

        self.fast, self.channels_last = bool(fast), bool(channels_last)
        self.precision = "bf16" if self.fast and cpu_bf16_supported() else "fp32"
        self.skipped = 0

        self.folder = folder if isinstance(folder, NnUNetFolder) else NnUNetFolder(folder)
        config = self.folder.configuration
        self.step, self.mirroring = float(step), bool(mirroring)
        checkpoints = [read_checkpoint(p) for p in self.folder.checkpoints]
        self.mirror_axes = checkpoints[0].mirroring_axes
        source = str(self.folder.path / "plans.json")
        # a cascade stage: the first stage runs first, its labels are extra input channels (one-hot)
        self.previous = (
            NnUNetPredictor(
                NnUNetFolder(self.folder.previous_folder()),
                step=step,
                mirroring=mirroring,
                fast=fast,
                channels_last=channels_last,
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
        self.weights = []
        for checkpoint in checkpoints:
            try:
                self.network.load_state_dict(checkpoint.weights)
            except RuntimeError as error:
                raise BundleError(
                    f"{checkpoint.path!r}: the weights do not fit the network of {source!r} "
                    f"({str(error).splitlines()[0]})"
                ) from None
            self.weights.append(checkpoint.weights)
        self.patch = [int(p) for p in config["patch_size"]]
        self.spacing = [float(s) for s in config["spacing"]]

    # -- the steps --------------------------------------------------------------------------------
    def preprocess(self, case: Case) -> np.ndarray:
        """The case as the network sees it (C, *spatial) float32; ``case.data`` is released."""
        plans, config = self.folder.plans, self.folder.configuration
        if case.data is None:
            raise RuntimeError("this case was preprocessed already: read it again")
        previous = self._previous_stage(case) if self.previous is not None else None
        forward = list(plans.get("transpose_forward", range(case.data.ndim - 1)))
        data = case.data.transpose([0, *[i + 1 for i in forward]])
        spacing = [case.spacing[i] for i in forward]
        case.properties["shape_before_cropping"] = data.shape[1:]
        mask, box = _nonzero_box(data)
        crop = tuple(slice(a, b) for a, b in box)
        data, mask = data[(slice(None), *crop)], mask[crop]
        if previous is not None:  # nnU-Net's crop_to_nonzero with a segmentation: outside is -1 ...
            previous = previous.transpose(forward)[crop].astype(np.int16)
            previous[(previous == 0) & ~mask] = -1
            mask = previous >= 0  # ... and the normalisation mask is seg >= 0
        case.properties.update(box=box, shape_after_cropping=data.shape[1:], spacing_transposed=spacing)
        target = list(self.spacing)
        if len(target) < len(data.shape[1:]):
            target = [spacing[0], *target]
        shape = [int(round(i / j * k)) for i, j, k in zip(spacing, target, data.shape[1:], strict=True)]
        schemes = config.get("normalization_schemes", [])
        use_mask = config.get("use_mask_for_norm", [False] * len(schemes))
        properties = plans.get("foreground_intensity_properties_per_channel", {})
        normalised = np.empty(data.shape, dtype=np.float32)
        for c in range(data.shape[0]):
            normalised[c] = normalise_channel(
                data[c],
                schemes[c],
                properties=properties.get(str(c)),
                nonzero=mask,
                use_mask=bool(use_mask[c]),
                source=str(self.folder.path / "plans.json"),
            )
        case.data = None  # the full-resolution image: not needed again, and as large as the CT
        del data, mask
        case.properties.update(target_spacing=target, shape_after_resampling=shape)
        resampled = resample(
            normalised, shape, spacing, target, **self._resampling("resampling_fn_data_kwargs", 3)
        )
        if previous is None:
            return resampled
        options = self._resampling("resampling_fn_seg_kwargs", 1)
        previous = resample_segmentation(previous[None], shape, spacing, target, **options)[0]
        one_hot = np.stack([previous == value for value in self.foreground]).astype(resampled.dtype)
        return np.vstack((resampled, one_hot))

    def _resampling(self, key: str, order: int) -> dict[str, Any]:
        """The configuration's resampling options under ``key`` (nnU-Net's defaults where absent)."""
        kwargs = dict(self.folder.configuration.get(key) or {})
        return {
            "order": int(kwargs.get("order", order)),
            "order_z": int(kwargs.get("order_z", 0)),
            "force_separate_z": kwargs.get("force_separate_z"),
        }

    def _previous_stage(self, case: Case) -> np.ndarray:
        """A cascade's first-stage labels on this case's array (in the reader's order, as nnU-Net reads
        the first stage's written prediction back)."""
        assert self.previous is not None and case.data is not None
        first = Case(case.data.copy(), list(case.spacing), dict(case.geometry), dict(case.properties))
        logits = self.previous.stream(self.previous.preprocess(first))
        return self.previous.export(logits, first, to_file=False)

    def _rows(
        self, image: torch.Tensor, networks: Sequence[torch.nn.Module]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """nnU-Net's sliding window, streamed: ``(first_row, logits)`` blocks along the first spatial
        axis of ``image`` (C, Z, Y, X), each (heads, rows, Y, X) float16, fold-averaged, in order.

        nnU-Net visits its windows row of windows by row of windows along Z (in 2D, slice by slice),
        so the rows above the next row of windows are final once the current row of windows is done:
        they are divided by the summed Gaussian and handed on, and only a patch-deep band of logits
        per fold is held (nnU-Net holds the whole grid). Each fold keeps its own float16 band,
        accumulated in nnU-Net's order, so the values are nnU-Net's to the bit."""
        spatial = list(image.shape[1:])
        patch = self.patch
        flat = len(patch) == len(spatial) - 1  # a 2D configuration: slice by slice along Z
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
        gaussian = gaussian_weights(patch).to(torch.float16)
        if flat:
            row_starts, depth = list(range(padded_shape[0])), 1
            in_plane = window_starts(padded_shape[1:], patch, self.step)
        else:
            row_starts, depth = window_starts(padded_shape[:1], patch[:1], self.step)[0], patch[0]
            in_plane = window_starts(padded_shape[1:], patch[1:], self.step)
        heads = self.folder.labels.heads
        band_shape = (heads, depth, *padded_shape[1:])
        bands = [torch.zeros(band_shape, dtype=torch.half) for _ in networks]
        counts = torch.zeros((depth, *padded_shape[1:]), dtype=torch.half)
        axes = [a + 2 for a in (self.mirror_axes or ())] if self.mirroring else []
        combos = [c for n in range(len(axes)) for c in itertools.combinations(axes, n + 1)]
        base = 0
        skip = self._skip_windows(padded, patch, flat)

        def finish(upto: int) -> Iterator[tuple[int, torch.Tensor]]:
            """Hand on padded rows [base, upto), a few rows at a time, and shift the bands."""
            nonlocal base
            n = upto - base
            if n <= 0:
                return
            lo, hi = max(base, inner[0].start), min(upto, inner[0].stop)
            for first in range(lo, hi, ROWS_PER_BLOCK):
                rows = slice(first - base, min(first + ROWS_PER_BLOCK, hi) - base)
                total: torch.Tensor | None = None
                for band in bands:
                    part = torch.div(band[(slice(None), rows, *inner[1:])], counts[(rows, *inner[1:])])
                    total = part if total is None else total.add_(part)
                assert total is not None
                if len(bands) > 1:
                    total /= len(bands)
                if self.fast:  # rows no window reached: background, with certainty
                    empty = counts[(rows, *inner[1:])] == 0
                    if bool(empty.any()):
                        total[:, empty] = -10.0 if self.folder.labels.regions is not None else 0.0
                        if self.folder.labels.regions is None:
                            total[0][empty] = 10.0
                yield first - inner[0].start, total
            for band in [*bands, counts[None]]:
                _shift_rows(band, n)
            base = upto

        with torch.inference_mode():  # (a generator: autocast is entered per window, not across yields)
            for row in row_starts:
                yield from finish(row)
                for start in itertools.product(*in_plane):
                    if skip is not None and skip(row, start):
                        continue
                    if flat:
                        region: tuple[Any, ...] = (
                            row,
                            *(slice(s, s + p) for s, p in zip(start, patch, strict=True)),
                        )
                        local: tuple[Any, ...] = (0, *region[1:])
                    else:
                        region = (
                            slice(row, row + depth),
                            *(slice(s, s + p) for s, p in zip(start, patch[1:], strict=True)),
                        )
                        local = (slice(0, depth), *region[1:])
                    window = padded[(slice(None), *region)][None].contiguous()
                    if self.channels_last and window.ndim == 5:
                        window = window.contiguous(memory_format=torch.channels_last_3d)
                    for network, band in zip(networks, bands, strict=True):
                        with self._precision():
                            prediction = network(window).float()
                            for flip in combos:
                                prediction += torch.flip(network(torch.flip(window, flip)).float(), flip)
                        if combos:
                            prediction /= len(combos) + 1
                        weighted = prediction[0]
                        weighted *= gaussian  # in place, as nnU-Net does: no second C x patch array
                        band[(slice(None), *local)] += weighted
                    counts[local] += gaussian
            yield from finish(padded_shape[0])

    def _skip_windows(self, padded: torch.Tensor, patch: Sequence[int], flat: bool) -> Any:
        """The fast path's window test: a window with no body voxel is not run. The body is every
        voxel above -500 HU (normalised as the plans normalise) in any CT channel; models without a
        CT channel run every window."""
        if not self.fast:
            return None
        config, plans = self.folder.configuration, self.folder.plans
        schemes = config.get("normalization_schemes", [])
        properties = plans.get("foreground_intensity_properties_per_channel", {})
        body: torch.Tensor | None = None
        for c, scheme in enumerate(schemes):
            if scheme != "CTNormalization" or str(c) not in properties:
                continue
            p = properties[str(c)]
            level = (max(-500.0, float(p["percentile_00_5"])) - float(p["mean"])) / max(float(p["std"]), 1e-8)
            above = padded[c] > level
            body = above if body is None else body | above
        if body is None:
            return None
        # summed-area table along the in-plane axes and Z: any body voxel in a window, in O(1)
        table = (
            torch.nn.functional.pad(body.to(torch.int32), (1, 0, 1, 0, 1, 0)).cumsum(0).cumsum(1).cumsum(2)
        )

        def box_sum(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> int:
            return int(
                table[z1, y1, x1]
                - table[z0, y1, x1]
                - table[z1, y0, x1]
                - table[z1, y1, x0]
                + table[z0, y0, x1]
                + table[z0, y1, x0]
                + table[z1, y0, x0]
                - table[z0, y0, x0]
            )

        def skip(row: int, start: Sequence[int]) -> bool:
            if flat:
                (y, x), (py, px) = start, patch
                empty = box_sum(row, row + 1, y, y + py, x, x + px) == 0
            else:
                (y, x), (pz, py, px) = start, patch
                empty = box_sum(row, row + pz, y, y + py, x, x + px) == 0
            self.skipped += int(empty)
            return empty

        self.skipped = 0
        return skip

    def _precision(self) -> Any:
        import contextlib

        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _networks(self) -> list[torch.nn.Module]:
        """One callable per fold, sharing the module: each fold's weights are swapped in per call."""
        if len(self.weights) == 1:
            self.network.load_state_dict(self.weights[0])
            return [self.network]
        self.network._voxpipe_fold = None  # type: ignore[assignment]
        return [_FoldNetwork(self.network, w) for w in self.weights]

    def stream(self, data: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """Fold-averaged float16 logits on the preprocessed grid, row block by row block."""
        image = torch.from_numpy(np.ascontiguousarray(data))
        networks = self._networks()
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last_3d)
        try:
            yield from self._rows(image, networks)
        finally:
            if self.channels_last:
                self.network.to(memory_format=torch.contiguous_format)

    def logits(self, data: np.ndarray) -> torch.Tensor:
        """Fold-averaged float16 logits on the preprocessed grid, whole (for tests and probabilities)."""
        return torch.cat([block for _, block in self.stream(data)], dim=1)

    def _resampler(self, case: Case, in_shape: Sequence[int]) -> RowResampler:
        spacing = case.properties["spacing_transposed"]
        current = (
            self.spacing
            if len(self.spacing) == len(case.properties["shape_after_cropping"])
            else [spacing[0], *self.spacing]
        )
        options = self._resampling("resampling_fn_probabilities_kwargs", 1)
        return RowResampler(in_shape, case.properties["shape_after_cropping"], current, spacing, **options)

    def export(
        self, logits: torch.Tensor | Iterable[tuple[int, torch.Tensor]], case: Case, *, to_file: bool = True
    ) -> np.ndarray:
        """The label map on the input's array grid (the input file's SimpleITK array order, z, y, x), from the logits (whole,
        or the row blocks of :meth:`stream`): resampled to the cropped shape slab by slab, argmax (or
        the regions' sigmoid > 0.5 in ``regions_class_order``), pasted into the crop box,
        ``transpose_backward``. The full-resolution C × grid never exists."""
        plans, labels = self.folder.plans, self.folder.labels
        blocks = [(0, logits)] if isinstance(logits, torch.Tensor) else logits
        dtype = np.uint8 if len([v for v in labels.values if v]) < 255 else np.uint16
        segmentation = labels_by_rows(
            self._resampler(case, case.properties["shape_after_resampling"]),
            blocks,
            heads=labels.heads,
            regions=list(labels.regions_class_order or []) if labels.regions is not None else None,
            dtype=dtype,
        )
        full = np.zeros(case.properties["shape_before_cropping"], dtype=dtype)
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

    def predict(self, paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, Case]:
        reader = str(self.folder.plans.get("image_reader_writer", "SimpleITKIO"))
        case = read_case(paths, reader=reader)
        data = self.preprocess(case)
        return self.export(self.stream(data), case), case

    def write(self, segmentation: np.ndarray, case: Case, path: str | os.PathLike[str]) -> Path:
        """Write as nnU-Net's ``SimpleITKIO.write_seg`` (the input's spacing, origin, direction), atomically."""
        import SimpleITK as sitk

        from voxpipe.transforms.io import atomic_path

        image = sitk.GetImageFromArray(
            segmentation.astype(np.uint8 if np.max(segmentation) < 255 else np.uint16)
        )
        image.SetSpacing(case.geometry["spacing"])
        image.SetOrigin(case.geometry["origin"])
        image.SetDirection(case.geometry["direction"])
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), True)
        return Path(path)


def _shift_rows(band: torch.Tensor, n: int) -> None:
    """Move rows ``[n, depth)`` of a (C, depth, ...) band to the front and zero the rest, in place:
    copied front to back in pieces no longer than ``n``, so no piece overlaps its source and no
    band-sized copy is made (a band of 118 classes is ~2 GB)."""
    depth = band.shape[1]
    for start in range(0, depth - n, n):
        size = min(n, depth - n - start)
        band[:, start : start + size].copy_(band[:, start + n : start + n + size])
    band[:, max(depth - n, 0) :] = 0


class _FoldNetwork(torch.nn.Module):
    """One fold of a model: the shared network with this fold's weights loaded before a call when
    another fold's are in it, so five folds hold five state dicts, not five networks. (A copy is
    ~30 ms against seconds for a window; ``torch.func.functional_call`` leaves weights of the
    previous call behind in networks whose modules are registered twice, as nnU-Net's are.)"""

    def __init__(self, network: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.network, self.weights = network, dict(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.network, "_voxpipe_fold", None) != id(self):
            self.network.load_state_dict(self.weights)
            self.network._voxpipe_fold = id(self)  # type: ignore[assignment]
        return self.network(x)


def paths_of(case: Any) -> list[Path]:
    """The channel files of a case (one path, or nnU-Net's ``case_0000``, ``case_0001``... tuple)."""
    return list(case) if isinstance(case, tuple) else [case]


def is_nnunet_folder(path: str | os.PathLike[str]) -> bool:
    """A folder with nnU-Net's ``plans.json`` and ``dataset.json`` (not a MONAI bundle)."""
    folder = Path(path)
    return (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()


def infer_with_nnunet(
    folder: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output_dir: str | os.PathLike[str],
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    step: float = 0.5,
    tta: bool = False,
    resume: bool = False,
    statistics: bool = True,
    shard: tuple[int, int] | None = None,
    parts: Sequence[Mapping[str, Any]] | None = None,
    names: Mapping[int, str] | None = None,
    dicom_seg: bool = False,
    fast: bool = False,
) -> list[Path]:
    """``voxpipe infer`` for an nnU-Net model folder: one ``<case>.nii.gz`` per input on its grid.

    With ``parts`` (a multi-part model's manifest entries: ``folder`` relative to ``folder``, and
    ``labels``, part label → merged label), every part runs on each case and the maps are merged
    (:func:`voxpipe.pipelines.inference.catalogue.merge_parts`); ``names`` then name the merged labels.

    A DICOM series folder is read with voxpipe's series loader (slice order, spacing and orientation
    checked) and handed to the model as SimpleITK would read the same volume written as NIfTI; with
    ``dicom_seg``, ``<case>.dcm`` is written beside the label map: a DICOM-SEG referencing the series,
    one coded segment per structure found.

    The folds' weights are loaded once; the cases run through the inference engine's case loop
    (:func:`voxpipe.pipelines.inference.engine.run_cases`: the next case is read while this one
    runs, each case succeeds or fails on its own). ``tta`` is nnU-Net's mirroring over the
    checkpoint's allowed axes; ``fast`` is :class:`NnUNetPredictor`'s fast path. Writes
    ``statistics.csv``/``.json`` with ``dataset.json``'s names.

    Raises:
        InputError: bad inputs (before anything runs). BundleError: the folder does not load.
        InferenceFailed: some cases failed; every other case was written first.
    """
    from voxpipe.pipelines.inference.catalogue import merge_parts
    from voxpipe.pipelines.inference.engine import run_cases
    from voxpipe.pipelines.inference.infer import (
        InferenceFailed,
        _complete,
        case_name,
        check_shard,
        collect_inputs,
    )
    from voxpipe.transforms.io import read_geometry, remove_stale_temporaries

    root = Path(folder)
    entries = list(parts) if parts else [{"folder": ".", "labels": None}]
    models = [NnUNetFolder(root / e["folder"], folds=folds, checkpoint=checkpoint) for e in entries]
    model = models[0]
    images = collect_inputs(inputs, channels=len(model.channels))
    if shard is not None:
        k, n = check_shard(shard)
        images = images[k - 1 :: n]
    if dicom_seg:
        files = [str(paths_of(p)[0]) for p in images if not (isinstance(p, Path) and p.is_dir())]
        if files:
            raise InputError(
                f"--dicom-seg: expected DICOM series folders, found image files {files}",
                hint="a DICOM-SEG references the source slices; leave out --dicom-seg for these inputs",
            )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    predictors = [
        NnUNetPredictor(m, step=step, mirroring=tta, fast=fast) for m in models
    ]  # every part's weights, once
    failures: dict[str, str] = {}
    reader = str(model.plans.get("image_reader_writer", "SimpleITKIO"))

    paths = paths_of
    scratch = Path(
        tempfile.mkdtemp(prefix=".voxpipe-series.", dir=out)
    )  # DICOM series as NIfTI, removed at the end

    def readable(case: Any) -> list[Path]:
        """The case's files as SimpleITK reads them: a DICOM series becomes one NIfTI of voxpipe's loading."""
        if isinstance(case, Path) and case.is_dir():
            from voxpipe.transforms.io import load_volume, save_nifti

            volume = load_volume(case)
            converted = scratch / f"{case_name(case)}_0000.nii.gz"
            save_nifti(np.asarray(volume.array), volume.affine, converted)
            return [converted]
        return paths_of(case)

    def output(case: Any) -> Path:  # nnU-Net's naming: the channel suffix (_0000) dropped
        return out / f"{re.sub(r'_[0-9]{4}$', '', case_name(case))}.nii.gz"

    def prepare(case: Any) -> tuple[Any, Case, list[Path], np.ndarray | None]:
        for path in paths(case):  # voxpipe's header checks: SimpleITK reads a truncated .nii.gz as zeros
            read_geometry(path)
        files = readable(case)
        item = read_case(files, reader=reader)
        # one model: its preprocessing runs here, in the prefetch thread, while the previous case runs
        data = predictors[0].preprocess(item) if len(predictors) == 1 else None
        return case, item, files, data

    def execute(prepared: tuple[Any, Case, list[Path], np.ndarray | None]) -> None:
        case, item, files, data = prepared
        maps = []
        for index, predictor in enumerate(predictors):
            part = item if index == 0 else read_case(files, reader=reader)  # each part: its own copy
            ready = data if data is not None else predictor.preprocess(part)
            maps.append(predictor.export(predictor.stream(ready), part))
        segmentation = maps[0] if parts is None else merge_parts(maps, entries)
        written = predictors[0].write(segmentation, item, output(case))
        if dicom_seg:
            from voxpipe.transforms.dicom_seg import write_dicom_seg
            from voxpipe.transforms.io import load_volume

            label = load_volume(written, label=True)  # on the grid voxpipe loads the series with
            present = {int(v) for v in np.unique(label.array) if v}
            write_dicom_seg(
                label.array,
                case,
                written.with_name(f"{case_name(case)}.dcm"),
                names={v: label_names[v] for v in present},
            )
        for file in files:
            if file.parent == scratch:
                file.unlink()

    label_names = {int(k): v for k, v in (names or model.labels.names).items() if int(k)}
    pending = [p for p in images if not (resume and _complete(output(p)))]
    try:
        for result in run_cases(pending, prepare=prepare, execute=execute):
            if not result.ok:
                failures[str(paths(result.case)[0])] = result.reason
                logger.error("%s: inference failed (%s)", result.case, result.reason)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written = [p for p in images if str(paths(p)[0]) not in failures]
    outputs = [output(p) for p in written]
    if statistics and outputs:
        from voxpipe.pipelines.inference.stats import case_statistics, write_statistics
        from voxpipe.transforms.io import load_volume

        per_case = {}
        for image, written_path in zip(written, outputs, strict=True):
            label = load_volume(written_path)
            source = load_volume(paths(image)[0])
            intensity = source.array if source.array.shape == label.array.shape else None
            per_case[output(image).name[: -len(".nii.gz")]] = case_statistics(
                label.array, label.affine, names=label_names, image=intensity
            )
        write_statistics(per_case, out)
    if failures:
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in failures.items())
        raise InferenceFailed(
            f"{len(failures)} of {len(images)} cases failed (the other {len(outputs)} were written to {str(out)!r}):\n  {listing}",
            outputs=outputs,
            failures=failures,
        )
    return outputs


def run_nnunet_bundle(
    *,
    bundle_root: str | os.PathLike[str],
    datalist: Sequence[Any],
    output_dir: str | os.PathLike[str],
    folds: Sequence[int | str] | None = None,
    tta: bool = False,
    step: float = 0.5,
) -> list[str]:
    """The ``run`` of a bundle written by :func:`import_nnunet`: the nnU-Net folder under
    ``<bundle_root>/models/<Trainer>__<Plans>__<configuration>`` on the datalist's images (entries ``{"image": path}`` or paths),
    as ``voxpipe infer`` runs it. MONAI's runner calls this with plain config values."""
    images = [str(e["image"]) if isinstance(e, Mapping) else str(e) for e in datalist]
    found = sorted(p.parent for p in (Path(bundle_root) / "models").glob("*__*__*/plans.json"))
    if len(found) != 1:
        raise BundleError(
            f"{str(Path(bundle_root) / 'models')!r}: expected one nnU-Net model folder "
            f"(<Trainer>__<Plans>__<configuration>), found {len(found)}"
        )
    outputs = infer_with_nnunet(found[0], images, output_dir=output_dir, folds=folds, tta=tta, step=step)
    return [str(p) for p in outputs]


def import_nnunet(folder: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write a MONAI bundle that runs an nnU-Net model folder: ``configs/inference.json`` (its ``run``
    is :func:`run_nnunet_bundle`), ``configs/metadata.json`` (labels, channels, licence unknown),
    and the folder's plans, dataset and checkpoints under ``models/<the folder's name>/``. ``python -m monai.bundle
    run --config_file configs/inference.json --meta_file configs/metadata.json --bundle_root B
    --datalist "['ct.nii.gz']" --output_dir OUT`` then writes what ``voxpipe infer FOLDER`` writes.

    Raises:
        BundleError: the folder does not load; OutputError: ``output`` exists and is not empty.
    """
    import json
    import shutil

    from voxpipe.errors import OutputError
    from voxpipe.transforms.io import write_text_atomic

    model = NnUNetFolder(folder)
    target = Path(output)
    if target.exists() and any(target.iterdir()):
        raise OutputError(
            f"{str(target)!r}: expected a new or empty folder for the bundle, found files in it"
        )
    copied = target / "models" / model.path.name  # the name says the configuration
    copied.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model.path / name, copied / name)
    for checkpoint in model.checkpoints:
        (copied / checkpoint.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(checkpoint, copied / checkpoint.parent.name / checkpoint.name)
    inference = {
        "bundle_root": ".",
        "output_dir": "predictions",
        "datalist": [],
        "folds": None,
        "tta": False,
        "step": 0.5,
        "run": {
            "_target_": "voxpipe.pipelines.inference.nnunet_predict.run_nnunet_bundle",
            "bundle_root": "@bundle_root",
            "datalist": "@datalist",
            "output_dir": "@output_dir",
            "folds": "@folds",
            "tta": "@tta",
            "step": "@step",
        },
    }
    channel_def = {str(k): v for k, v in model.labels.names.items()}
    metadata = {
        "version": "0.1.0",
        "monai_version": "*",
        "pytorch_version": "*",
        "numpy_version": "*",
        "name": f"{model.path.name} (nnU-Net v2)",
        "task": f"nnU-Net {model.configuration_name} segmentation, imported by voxpipe bundle import-nnunet",
        "description": f"Runs the nnU-Net model folder {model.path.name} ({len(model.checkpoints)} fold(s)) as "
        "nnU-Net 2.8's predictor does (voxpipe.pipelines.inference.nnunet_predict).",
        "authors": "the model's authors (nnU-Net folder); bundle written by voxpipe",
        "copyright": "see the model's own licence",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if "CT" in model.channels else "magnitude",
                    "num_channels": len(model.channels),
                    "spatial_shape": [int(v) for v in model.configuration.get("patch_size", [])],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): c for i, c in enumerate(model.channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": model.labels.heads,
                    "spatial_shape": [int(v) for v in model.configuration.get("patch_size", [])],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
    }
    (target / "configs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "configs" / "inference.json", json.dumps(inference, indent=2) + "\n")
    write_text_atomic(target / "configs" / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    return target


__all__ = [
    "Case",
    "NnUNetPredictor",
    "import_nnunet",
    "infer_with_nnunet",
    "is_nnunet_folder",
    "read_case",
    "resample",
    "run_nnunet_bundle",
]
