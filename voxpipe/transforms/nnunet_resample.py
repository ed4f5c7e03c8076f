"""nnU-Net 2.8's resampling of images and probabilities, whole or a slab of rows at a time.

nnU-Net resamples a case's every channel at once (``resample_data_or_seg_to_shape``): the image to
the model's spacing (third order) and, after the network, the logits back to the cropped input's
shape (first order). For a 117-class TotalSegmentator model on a 512 × 512 × 600 CT those logits are
117 × 157 M voxels: 37 GB in float16 before argmax. :class:`RowResampler` computes the same values
for output rows ``[a, b)`` along the first axis from only the input rows those rows read, so a label
map is written slab by slab while the network's logits are still being stitched. Where it cannot
(plans resampling with third-order splines along Z, an axis resampled apart from Z, or SciPy's zoom
kernel missing), the grid is resampled whole and one warning names the reason and the memory held.

Why our own: neither MONAI nor SciPy resamples part of an array with the coordinates of the whole,
and nnU-Net's code cannot be installed beside voxpipe (it pulls torchvision). The rule (``skimage``'s
``resize``: the grid of voxel areas, edges repeated, clipped to the input's range; anisotropic data
in-plane first, then along the coarse axis) is checked against nnunetv2 itself by the tests, and the
slabs against the whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from voxpipe.transforms import spline_rows
from voxpipe.transforms.rows import RowStream

ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD
SPLINE_PAD = 12  # edge voxels SciPy's zoom pads before its spline filter (mode="nearest")
NEAREST = 0  # scipy.ndimage's code for mode="nearest"

logger = logging.getLogger(__name__)


def resize(
    image: np.ndarray,
    shape: Sequence[int],
    order: int,
    *,
    dtype: Any = np.float64,
    coefficients: Any = np.float64,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode="edge", anti_aliasing=False)``, which nnU-Net
    calls: ``scipy.ndimage.zoom`` on the grid of voxel areas, edges repeated, clipped to the input's range.

    ``dtype``: the result's (float32: SciPy's float64 values rounded once, as nnU-Net's cast does).
    ``transform``: an elementwise function (nnU-Net's CT normalisation) applied first: ``resize(
    transform(image))``, where it can without a transformed copy of the image.

    3D images of orders 2 and 3 (nnU-Net's images) go slab by slab (:mod:`voxpipe.transforms.spline_rows`):
    SciPy's values bit for bit, holding a few rows of the spline coefficients (a 512 × 512 × 600 CT:
    ~0.2 GB instead of 1.4 GB). Other orders and 2D planes filter the whole padded image in one array
    of ``coefficients`` precision: float64 is SciPy's own (the same values in less memory than
    ``zoom`` needs: it pads a float32 copy and filters a float64 copy of that); float32 halves it, at
    values within ~1e-6 relative, for routes that do not promise nnU-Net's labels.
    """
    image = np.asarray(image)
    shape = [int(s) for s in shape]
    if (
        order in spline_rows.POLES
        and image.ndim == 3
        and shape != list(image.shape)
        and spline_rows.available(order)
    ):
        return spline_rows.zoom(image, shape, order, dtype=dtype, transform=transform)
    if transform is not None:
        image = np.asarray(transform(image))
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float64)
    # a float32 image is not copied to float64 first: SciPy reads it as double (exactly) and computes
    # in double, so the values are the same, and a CT's float64 copy (1.2 GB at 512 × 512 × 600) is saved
    if shape == list(image.shape):  # zoom returns the image itself at factor 1
        return image.astype(dtype)
    kernel = _zoom_shift() if order >= 2 and image.ndim > 0 else None
    if kernel is None:
        factors = [o / n for o, n in zip(image.shape, shape, strict=True)]
        out = ndimage.zoom(
            image, [1 / f for f in factors], output=dtype, order=order, mode="nearest", grid_mode=True
        )
    else:  # zoom's own steps, without its padded float32 copy
        filtered = spline_coefficients(image, order, coefficients)
        zoom = np.ascontiguousarray([i / o if o else 1.0 for i, o in zip(image.shape, shape, strict=True)])
        out = np.empty(shape, dtype=dtype)
        kernel(filtered, zoom, None, out, order, NEAREST, 0.0, SPLINE_PAD, True)
        del filtered
    if order > 0:  # skimage clips to the input's range (splines overshoot); the bounds are exact in
        np.clip(out, image.min(), image.max(), out=out)  # float32, so clip and the cast commute
    return out


def spline_coefficients(image: np.ndarray, order: int, dtype: Any = np.float64) -> np.ndarray:
    """What ``ndimage.zoom(mode="nearest")`` filters: ``image`` padded by :data:`SPLINE_PAD` repeated
    edge voxels (``np.pad(mode="edge")``), then ``ndimage.spline_filter`` axis by axis, in place in one
    ``dtype`` array (SciPy pads a copy in the image's dtype and filters it into a new float64 array;
    each line is read as double either way, so float64 gives SciPy's values bit for bit)."""
    pad = SPLINE_PAD
    filtered = np.empty([s + 2 * pad for s in image.shape], dtype=dtype)
    filtered[tuple(slice(pad, pad + s) for s in image.shape)] = image
    for axis, size in enumerate(image.shape):  # edges repeated, axis by axis as np.pad does
        before, after, first, last = ([slice(None)] * image.ndim for _ in range(4))
        before[axis], after[axis] = slice(0, pad), slice(pad + size, None)
        first[axis], last[axis] = slice(pad, pad + 1), slice(pad + size - 1, pad + size)
        filtered[tuple(before)] = filtered[tuple(first)]
        filtered[tuple(after)] = filtered[tuple(last)]
    return ndimage.spline_filter(filtered, order, output=filtered, mode="nearest")


def separate_axis(current: Sequence[float], new: Sequence[float], force: bool | None) -> int | None:
    """The axis nnU-Net resamples on its own (the one coarse axis of anisotropic data), or None."""

    def lowres(spacing: Sequence[float]) -> np.ndarray:
        return np.where(max(spacing) / np.asarray(spacing) == 1)[0]

    if force is not None:
        axes = lowres(current) if force else None
    elif np.max(current) / np.min(current) > ANISOTROPY:
        axes = lowres(current)
    elif np.max(new) / np.min(new) > ANISOTROPY:
        axes = lowres(new)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


def resample(
    data: np.ndarray,
    shape: Sequence[int],
    current: Sequence[float],
    new: Sequence[float],
    *,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    dtype: Any = None,
    coefficients: Any = np.float64,
    transforms: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None,
) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg_to_shape`` for images and probabilities (not label maps):
    ``data`` (C, *spatial) to ``shape``, whole. ``coefficients``: as :func:`resize` takes them.
    ``transforms``: per channel, an elementwise function applied first (as :func:`resize` applies it)."""
    shape = [int(s) for s in shape]
    if dtype is None and transforms is not None:  # what the transforms give (a voxel of each channel)
        dtype = np.result_type(
            *(
                np.asarray(t(channel[(slice(0, 1),) * channel.ndim]))
                for t, channel in zip(transforms, data, strict=True)
            )
        )
    if list(data.shape[1:]) == shape:
        if transforms is None:
            return np.ascontiguousarray(data, dtype=dtype or data.dtype)
        same = np.empty(data.shape, dtype=dtype)
        for c, t in enumerate(transforms):  # a slab at a time: no transformed copy beside the result
            for a in range(0, max(shape[0], 1), 16):
                same[c, a : a + 16] = t(data[c, a : a + 16])
        return same
    out = np.zeros((data.shape[0], *shape), dtype=dtype or data.dtype)
    axis = separate_axis(current, new, force_separate_z)
    wide = out.dtype if out.dtype in (np.float32, np.float64) else np.float64  # SciPy writes these
    for c in range(data.shape[0]):
        channel, transform = data[c], transforms[c] if transforms is not None else None
        if axis is None:
            out[c] = resize(channel, shape, order, dtype=wide, coefficients=coefficients, transform=transform)
        else:
            if transform is not None:
                channel = np.asarray(transform(channel))
            out[c] = _separate(channel, shape, axis, order, order_z, rows=(0, shape[0]))
    return out


def resize_segmentation(segmentation: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """batchgenerators' ``resize_segmentation``, which nnU-Net calls for label maps: order 0 resizes
    the values; otherwise each label's mask is resized and painted where it reaches 0.5 (labels in
    ascending order, later ones over earlier ones)."""
    if order == 0:
        return resize(segmentation.astype(np.float64), shape, 0).astype(segmentation.dtype)
    out = np.zeros([int(s) for s in shape], dtype=segmentation.dtype)
    for value in np.unique(segmentation):
        out[resize((segmentation == value).astype(np.float64), shape, order) >= 0.5] = value
    return out


def resample_segmentation(
    segmentation: np.ndarray,
    shape: Sequence[int],
    current: Sequence[float],
    new: Sequence[float],
    *,
    order: int = 1,
    order_z: int = 0,
    force_separate_z: bool | None = None,
) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg_to_shape(is_seg=True)``: a (1, *spatial) label map to ``shape``
    (a cascade's previous-stage prediction, resampled as nnU-Net resamples it)."""
    shape = [int(s) for s in shape]
    if list(segmentation.shape[1:]) == shape:
        return segmentation
    seg = segmentation[0].astype(np.float64)
    axis = separate_axis(current, new, force_separate_z)
    out = np.zeros((1, *shape), dtype=segmentation.dtype)
    if axis is None:
        out[0] = resize_segmentation(seg, shape, order)
        return out
    planes = _in_plane(seg, shape, axis, lambda plane, size: resize_segmentation(plane, size, order))
    if seg.shape[axis] == shape[axis]:
        out[0] = planes
        return out
    coords = _coordinates(planes.shape, shape, (0, shape[0]))
    if order_z == 0:
        out[0] = ndimage.map_coordinates(planes, coords, order=0, mode="nearest")
        return out
    for value in np.unique(planes):
        moved = ndimage.map_coordinates(
            (planes == value).astype(float), coords, order=order_z, mode="nearest"
        )
        out[0][np.round(moved) > 0.5] = value
    return out


def _in_plane(volume: np.ndarray, shape: Sequence[int], axis: int, resize_plane: Any) -> np.ndarray:
    """Every plane of ``volume`` across ``axis`` resized to ``shape`` without ``axis`` (float64)."""
    plane_shape = [s for i, s in enumerate(shape) if i != axis]
    partial = list(shape)
    partial[axis] = volume.shape[axis]
    planes = np.zeros(partial)
    for k in range(volume.shape[axis]):
        index: list[Any] = [slice(None)] * 3
        index[axis] = k
        planes[tuple(index)] = resize_plane(volume[tuple(index)], plane_shape)
    return planes


def _coordinates(size: Sequence[int], shape: Sequence[int], rows: tuple[int, int]) -> np.ndarray:
    """nnU-Net's ``map_coordinates`` grid from ``size`` to ``shape`` (voxel centres), output rows ``rows``."""
    grid = np.mgrid[rows[0] : rows[1], : shape[1], : shape[2]].astype(float)
    scale = [p / s for p, s in zip(size, shape, strict=True)]
    return np.array([f * (g + 0.5) - 0.5 for f, g in zip(scale, grid, strict=True)])


def _separate(
    channel: np.ndarray,
    shape: Sequence[int],
    axis: int,
    order: int,
    order_z: int,
    *,
    rows: tuple[int, int],
    first: int = 0,
    total: int | None = None,
) -> np.ndarray:
    """Output rows ``rows`` (of ``shape``) of nnU-Net's separate-axis resampling: each plane across
    ``axis`` resized with ``order``, then ``axis`` itself with ``order_z`` (``map_coordinates``).

    ``channel`` is the whole input, or for ``axis`` 0 its rows ``[first, first + len)`` of ``total``."""
    a, b = rows
    total = channel.shape[0] if total is None else total
    planes = _in_plane(channel, shape, axis, lambda plane, size: resize(plane, size, order))
    in_rows = total if axis == 0 else channel.shape[axis]
    if in_rows == shape[axis]:
        return planes[a - first : b - first]
    size = list(planes.shape)
    size[0] = total if axis == 0 else size[0]
    coords = _coordinates(size, shape, rows)
    coords[0] -= first  # an integer: the coordinates stay exactly those of the whole
    return ndimage.map_coordinates(planes, coords, order=order_z, mode="nearest")


def _zoom_shift() -> Any:
    """SciPy's zoom kernel (``scipy.ndimage._nd_image.zoom_shift``), if it computes exactly what
    ``ndimage.zoom`` does for a range of output rows on this SciPy, else None (checked once)."""
    global _ZOOM_SHIFT
    if _ZOOM_SHIFT is not None:
        return _ZOOM_SHIFT or None
    try:
        from scipy.ndimage import _nd_image

        kernel = _nd_image.zoom_shift
        rng = np.random.default_rng(0)
        probe = rng.normal(size=(7, 5, 6))
        whole = ndimage.zoom(probe, (11 / 7, 3 / 5, 9 / 6), order=1, mode="nearest", grid_mode=True)
        part = np.zeros((4, 3, 9))
        kernel(probe, np.array([7 / 11, 5 / 3, 6 / 9]), np.array([5.0, 0.0, 0.0]), part, 1, 0, 0.0, 0, True)
        _ZOOM_SHIFT = kernel if np.array_equal(part, whole[5:9]) else False
    except (ImportError, AttributeError, TypeError, RuntimeError):
        _ZOOM_SHIFT = False
    return _ZOOM_SHIFT or None


_ZOOM_SHIFT: Any = None


class RowResampler:
    """nnU-Net's resampling of (C, Z, Y, X) probabilities to ``shape``, computed for output rows
    ``[a, b)`` along Z from input rows ``[lo, hi)`` only (:meth:`needs` says which).

    Bit for bit what :func:`resample` computes on the whole array, where every interpolation that
    touches Z is of order 0 or 1: third-order splines prefilter along the whole axis, so such plans
    are resampled whole (:attr:`by_rows` is then False). The 3D case runs SciPy's own zoom kernel for
    the output rows with the whole array's coordinates (``ndimage.zoom`` offers only whole outputs),
    reading the input rows from a full-height scratch array of which only those rows are filled;
    where that kernel is missing or computes differently on the installed SciPy, whole again.
    Values are computed in float64 and returned as float16, as nnU-Net keeps its logits.

    Args:
        in_shape: the input's spatial shape (Z, Y, X); shape: the output's.
        current, new: the spacings (mm) of input and output, in the same axis order.
        order, order_z, force_separate_z: the plans' ``resampling_fn_probabilities_kwargs``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        shape: Sequence[int],
        current: Sequence[float],
        new: Sequence[float],
        *,
        order: int = 1,
        order_z: int = 0,
        force_separate_z: bool | None = None,
    ) -> None:
        self.in_shape = [int(s) for s in in_shape]
        self.shape = [int(s) for s in shape]
        self.order, self.order_z = int(order), int(order_z)
        self.same = self.in_shape == self.shape
        self.axis = None if self.same else separate_axis(current, new, force_separate_z)
        #: why the grid is resampled whole (None: by rows)
        self.whole_because: str | None = None
        if self.same:
            pass
        elif self.axis is None and self.order > 1:
            self.whole_because = (
                f"the plans resample with order {self.order} (a spline prefiltered along all of Z)"
            )
        elif self.axis is None and _zoom_shift() is None:
            self.whole_because = (
                "SciPy's zoom kernel (scipy.ndimage._nd_image.zoom_shift) is missing or differs here"
            )
        elif self.axis == 0 and self.order_z > 1:
            self.whole_because = f"the plans resample Z with order {self.order_z} (a spline along all of Z)"
        elif self.axis not in (None, 0):
            self.whole_because = f"the plans resample axis {self.axis} apart, so each plane spans all of Z"
        self.by_rows = self.whole_because is None
        self.scale = self.in_shape[0] / self.shape[0]
        self._scratch: np.ndarray | None = None

    def needs(self, a: int, b: int) -> tuple[int, int]:
        """The input rows ``[lo, hi)`` that output rows ``[a, b)`` read."""
        if not self.by_rows:
            return 0, self.in_shape[0]
        if self.same or (self.in_shape[0] == self.shape[0] and self.axis == 0):
            return a, b
        low = (a + 0.5) * self.scale - 0.5
        high = (b - 1 + 0.5) * self.scale - 0.5
        lo = max(0, math.floor(low) - 1)
        hi = min(self.in_shape[0], math.floor(high) + 3)
        return lo, hi

    def rows(self, channel: np.ndarray, first: int, a: int, b: int) -> np.ndarray:
        """Output rows ``[a, b)`` (float16, (b − a, Y', X')) of one channel whose input rows
        ``[first, first + len(channel))`` are given (they must cover :meth:`needs` ``(a, b)``)."""
        if self.same:
            return np.asarray(channel[a - first : b - first], dtype=np.float16)
        if not self.by_rows:
            assert first == 0 and len(channel) == self.in_shape[0], "resampled whole: the whole input"
        if self.axis is None and not self.by_rows:
            return resize(channel, self.shape, self.order)[a:b].astype(np.float16)
        if self.axis is None:
            return self._zoom_rows(np.asarray(channel), first, a, b).astype(np.float16)
        out = _separate(
            np.asarray(channel, dtype=np.float64),
            self.shape,
            self.axis,
            self.order,
            self.order_z,
            rows=(a, b),
            first=first,
            total=self.in_shape[0] if self.axis == 0 else None,
        )
        return out.astype(np.float16)

    def rows_on_device(self, channel: torch.Tensor, first: int, a: int, b: int) -> torch.Tensor:
        """:meth:`rows` in torch, on ``channel``'s device: the same float16 values, bit for bit, where
        the rows are resampled by rows (:mod:`voxpipe.transforms.torch_resample`'s exact kernels);
        a plan resampled whole (third order along Z) goes through SciPy on the CPU."""
        from voxpipe.transforms import torch_resample

        if self.same:
            return torch_resample.to_half(channel[a - first : b - first])
        if not self.by_rows:
            wide = np.asarray(channel.cpu().numpy(), dtype=np.float64)
            return torch.from_numpy(self.rows(wide, first, a, b)).to(channel.device)
        if self.axis is None:
            out = torch_resample.zoom_exact(
                channel, self.in_shape, self.shape, (a, b), first=first, order=self.order
            )
            if self.order > 0:  # skimage's clip, as :meth:`rows`
                wide = channel.to(torch.float64)
                out = out.clamp(wide.min(), wide.max())
            return torch_resample.to_half(out)
        out = torch_resample.separate_rows_exact(
            channel,
            self.in_shape[0],
            self.shape,
            (a, b),
            first=first,
            order=self.order,
            order_z=self.order_z,
        )
        return torch_resample.to_half(out)

    def _zoom_rows(self, channel: np.ndarray, first: int, a: int, b: int) -> np.ndarray:
        if self._scratch is None:  # pages of rows never filled are never touched
            self._scratch = np.empty(self.in_shape, dtype=np.float64)
        rows = slice(first, first + len(channel))
        self._scratch[rows] = channel
        zoom = np.ascontiguousarray(
            [i / o if o else 1.0 for i, o in zip(self.in_shape, self.shape, strict=True)], dtype=np.float64
        )
        out = np.zeros((b - a, *self.shape[1:]))
        _zoom_shift()(
            self._scratch, zoom, np.array([float(a), 0.0, 0.0]), out, self.order, NEAREST, 0.0, 0, True
        )
        if self.order > 0:  # skimage clips to the input's range; the rows read are within these
            np.clip(out, channel.min(), channel.max(), out=out)
        return out


def labels_by_rows(
    resampler: RowResampler,
    blocks: Any,
    *,
    heads: int,
    regions: Sequence[int] | None,
    dtype: Any,
    slab: int = 16,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """The label map of shape ``resampler.shape`` from a stream of ``(first_row, logits)`` blocks
    ((heads, rows, Y, X) float16, consecutive along Z), as nnU-Net's export computes it: argmax of
    the resampled logits (first maximum on ties), or for region-based models each region's sigmoid
    > 0.5 painted in ``regions`` order. Output rows are computed ``slab`` at a time, as soon as the
    input rows they read have arrived (:class:`voxpipe.transforms.rows.RowStream`, the export the
    MONAI path uses too); input rows no longer needed are dropped, so memory holds a few rows of
    logits, not the whole grid. With ``device``, the rows stay there and are resampled and argmaxed
    there (:meth:`RowResampler.rows_on_device`: the same values, bit for bit); the labels come back
    to the CPU slab by slab."""
    shape = resampler.shape
    slab = slab if resampler.by_rows else shape[0]
    if not resampler.by_rows:
        held = 2 * heads * math.prod(resampler.in_shape) * 2 + math.prod(shape) * 8
        logger.warning(
            "export: resampled whole, not row by row, because %s: about %.2f GiB held "
            "(the %d-channel logits twice in float16 and the resampled channel in float64)",
            resampler.whole_because,
            held / 2**30,
            heads,
        )
    labels = np.zeros(shape, dtype=dtype)
    slabs = [
        (a, min(a + slab, shape[0]), *resampler.needs(a, min(a + slab, shape[0])))
        for a in range(0, shape[0], slab)
    ]

    def compute(source_rows: torch.Tensor, lo: int, a: int, b: int) -> None:
        found = _label_rows(
            resampler, source_rows, lo, a, b, heads=heads, regions=regions, on_device=device is not None
        )
        labels[a:b] = found.cpu().numpy()

    stream = RowStream(in_rows=resampler.in_shape[0], slabs=slabs, compute=compute, device=device)
    for start, block in blocks:
        block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))
        try:
            stream.add(start, block)
        except ValueError as error:
            raise RuntimeError(str(error)) from None
    if not stream.complete:
        raise RuntimeError(f"the logits covered output rows up to {stream.done_rows} of {shape[0]}")
    return labels


def _label_rows(
    resampler: RowResampler,
    source_rows: torch.Tensor,
    lo: int,
    a: int,
    b: int,
    *,
    heads: int,
    regions: Sequence[int] | None,
    on_device: bool = False,
) -> torch.Tensor:
    """Labels of output rows ``[a, b)`` from the input rows from ``lo``: each head resampled
    (:meth:`RowResampler.rows` with SciPy, or :meth:`RowResampler.rows_on_device` in torch on the rows'
    device: the same float16 values), then nnU-Net's argmax or regions on those values."""
    if on_device:

        def resampled(c: int) -> torch.Tensor:
            return resampler.rows_on_device(source_rows[c], lo, a, b).float()
    else:
        source = source_rows.numpy()

        def resampled(c: int) -> torch.Tensor:
            return torch.from_numpy(resampler.rows(source[c], lo, a, b).astype(np.float32))

    best: torch.Tensor | None = None
    index = torch.zeros((b - a, *resampler.shape[1:]), dtype=torch.int64, device=source_rows.device)
    for c in range(heads):
        # float16 is where nnU-Net rounds; compared in float32 (exact for float16 values, and fast)
        values = resampled(c)
        if regions is not None:
            if c < len(regions):
                index[torch.sigmoid(values) > 0.5] = int(regions[c])
            continue
        if best is None:
            best = values
            continue
        better = values > best
        best = torch.where(better, values, best)
        index[better] = c
    return index


__all__ = [
    "ANISOTROPY",
    "RowResampler",
    "labels_by_rows",
    "resample",
    "resample_segmentation",
    "resize",
    "resize_segmentation",
    "separate_axis",
]
