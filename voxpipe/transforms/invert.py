"""Class probabilities on the network grid → a label map on the source image's grid, slab by slab.

MONAI's ``Invertd`` brings a prediction back by replaying the inverse of every spatial transform on
all class channels at once: for a 512 × 512 × 600 CT with 3 classes that is 1.9 GB of float32
probabilities on the source grid, a float32 sampling grid of the same size, and a float32 argmax
input, several GB at the peak, to produce a uint8 label map of 157 MB. :class:`ResampleArgmaxd`
gives the same labels (trilinear interpolation of the probabilities between voxel centres, border
values outside the network grid, then argmax, as ``Invertd(nearest_interp=False)`` +
``AsDiscreted(argmax=True)``) without that peak: it maps source voxel centres into the network grid
through the two affines MONAI tracks (the source's ``original_affine`` and the preprocessed image's
``affine``, which already account for orientation, spacing and crops) and interpolates one slab of
source slices at a time, keeping only the uint8 labels (and, if asked, float16 probabilities).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from voxpipe.errors import InputError
from voxpipe.transforms.postprocess import foreground_box

logger = logging.getLogger(__name__)


def _matrix(affine: Any) -> np.ndarray:
    return np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)


def resample_argmax(
    probabilities: torch.Tensor,
    *,
    source_affine: np.ndarray,
    network_affine: np.ndarray,
    source_shape: Sequence[int],
    slab: int = 16,
    keep_probabilities: bool = False,
    softmax: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Argmax of ``probabilities`` interpolated at the voxel centres of the source grid.

    Args:
        probabilities: ``(C, X, Y, Z)`` class probabilities (or logits) on the network grid; float16
            is read as it is (each slab is computed in float32), so a many-class prediction is not
            copied whole.
        source_affine: 4 × 4 voxel → world (mm) of the source grid.
        network_affine: 4 × 4 voxel → world (mm) of the network grid, same world frame.
        source_shape: ``(X, Y, Z)`` of the source grid.
        slab: source slices (last axis) interpolated at once; memory grows with it.
        keep_probabilities: also return the interpolated probabilities as float16 ``(C, X, Y, Z)``.
        softmax: ``probabilities`` are logits: the softmax over classes is taken on each slab's block
            of the network grid before interpolating (the same values as a softmax of the whole
            volume first, without a second C × grid tensor).

    Returns:
        ``(labels, probabilities_or_None)``: uint8 ``(X, Y, Z)`` labels (int16 above 255 classes).
    """
    if probabilities.ndim != 4:
        raise InputError(
            f"resample_argmax: expected probabilities (C, X, Y, Z), found shape {tuple(probabilities.shape)}"
        )
    classes = probabilities.shape[0]
    mapping = np.linalg.inv(network_affine) @ source_affine  # source voxel → network voxel
    sx, sy, sz = (int(v) for v in source_shape)
    size = torch.tensor(probabilities.shape[1:], dtype=torch.float64)
    scale = 2.0 / torch.clamp(size - 1.0, min=1.0)  # align_corners=True: voxel index → [-1, 1]
    matrix = torch.from_numpy(mapping[:3, :3]) * scale[:, None]
    offset = torch.from_numpy(mapping[:3, 3]) * scale - 1.0
    # grid_sample reads (N, C, D, H, W) with grid (x→W, y→H, z→D): our X, Y, Z are D, H, W.
    matrix, offset = matrix.flip(0).float(), offset.flip(0).float()
    volume = probabilities.detach().cpu()
    volume = (volume if volume.dtype in (torch.float16, torch.bfloat16) else volume.float())[None]
    slab = (
        max(1, int(slab) * 4 // max(classes, 4)) if classes > 4 else int(slab)
    )  # a slab's block: ~4 classes' worth
    label_dtype = torch.uint8 if classes <= 256 else torch.int16
    labels = torch.zeros((sx, sy, sz), dtype=label_dtype)
    kept = torch.empty((classes, sx, sy, sz), dtype=torch.float16) if keep_probabilities else None
    region = (
        [(0, sx), (0, sy), (0, sz)]
        if keep_probabilities
        else _changing_region(volume[0], mapping, (sx, sy, sz))
    )
    if region is None:
        return labels, kept  # class 0 wins everywhere on the network grid, so everywhere on the source grid
    (x0, x1), (y0, y1), (z0, z1) = region
    linear = mapping[:3, :3]
    if np.allclose(
        linear, np.diag(np.diag(linear)), atol=1e-9
    ):  # axis-aligned grids (flips included): separable
        _separable(volume[0], mapping, region, slab, labels, kept, label_dtype, softmax)
        return labels, kept
    volume = volume.float()  # grid_sample: oblique grids, rare; the whole volume in float32
    if softmax:
        volume = torch.softmax(volume, dim=1)
    ii = torch.arange(x0, x1, dtype=torch.float32)[:, None, None, None] * matrix[:, 0]
    jj = torch.arange(y0, y1, dtype=torch.float32)[None, :, None, None] * matrix[:, 1]
    plane = ii + jj + offset  # (X, Y, 1, 3): the k-independent part
    for start in range(z0, z1, slab):
        stop = min(start + slab, z1)
        kk = torch.arange(start, stop, dtype=torch.float32)[None, None, :, None] * matrix[:, 2]
        grid = (plane + kk)[None]  # (1, X, Y, k, 3)
        values = torch.nn.functional.grid_sample(
            volume, grid, mode="bilinear", padding_mode="border", align_corners=True
        )[0]
        labels[x0:x1, y0:y1, start:stop] = channel_argmax(values, label_dtype)
        if kept is not None:
            kept[:, :, :, start:stop] = values.to(torch.float16)
    return labels, kept


def channel_argmax(values: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``values.argmax(0)`` for (C, ...) tensors with few channels, as C − 1 elementwise passes.

    ``torch.argmax`` over the leading dimension of a large CPU tensor reduces along a strided axis
    and was the slowest step of the whole inversion (5 of 6 s on a 512 × 512 × 150 CT). Ties go to
    the first channel, as with ``argmax``.
    """
    best = values[0].clone()
    index = torch.zeros(values.shape[1:], dtype=dtype)
    for channel in range(1, values.shape[0]):
        better = values[channel] > best
        index[better] = channel
        torch.maximum(best, values[channel], out=best)
    return index


def _axis(
    mapping: np.ndarray, axis: int, start: int, stop: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices ``start:stop`` along ``axis`` → network (lower index, upper index, weight), border-clamped."""
    coords = np.clip(mapping[axis, axis] * np.arange(start, stop) + mapping[axis, 3], 0.0, size - 1.0)
    lower = np.minimum(np.floor(coords).astype(np.int64), max(size - 2, 0))
    upper = np.minimum(lower + 1, size - 1)
    return (
        torch.from_numpy(lower),
        torch.from_numpy(upper),
        torch.from_numpy((coords - lower).astype(np.float32)),
    )


def _separable(
    volume: torch.Tensor,
    mapping: np.ndarray,
    region: list[tuple[int, int]],
    slab: int,
    labels: torch.Tensor,
    kept: torch.Tensor | None,
    label_dtype: torch.dtype,
    softmax: bool = False,
) -> None:
    """Trilinear interpolation as three 1D linear interpolations (z, then y, then x), for axis-aligned grids.

    The same values as ``grid_sample(bilinear, border, align_corners=True)`` (trilinear is the tensor
    product of 1D linear interpolations), at a fraction of the work: each output voxel costs three
    lerps of already-reduced data instead of eight gathers, and the network voxels outside the
    region are never touched.
    """
    (x0, x1), (y0, y1), (z0, z1) = region
    _, nx, ny, nz = volume.shape
    xl, xh, xw = _axis(mapping, 0, x0, x1, nx)
    yl, yh, yw = _axis(mapping, 1, y0, y1, ny)
    xa, xb = int(min(xl.min(), xh.min())), int(max(xl.max(), xh.max())) + 1  # network rows the region needs
    ya, yb = int(min(yl.min(), yh.min())), int(max(yl.max(), yh.max())) + 1
    part = volume[:, xa:xb, ya:yb]
    xl, xh, yl, yh = xl - xa, xh - xa, yl - ya, yh - ya
    for start in range(z0, z1, slab):
        stop = min(start + slab, z1)
        zl, zh, zw = _axis(mapping, 2, start, stop, nz)
        lower, upper = _block(part, zl, softmax), _block(part, zh, softmax)
        values = torch.lerp(lower, upper, zw)  # (C, X', Y', k)
        del lower, upper
        values = torch.lerp(values.index_select(2, yl), values.index_select(2, yh), yw[:, None])
        values = torch.lerp(values.index_select(1, xl), values.index_select(1, xh), xw[:, None, None])
        labels[x0:x1, y0:y1, start:stop] = channel_argmax(values, label_dtype)
        if kept is not None:
            kept[:, x0:x1, y0:y1, start:stop] = values.to(torch.float16)


def _block(part: torch.Tensor, index: torch.Tensor, softmax: bool) -> torch.Tensor:
    """``part``'s network slices ``index`` (last axis) in float32, softmaxed over classes when asked."""
    block = part.index_select(3, index).float()
    return torch.softmax(block, dim=0) if softmax else block


def _changing_region(
    volume: torch.Tensor, mapping: np.ndarray, source_shape: Sequence[int]
) -> list[tuple[int, int]] | None:
    """The source-grid box outside which the interpolated argmax is certainly class 0; None if it is 0 everywhere.

    Trilinear interpolation is a convex combination of the 8 network voxels around a point: where
    class 0 is the argmax at all of them, it is at least every other class there too, so the argmax
    stays 0 (ties go to the first class, as ``argmax`` breaks them). So only source voxels whose
    neighbourhood reaches a network voxel with another argmax need interpolating: the box of those
    network voxels, grown by one voxel (unbounded where it touches the grid's edge, since points
    beyond the edge take border values), mapped into the source grid.
    """
    box = foreground_box((channel_argmax(volume, torch.int16) != 0).numpy())  # grown by one voxel
    if box is None:
        return None
    corners = [
        (-1e6 if b.start == 0 else b.start, 1e6 if b.stop >= size else b.stop - 1)
        for b, size in zip(box, volume.shape[1:], strict=True)
    ]
    points = np.array([[x, y, z, 1.0] for x in corners[0] for y in corners[1] for z in corners[2]]).T
    source = (np.linalg.inv(mapping) @ points)[:3]  # network voxel → source voxel
    low = np.clip(np.floor(source.min(axis=1)) - 1, 0, np.array(source_shape)).astype(int)
    high = np.clip(np.ceil(source.max(axis=1)) + 2, 0, np.array(source_shape)).astype(int)
    if (high <= low).any():
        return None
    return [(int(a), int(b)) for a, b in zip(low, high, strict=True)]


class ResampleArgmaxd(MapTransform):
    """Replace ``data[key]`` (class probabilities on the network grid) by the argmax label map on the
    grid of the source image ``data[reference_key]`` (see module doc).

    The network grid's affine is ``data[reference_key].affine`` (the preprocessed image); the source
    grid is its ``meta["original_affine"]`` and ``meta["spatial_shape"]``, as MONAI's loaders record
    them. The result is a ``(1, X, Y, Z)`` uint8 ``MetaTensor`` with the source affine.

    Args:
        keys: prediction keys (after ``Activationsd(softmax=True)``, or logits with ``softmax``).
        reference_key: the preprocessed image key.
        softmax: the prediction holds logits; the softmax is taken slab by slab on the way (no second
            C × grid tensor: with many classes, ``Activationsd`` would double the peak memory).
        slab: source slices interpolated at once.
        probabilities_dir: if given, also write the interpolated probabilities (float16,
            ``(C, X, Y, Z)`` on the source grid, with the affine) as
            ``<probabilities_dir>/<case id>_probabilities.npz`` (atomically).
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        *,
        reference_key: str = "image",
        slab: int = 16,
        probabilities_dir: str | os.PathLike[str] | None = None,
        softmax: bool = False,
    ) -> None:
        super().__init__(keys)
        self.reference_key, self.slab, self.softmax = reference_key, int(slab), bool(softmax)
        self.probabilities_dir = Path(probabilities_dir) if probabilities_dir else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.reference_key]
        meta = getattr(reference, "meta", {})
        missing = [k for k in ("original_affine", "spatial_shape") if k not in meta]
        if missing or not hasattr(reference, "affine"):
            raise InputError(
                f"{self.reference_key!r}: expected a MetaTensor with the source grid in meta (original_affine, spatial_shape), "
                f"found {'no ' + ', '.join(missing) if missing else 'no affine'}",
                hint="load images with voxpipe.transforms.io.LoadVolumed or MONAI's LoadImaged",
            )
        source_affine = _matrix(meta["original_affine"])
        shape = [int(v) for v in np.asarray(meta["spatial_shape"]).ravel()]
        for key in self.key_iterator(d):
            pred = d[key]
            labels, probabilities = resample_argmax(
                torch.as_tensor(pred),
                source_affine=source_affine,
                network_affine=_matrix(reference.affine),
                source_shape=shape,
                slab=self.slab,
                keep_probabilities=self.probabilities_dir is not None,
                softmax=self.softmax,
            )
            if probabilities is not None:
                self._save_probabilities(
                    probabilities,
                    source_affine,
                    str(meta.get("filename_or_obj", "case")),
                    meta.get("case_id"),
                )
            d[key] = MetaTensor(
                labels[None],
                affine=torch.as_tensor(source_affine),
                meta={"filename_or_obj": meta.get("filename_or_obj")},
            )
        return d

    def _save_probabilities(
        self, probabilities: torch.Tensor, affine: np.ndarray, source: str, case: str | None
    ) -> None:
        from voxpipe.transforms.io import atomic_path, case_id

        assert self.probabilities_dir is not None
        path = self.probabilities_dir / f"{case or case_id(source)}_probabilities.npz"
        with atomic_path(path) as tmp:  # the temporary name ends in .npz, so numpy adds no suffix
            np.savez_compressed(tmp, probabilities=probabilities.numpy(), affine=affine)
        logger.info("wrote %s", path)
