"""The patient's body on a CT, without the table, air and cables: a mask of the voxels worth a network's time.

Why our own: MONAI has connected-component and hole-filling transforms for label maps, but no
body/table separation; this is the usual CT recipe (threshold, opening, largest component,
filled) written for speed on a whole volume (a coarse grid, separable max-pools, one labelling).
Used by the sliding windows of :mod:`voxpipe.pipelines.inference.sliding_window` to skip windows
without body.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from voxpipe.transforms.postprocess import foreground_box


def body_box(image: torch.Tensor, *, threshold: float, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Bounding box (spatial slices) of ``image > threshold`` over batch and channels, grown by ``margin``."""
    return box_of((image > threshold).any(dim=0).any(dim=0), margin)


def _max_filter(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of an (X, Y, Z) mask by a (2r+1)³ cube, as three separable 1D max-pools."""
    out = mask[None, None].float()
    for axis in range(3):
        kernel = [1, 1, 1]
        kernel[axis] = 2 * radius + 1
        padding = [k // 2 for k in kernel]
        out = torch.nn.functional.max_pool3d(out, kernel_size=kernel, stride=1, padding=padding)
    return out[0, 0] > 0.5


def body_mask(
    image: torch.Tensor,
    *,
    threshold: float,
    opening: int = 2,
    closing: int = 8,
    keep_fraction: float = 0.2,
    step: int = 2,
) -> torch.Tensor:
    """The patient's body on a CT, without the table: an (X, Y, Z) bool mask of ``image`` (B, C, X, Y, Z).

    ``image > threshold`` (any batch item or channel), opened by a cube of radius ``opening`` voxels
    (erosion, then dilation: structures thinner than that go, such as the table's shell, skin and
    cables); then the largest connected component, with every other component at least
    ``keep_fraction`` of its size; then closed by a cube of radius ``closing`` voxels with the holes
    of each axial slice (last axis) filled in between, so the lungs and bowel gas are body even where
    fat between the ribs (below a [-100, 200] HU window) leaves gaps in the chest wall. The work is
    done on a grid ``step`` times coarser (radii divided by it) and the result brought back by
    nearest neighbour, grown by one coarse voxel.
    """
    import numpy as np
    from scipy import ndimage

    full = (image > threshold).any(dim=0).any(dim=0).cpu()
    shape = full.shape
    mask = full
    if step > 1:
        mask = (
            torch.nn.functional.max_pool3d(
                full[None, None].float(), kernel_size=step, stride=step, ceil_mode=True
            )[0, 0]
            > 0.5
        )
    radius = -(-opening // step) if opening > 0 else 0
    if radius:
        mask = ~_max_filter(~mask, radius)  # erosion: the complement dilated
        mask = _max_filter(mask, radius)
    labels, count = ndimage.label(mask.numpy())
    if count == 0:
        return torch.zeros(shape, dtype=torch.bool)
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
    body = torch.from_numpy(np.isin(labels, kept) if len(kept) > 1 else labels == kept[0])
    radius = -(-closing // step) if closing > 0 else 0
    grown = _max_filter(body, radius).numpy() if radius else body.numpy()
    # Holes of every axial slice at once: the outside's components, connected within slices only,
    # that do not reach the slice's border.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    outside, _ = ndimage.label(~grown, structure=in_plane)
    border = np.unique(
        np.concatenate(
            [outside[0].ravel(), outside[-1].ravel(), outside[:, 0].ravel(), outside[:, -1].ravel()]
        )
    )
    grown |= (outside > 0) & ~np.isin(outside, border)
    body = ~_max_filter(~torch.from_numpy(grown), radius) if radius else torch.from_numpy(grown)
    if step > 1:
        body = _max_filter(body, 1)
        body = (
            body.repeat_interleave(step, 0)
            .repeat_interleave(step, 1)
            .repeat_interleave(step, 2)[: shape[0], : shape[1], : shape[2]]
        )
    return body.contiguous()


def box_of(mask: torch.Tensor, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Bounding box (spatial slices) of an (X, Y, Z) bool mask grown by ``margin``, clipped; None when empty."""
    return foreground_box(mask.cpu().numpy(), margin)


__all__ = ["body_box", "body_mask", "box_of"]
