"""nnU-Net's preprocessing of one case: transpose, crop to the non-zero box, normalise, resample.

Each step is nnU-Net 2.8's own rule (``voxpipe.transforms.nnunet`` has the normalisation schemes,
``voxpipe.transforms.nnunet_resample`` the resampling); what differs is memory: the box and the holes
are found in a fraction of what nnU-Net's code needs (:func:`fill_holes`), with the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder
from voxpipe.pipelines.inference.nnunet.readers import Case
from voxpipe.pipelines.inference.nnunet.validate import check_resampled_memory
from voxpipe.transforms.nnunet import normalise_channel
from voxpipe.transforms.nnunet_resample import resample, resample_segmentation


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (face connectivity), in a fraction of its memory.

    SciPy grows the background from the border by iterated dilation and needs ~45 bytes a voxel: 1.4 GB
    for a 512 × 512 × 120 CT, 7 GB at 600 slices, the peak of nnU-Net's preprocessing. The same set,
    by its definition: the background components (face-connected) that touch no face of the array are
    holes. Labelling them takes an int32 label map and a mask (~5 bytes a voxel; a uint16 map would
    not do: a CT's noise makes more than 65535 components, and SciPy then labels twice)."""
    background = ~mask
    labels = np.empty(mask.shape, dtype=np.int32)
    count = ndimage.label(background, output=labels)
    del background
    at_face = np.zeros(count + 1, dtype=bool)  # component number → touches a face of the array
    for axis in range(labels.ndim):
        for end in (0, -1):
            at_face[np.take(labels, end, axis=axis)] = True
    at_face[0] = True  # label 0 is the mask itself
    filled = at_face[labels]  # the mask and the background reaching a face ...
    del labels
    return np.logical_not(filled, out=filled) | mask  # ... so its complement is the holes


def nonzero_box(data: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
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


def preprocess(
    case: Case,
    folder: NnUNetFolder,
    *,
    previous: np.ndarray | None = None,
    foreground: Sequence[int] = (),
    device: torch.device | str | None = None,
    exact: bool = True,
) -> np.ndarray:
    """The case as the network of ``folder`` sees it, (C, *spatial) float32; ``case.data`` is released.

    ``device``: resample the image with torch there (:mod:`voxpipe.transforms.torch_resample`, SciPy's
    values to ~1e-12 relative); None: with SciPy, as nnU-Net does.

    ``exact``: where the image is resampled whole (spline orders other than 2 and 3, see
    :func:`~voxpipe.transforms.nnunet_resample.resize`), SciPy's float64 spline coefficients (nnU-Net's
    values); False: float32 ones, values within ~1e-6 relative in half the memory. Orders 2 and 3
    (nnU-Net's default) go slab by slab with SciPy's values on every route.

    Elementwise schemes (:data:`ELEMENTWISE`: CT normalisation) are applied to the rows as they are
    resampled, so the image is held once, as read (int16 for most CTs); z-scores normalise the
    whole channel first.

    ``previous``: a cascade's first-stage labels on the case's array (the reader's order), added as
    one-hot channels of the ``foreground`` labels, as nnU-Net's cascade does.
    """
    plans, config = folder.plans, folder.configuration
    if case.data is None:
        raise RuntimeError("this case was preprocessed already: read it again")
    forward = list(plans.get("transpose_forward", range(case.data.ndim - 1)))
    data = case.data.transpose([0, *[i + 1 for i in forward]])
    spacing = [case.spacing[i] for i in forward]
    case.properties["shape_before_cropping"] = data.shape[1:]
    mask, box = nonzero_box(data)
    crop = tuple(slice(a, b) for a, b in box)
    data, mask = data[(slice(None), *crop)], mask[crop]
    if previous is not None:  # nnU-Net's crop_to_nonzero with a segmentation: outside is -1 ...
        previous = previous.transpose(forward)[crop].astype(np.int16)
        previous[(previous == 0) & ~mask] = -1
        mask = previous >= 0  # ... and the normalisation mask is seg >= 0
    case.properties.update(box=box, shape_after_cropping=data.shape[1:], spacing_transposed=spacing)
    target = [float(s) for s in config["spacing"]]
    if len(target) < len(data.shape[1:]):
        target = [spacing[0], *target]
    shape = [int(round(i / j * k)) for i, j, k in zip(spacing, target, data.shape[1:], strict=True)]
    check_resampled_memory(
        shape,
        data.shape[0],
        str(folder.path / "plans.json"),
        f"configurations.{folder.configuration_name}.spacing",
        config["spacing"],
    )
    schemes = config.get("normalization_schemes", [])
    properties = plans.get("foreground_intensity_properties_per_channel", {})
    options = resampling_options(config, "resampling_fn_data_kwargs", 3)
    case.properties.update(target_spacing=target, shape_after_resampling=shape)
    channels = data.shape[0]
    if device is None and len(schemes) >= channels and all(s in ELEMENTWISE for s in schemes[:channels]):
        # normalised as the rows are resampled (SciPy's values, spline_rows): no float32 copy of the CT
        del mask
        transforms = [
            partial(
                normalise_channel,
                scheme=schemes[c],
                properties=properties.get(str(c)),
                source=str(folder.path / "plans.json"),
            )
            for c in range(data.shape[0])
        ]
        case.data = None
        coefficients = np.float64 if exact else np.float32
        resampled = resample(
            data, shape, spacing, target, coefficients=coefficients, transforms=transforms, **options
        )
        del data
    else:
        resampled = _normalised_resampled(
            case, data, mask, folder, shape, spacing, target, options, device=device, exact=exact
        )
        del data
    if previous is None:
        return resampled
    options = resampling_options(config, "resampling_fn_seg_kwargs", 1)
    previous = resample_segmentation(previous[None], shape, spacing, target, **options)[0]
    one_hot = np.stack([previous == value for value in foreground]).astype(resampled.dtype)
    return np.vstack((resampled, one_hot))


#: schemes whose value at a voxel depends on that voxel only (and the plans): normalised slab by slab
ELEMENTWISE = ("CTNormalization", "NoNormalization")


def _normalised_resampled(
    case: Case,
    data: np.ndarray,
    mask: np.ndarray,
    folder: NnUNetFolder,
    shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
    options: Mapping[str, Any],
    *,
    device: torch.device | str | None,
    exact: bool,
) -> np.ndarray:
    """The whole channel normalised first (z-scores need the channel's statistics), then resampled."""
    config = folder.configuration
    schemes = config.get("normalization_schemes", [])
    use_mask = config.get("use_mask_for_norm", [False] * len(schemes))
    properties = folder.plans.get("foreground_intensity_properties_per_channel", {})
    # in place where the reader's float32 array allows it (it is released here anyway): a CT's
    # channel is not held twice (0.6 GB at 512 × 512 × 600)
    in_place = data.dtype == np.float32 and data.flags.writeable
    normalised = data if in_place else np.empty(data.shape, dtype=np.float32)
    for c in range(data.shape[0]):
        normalise_channel(
            data[c],
            schemes[c],
            properties=properties.get(str(c)),
            nonzero=mask,
            use_mask=bool(use_mask[c]),
            source=str(folder.path / "plans.json"),
            out=normalised[c],
        )
    case.data = None  # the full-resolution image: not needed again, and as large as the CT
    del data, mask
    if device is not None:  # torch on that device: SciPy's values to ~1e-12 relative
        from voxpipe.transforms import torch_resample

        on_device = torch.from_numpy(normalised).to(device)
        del normalised
        return torch_resample.resample(on_device, shape, spacing, target, **options).float().cpu().numpy()
    coefficients = np.float64 if exact else np.float32
    return resample(normalised, shape, spacing, target, coefficients=coefficients, **options)


def resampling_options(configuration: Mapping[str, Any], key: str, order: int) -> dict[str, Any]:
    """The configuration's resampling options under ``key`` (nnU-Net's defaults where absent)."""
    kwargs = dict(configuration.get(key) or {})
    return {
        "order": int(kwargs.get("order", order)),
        "order_z": int(kwargs.get("order_z", 0)),
        "force_separate_z": kwargs.get("force_separate_z"),
    }


__all__ = ["fill_holes", "nonzero_box", "preprocess", "resampling_options"]
