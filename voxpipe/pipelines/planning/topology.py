"""nnU-Net v2's planning rules for a 3D U-Net, as pure functions on a fingerprint.

Why our own: nnU-Net's ``ExperimentPlanner`` (nnunetv2 2.8.1,
``experiment_planning/experiment_planners/default_experiment_planner.py`` and ``network_topology.py``)
reads its inputs from ``nnUNet_raw``/``nnUNet_preprocessed`` folders named by environment variables,
instantiates a ``dynamic_network_architectures`` network to count feature maps and prints as it goes.
The rules themselves are small arithmetic; they are restated here from that code, step by step, so
that ``voxpipe plan --rules nnunet`` gives nnU-Net's ``3d_fullres`` numbers without nnU-Net installed,
and every step can say which number it came from. ``tests/test_planning.py`` checks the results
against values nnunetv2 2.8.1 itself produced (``tests/oracles/nnunet_planner.py``).

Axis order: every function here works in the order of the arrays it is given. nnU-Net works in the
order SimpleITK gives, ``(z, y, x)`` of the file's storage; :mod:`voxpipe.pipelines.planning.plan`
passes that order in (the rules break ties by axis position, so the order matters) and turns the
results into voxpipe's ``(x, y, z)`` afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxpipe.errors import InputError

ANISOTROPY_THRESHOLD = 3  # a spacing above 3 × the others (and 3 × fewer voxels) is the "low-resolution axis"
MIN_EDGE = 4  # voxels: the bottleneck feature map is at least this long on every pooled axis
BASE_FEATURES, MAX_FEATURES_3D = 32, 320
CONVS_PER_STAGE = 2  # encoder and decoder
# nnU-Net's reference: a feature-map volume of 560e6 elements fits 8 GB at batch size 2 (its "memory proxy").
REFERENCE_FEATURE_MAPS, REFERENCE_GB, REFERENCE_BATCH = 560_000_000, 8, 2
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05  # one step sees at most 5 % of the dataset's voxels
INITIAL_PATCH_VOXELS = 256**3
LOWRES_THRESHOLD = 0.25  # a low-resolution stage when the patch covers under 25 % of the median image
LOWRES_SPACING_STEP = 1.03


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The 3d_fullres spacing (mm) from per-case spacings and cropped shapes, both ``(n_cases, 3)``.

    The median spacing, except on a dataset whose coarsest axis is both > 3 × the finest other
    spacing and has > 3 × fewer voxels than the smallest other axis: that axis takes the 10th
    percentile of its spacings (never finer than the other axes), so thin-slice cases are not
    thrown away by interpolation. Returns the spacing and the numbers behind the decision.
    """
    spacings, shapes = np.asarray(spacings, dtype=np.float64), np.asarray(shapes)
    target = np.percentile(spacings, 50, 0)
    median_size = np.percentile(np.vstack(shapes), 50, 0)
    coarse = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != coarse]
    other_spacings, other_sizes = [target[i] for i in others], [median_size[i] for i in others]
    aniso_spacing = bool(target[coarse] > ANISOTROPY_THRESHOLD * max(other_spacings))
    aniso_voxels = bool(median_size[coarse] * ANISOTROPY_THRESHOLD < min(other_sizes))
    why: dict[str, Any] = {
        "median_spacing": target.tolist(),
        "median_shape": median_size.tolist(),
        "coarse_axis": coarse,
        "anisotropic_spacing": aniso_spacing,
        "anisotropic_voxels": aniso_voxels,
    }
    if aniso_spacing and aniso_voxels:
        coarse_spacing = np.percentile(spacings[:, coarse], 10)
        why["coarse_axis_p10"] = float(coarse_spacing)
        if coarse_spacing < max(other_spacings):
            coarse_spacing = max(max(other_spacings), coarse_spacing) + 1e-5
        target[coarse] = coarse_spacing
    return target, why


def transpose_for(spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """nnU-Net's axis transposition: the coarsest axis first, the others in order; and its inverse."""
    first = int(np.argmax(spacing))
    forward = [first] + [i for i in range(3) if i != first]
    backward = [forward.index(i) for i in range(3)]
    return forward, backward


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> np.ndarray:
    return np.array([int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape, strict=True)])


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> np.ndarray:
    """``shape`` rounded up to multiples of ``divisor`` (a shape already divisible stays)."""
    padded = []
    for size, multiple in zip(shape, divisor, strict=True):
        value = size + multiple - size % multiple
        if size % multiple == 0:
            value -= multiple
        padded.append(value)
    return np.array(padded).astype(int)


@dataclass(frozen=True)
class Topology:
    """Pooling and convolution layout for a patch: one entry per stage (the first stage does not pool)."""

    pools_per_axis: list[int]
    pool_kernels: tuple[tuple[int, ...], ...]
    conv_kernels: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisor: np.ndarray  # the patch must be a multiple of this per axis


def topology(spacing: Sequence[float], patch_size: Sequence[float], *, min_edge: int = MIN_EDGE) -> Topology:
    """Pool an axis while its feature map stays ≥ 2 × ``min_edge`` voxels and its spacing is within 2 × the
    finest; a single such axis pools only while ≥ 3 × ``min_edge``. Kernels are 3 on an axis once its
    spacing is within 2 × the finest, else 1; the bottleneck is 3 everywhere. The patch is then padded
    to a multiple of 2 ** (pools per axis)."""
    dims = len(spacing)
    current_spacing, current_size = list(spacing), list(patch_size)
    pool_kernels: list[tuple[int, ...]] = [(1,) * dims]
    conv_kernels: list[tuple[int, ...]] = []
    pools, kernel = [0] * dims, [1] * dims
    while True:
        poolable = [i for i in range(dims) if current_size[i] >= 2 * min_edge]
        if not poolable:
            break
        finest = min(current_spacing[i] for i in poolable)
        poolable = [i for i in poolable if current_spacing[i] / finest < 2]
        if len(poolable) == 1 and current_size[poolable[0]] < 3 * min_edge:
            break
        if not poolable:
            break
        for d in range(dims):
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        stage = [1] * dims
        for axis in poolable:
            stage[axis] = 2
            pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = np.ceil(current_size[axis] / 2)
        pool_kernels.append(tuple(stage))
        conv_kernels.append(tuple(kernel))
    conv_kernels.append((3,) * dims)
    divisor = 2 ** np.array(pools)
    padded = pad_to_multiple(patch_size, divisor)
    return Topology(pools, tuple(pool_kernels), tuple(conv_kernels), tuple(int(v) for v in padded), divisor)


def features_per_stage(n_stages: int) -> tuple[int, ...]:
    return tuple(min(MAX_FEATURES_3D, BASE_FEATURES * 2**i) for i in range(n_stages))


def feature_map_elements(
    patch_size: Sequence[int], pool_kernels: Sequence[Sequence[int]], n_classes: int
) -> int:
    """nnU-Net's memory proxy: the elements of every convolution output of its plain U-Net (2 convolutions
    per stage, transposed convolutions, the final 1 × 1 × 1 output; no deep supervision) for one patch."""
    features = features_per_stage(len(pool_kernels))
    total = np.int64(0)
    size = [int(v) for v in patch_size]
    skips = []
    for stage, stride in enumerate(pool_kernels):
        size = [s // k for s, k in zip(size, stride, strict=True)]
        total += CONVS_PER_STAGE * np.prod([features[stage], *size], dtype=np.int64)
        skips.append(size)
    for level in range(len(pool_kernels) - 2, -1, -1):  # decoder, from the bottleneck up
        voxels = np.prod(skips[level], dtype=np.int64)
        total += (
            (CONVS_PER_STAGE + 1) * features[level] * voxels
        )  # its convolutions and the transposed conv into it
        if level == 0:
            total += n_classes * voxels
    return int(total)


def shrink(spacing: Sequence[float], layout: Topology, median_shape: Sequence[float]) -> Topology | None:
    """One step smaller: the axis largest relative to the median shape loses one multiple of what its
    pooling needs (recomputed for the smaller size, so valid sizes such as 224 between 256 and 192 are
    not skipped); ``None`` when that axis would vanish."""
    patch = list(layout.patch_size)
    axis = int(np.argsort([p / m for p, m in zip(patch, median_shape[:3], strict=True)])[-1])
    trial = list(patch)
    trial[axis] -= layout.divisor[axis]
    patch[axis] -= topology(spacing, trial).divisor[axis]
    return topology(spacing, patch) if patch[axis] > 0 else None


def plan_3d(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    *,
    n_voxels_dataset: float,
    n_classes: int,
    gpu_memory_gb: float = 8.0,
) -> dict[str, Any]:
    """nnU-Net's 3D configuration for a target spacing and the median resampled shape (both in planning order).

    The first patch has the aspect ratio of the spacing's inverse and 256³ voxels, clipped to the median
    shape. While the proxy at batch size 2 exceeds the reference scaled to ``gpu_memory_gb``, the axis
    largest relative to the median shape shrinks by one pooling step. The batch size then uses the
    headroom, capped so one step covers at most 5 % of the dataset's voxels, and is at least 2.

    Raises:
        InputError: the memory target is too small for any patch.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    inverse = 1 / spacing
    initial = [round(v) for v in inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1 / 3)]
    initial = np.array([min(a, b) for a, b in zip(initial, median_shape[:3], strict=True)])
    layout = topology(spacing, initial)
    reference = REFERENCE_FEATURE_MAPS * (gpu_memory_gb / REFERENCE_GB)
    estimate = feature_map_elements(layout.patch_size, layout.pool_kernels, n_classes)
    first_estimate, reductions = estimate, 0
    while estimate / REFERENCE_BATCH * 2 > reference:
        smaller = shrink(spacing, layout, median_shape)
        if smaller is None:
            raise InputError(
                f"--gpu-memory {gpu_memory_gb:g} GB: expected a memory target that fits a patch, "
                f"found none (the smallest patch still needs a proxy of {estimate} elements)"
            )
        layout = smaller
        estimate = feature_map_elements(layout.patch_size, layout.pool_kernels, n_classes)
        reductions += 1
    batch = round(reference / estimate * REFERENCE_BATCH)
    batch_cap = round(n_voxels_dataset * MAX_DATASET_COVERED / np.prod(layout.patch_size, dtype=np.float64))
    return {
        "spacing": [float(v) for v in spacing],
        "median_shape": [float(v) for v in median_shape],
        "initial_patch_size": [float(v) for v in initial],
        "patch_size": list(layout.patch_size),
        "pool_kernels": [list(k) for k in layout.pool_kernels],
        "conv_kernels": [list(k) for k in layout.conv_kernels],
        "features_per_stage": list(features_per_stage(len(layout.pool_kernels))),
        "batch_size": int(max(min(batch, batch_cap), MIN_BATCH)),
        "batch_size_from_memory": int(batch),
        "batch_size_cap_5_percent": int(batch_cap),
        "proxy_elements": estimate,
        "proxy_elements_initial": first_estimate,
        "proxy_reference": float(reference),
        "patch_reductions": reductions,
    }


def plan_lowres(
    fullres: dict[str, Any],
    median_shape: Sequence[float],
    *,
    n_training: int,
    n_classes: int,
    gpu_memory_gb: float = 8.0,
) -> dict[str, Any]:
    """Whether nnU-Net would add a 3d_lowres stage (and its plan): while the full-resolution patch covers
    under 25 % of the median image, coarsen the spacing by 3 % (the anisotropic axes first); keep the
    stage only if the low-resolution image has at least 2 × fewer voxels than the full-resolution one."""
    full_spacing = np.asarray(fullres["spacing"], dtype=np.float64)
    median_shape = np.asarray(median_shape, dtype=np.float64)
    median_voxels = np.prod(median_shape, dtype=np.float64)
    patch_voxels = np.prod(fullres["patch_size"], dtype=np.float64)
    ratio = float(patch_voxels / median_voxels)
    spacing = full_spacing.copy()
    lowres = None
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        coarsest = max(spacing)
        if np.any(coarsest / spacing > 2):
            spacing[(coarsest / spacing) > 2] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        median_voxels = np.prod(full_spacing / spacing * median_shape, dtype=np.float64)
        lowres = plan_3d(
            spacing,
            tuple(round(v) for v in full_spacing / spacing * median_shape),
            n_voxels_dataset=float(np.prod(median_voxels) * n_training),
            n_classes=n_classes,
            gpu_memory_gb=gpu_memory_gb,
        )
        patch_voxels = np.prod(lowres["patch_size"], dtype=np.int64)
    shrink = float(np.prod(median_shape, dtype=np.float64) / median_voxels)
    worthwhile = lowres is not None and shrink >= 2
    return {
        "worthwhile": worthwhile,
        "patch_fraction_of_median_image": ratio,
        "threshold": LOWRES_THRESHOLD,
        "voxel_reduction": shrink,
        "plan": lowres if worthwhile else None,
    }
