"""``voxpipe plan``: a dataset → ``plan.json`` + ``plan.md`` (every decision and its number) → a bundle.

Two rule sets:

* ``nnunet``: nnU-Net v2's ``ExperimentPlanner`` for ``3d_fullres`` (:mod:`.topology`), with its
  memory proxy scaled to ``--gpu-memory`` (default 8 GB), exactly; for comparison and for users who
  want nnU-Net's numbers.
* ``voxpipe`` (the default): the same spacing and pooling rules, but the patch and batch size are
  fitted to memory **measured** for the network that will train (:mod:`.memory`) against a budget
  (``--gpu-memory``, else 90 % of the CUDA device's memory, else half the available RAM), and the
  plan says how long a training step and an epoch take on this machine.

All figures in ``plan.json`` are in voxpipe's RAS ``(x, y, z)`` axis order; ``nnunet_order`` keeps
nnU-Net's own (transposed ``(z, y, x)``) values for comparison with its ``nnUNetPlans.json``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from voxpipe.errors import InputError
from voxpipe.pipelines.data.caching import available_memory_bytes
from voxpipe.pipelines.planning import NETWORKS
from voxpipe.pipelines.planning import topology as rules
from voxpipe.pipelines.planning.fingerprint import NORMALISATION_BY_NAME
from voxpipe.pipelines.planning.memory import as_dict, measure_step

logger = logging.getLogger(__name__)

MASK_FOR_NORM_BELOW = (
    0.75  # nnU-Net: z-score inside the non-zero mask when cropping kept < 75 % of the voxels
)


def to_xyz(values_transposed: Any, backward: list[int], ras_axes: list[int]) -> list[Any]:
    """A per-axis value from nnU-Net's transposed order to storage (z, y, x), then to RAS (x, y, z)."""
    zyx = [values_transposed[backward[j]] for j in range(3)]
    storage_ijk = zyx[::-1]
    ras = [None, None, None]
    for k, world in enumerate(ras_axes):
        ras[world] = storage_ijk[k]
    return ras


def _xyz(values_transposed: Any, backward: list[int], ras_axes: list[int]) -> list[Any]:
    """:func:`to_xyz` with numpy scalars made plain numbers (for JSON)."""
    return [_number(v) for v in to_xyz(values_transposed, backward, ras_axes)]


def _number(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


def normalisation(fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """Per channel: nnU-Net's scheme from the channel name, whether it uses the non-zero mask, and
    (for CT) the foreground 0.5–99.5th percentile window voxpipe's bundles clip to."""
    schemes = []
    cropped = fingerprint["median_relative_size_after_cropping"]
    for stats in fingerprint["foreground_intensity"]:
        scheme = NORMALISATION_BY_NAME.get(stats["channel"].casefold(), "ZScoreNormalization")
        entry = {
            "channel": stats["channel"],
            "scheme": scheme,
            "use_mask_for_norm": bool(cropped < MASK_FOR_NORM_BELOW and scheme == "ZScoreNormalization"),
            "median_relative_size_after_cropping": cropped,
        }
        if scheme == "CTNormalization":
            entry["window"] = [round(stats["percentile_00_5"], 2), round(stats["percentile_99_5"], 2)]
        schemes.append(entry)
    return schemes


def nnunet_plan(fingerprint: dict[str, Any], *, gpu_memory_gb: float = 8.0) -> dict[str, Any]:
    """nnU-Net v2's 3d_fullres plan (and its 3d_lowres decision) for a planning fingerprint.

    Raises:
        InputError: a 2D dataset (median of one slice), for which nnU-Net plans no 3D configuration.
    """
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape_after_crop"] for c in cases])
    n_training, n_classes = int(fingerprint.get("num_training", len(cases))), len(fingerprint["labels"])
    target, spacing_why = rules.target_spacing(spacings, shapes)
    forward, backward = rules.transpose_for(target)
    new_shapes = [
        rules.resampled_shape(shape, spacing, target) for spacing, shape in zip(spacings, shapes, strict=True)
    ]
    median_shape = np.median(new_shapes, 0)[forward]
    if median_shape[0] == 1:
        raise InputError(
            f"{fingerprint['dataset']!r}: expected 3D images, found a median of 1 slice along the coarsest axis",
            hint="nnU-Net plans only a 2d configuration for such data; voxpipe plan plans 3D networks",
        )
    n_voxels = float(np.prod(median_shape, dtype=np.float64) * n_training)
    fullres = rules.plan_3d(
        target[forward],
        median_shape,
        n_voxels_dataset=n_voxels,
        n_classes=n_classes,
        gpu_memory_gb=gpu_memory_gb,
    )
    lowres = rules.plan_lowres(
        fullres, median_shape, n_training=n_training, n_classes=n_classes, gpu_memory_gb=gpu_memory_gb
    )
    ras_axes = cases[0]["ras_axes"]

    def xyz(values: Any) -> list[Any]:
        return _xyz(values, backward, ras_axes)

    return {
        "target_spacing": xyz(fullres["spacing"]),
        "patch_size": xyz(fullres["patch_size"]),
        "batch_size": fullres["batch_size"],
        "pool_kernels": [xyz(k) for k in fullres["pool_kernels"]],
        "conv_kernels": [xyz(k) for k in fullres["conv_kernels"]],
        "features_per_stage": fullres["features_per_stage"],
        "median_shape": xyz(fullres["median_shape"]),
        "spacing_rule": {**spacing_why, "axis_order": "storage (z, y, x)"},
        "lowres": {
            **{k: v for k, v in lowres.items() if k != "plan"},
            "target_spacing": xyz(lowres["plan"]["spacing"]) if lowres["plan"] else None,
            "patch_size": xyz(lowres["plan"]["patch_size"]) if lowres["plan"] else None,
        },
        "memory": {
            "model": "nnU-Net proxy (feature-map elements of its plain U-Net)",
            "gpu_memory_gb": gpu_memory_gb,
            "proxy_elements": fullres["proxy_elements"],
            "proxy_reference": fullres["proxy_reference"],
            "proxy_elements_initial": fullres["proxy_elements_initial"],
            "patch_reductions": fullres["patch_reductions"],
            "batch_size_from_memory": fullres["batch_size_from_memory"],
            "batch_size_cap_5_percent": fullres["batch_size_cap_5_percent"],
        },
        "nnunet_order": {
            "transpose_forward": forward,
            "transpose_backward": backward,
            "spacing": fullres["spacing"],
            "patch_size": fullres["patch_size"],
            "pool_op_kernel_sizes": fullres["pool_kernels"],
            "conv_kernel_sizes": fullres["conv_kernels"],
            "median_image_size_in_voxels": fullres["median_shape"],
            "initial_patch_size": fullres["initial_patch_size"],
        },
        "ras_axes": ras_axes,
        "storage_axes_consistent": all(c["ras_axes"] == ras_axes for c in cases),
    }


def network_spec(plan: dict[str, Any], *, network: str, in_channels: int, n_classes: int) -> dict[str, Any]:
    """``build_network`` arguments for the planned layout (MONAI DynUNet or SegResNet; no network code of ours)."""
    if network == "dynunet":
        stages = len(plan["pool_kernels"])
        spec = {
            "name": "dynunet",
            "in_channels": in_channels,
            "out_channels": n_classes,
            "kernel_size": plan["conv_kernels"],
            "strides": plan["pool_kernels"],
            "upsample_kernel_size": plan["pool_kernels"][1:],
            "filters": plan["features_per_stage"],
            "res_block": False,
            "norm_name": "instance",
            "deep_supervision": stages >= 3,
            "deep_supr_num": max(1, stages - 2),
        }
        if stages < 3:
            spec.pop("deep_supr_num")
        return spec
    if network == "segresnet":
        return {
            "name": "segresnet",
            "in_channels": in_channels,
            "out_channels": n_classes,
            "init_filters": 16,
        }
    raise InputError(f"--network: expected one of {NETWORKS}, found {network!r}")


def segresnet_patch(patch: list[int]) -> list[int]:
    return [int(math.ceil(p / 8) * 8) for p in patch]  # SegResNet halves 3 times


def _budget_bytes(gpu_memory_gb: float | None, device: str) -> tuple[int, str]:
    if gpu_memory_gb is not None:
        return int(gpu_memory_gb * 1024**3), f"--gpu-memory {gpu_memory_gb:g} GB"
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return int(0.9 * total), f"90 % of the CUDA device's {total / 1024**3:.1f} GB"
    available = available_memory_bytes()
    return int(0.5 * available), f"half the available RAM ({available / 1024**3:.1f} GB)"


def measured_plan(
    fingerprint: dict[str, Any], *, gpu_memory_gb: float | None, network: str, device: str
) -> dict[str, Any]:
    """voxpipe's rules: nnU-Net's spacing and pooling, then patch and batch size fitted to the measured
    peak memory of one training step of the planned network on ``device``.

    Steps: start from nnU-Net's patch for the budget; measure at batch 1 and 2 (the difference is the
    per-sample cost, the rest is fixed); while batch 2 does not fit, shrink the patch by nnU-Net's
    step (the axis largest relative to the median shape), predicting with the proxy scaled to what
    was measured, and measure again; then the largest batch that fits, capped at 5 % of the dataset
    per step (nnU-Net's cap), at least 2; a last measurement at the chosen batch confirms it.
    """
    budget, budget_source = _budget_bytes(gpu_memory_gb, device)
    start_gb = budget / 1024**3
    plan = nnunet_plan(fingerprint, gpu_memory_gb=start_gb)
    n_classes, in_channels = len(fingerprint["labels"]), len(fingerprint["channel_names"])
    order = plan["nnunet_order"]
    spacing_t = np.asarray(order["spacing"])
    median_t = order["median_image_size_in_voxels"]
    n_voxels = float(
        np.prod(median_t, dtype=np.float64) * fingerprint.get("num_training", fingerprint["n_cases"])
    )
    backward, ras_axes = order["transpose_backward"], plan["ras_axes"]
    layout = rules.topology(spacing_t, order["patch_size"])
    measurements: list[dict[str, Any]] = []

    def planned(current: rules.Topology) -> dict[str, Any]:
        return {
            "patch_size": _xyz(current.patch_size, backward, ras_axes),
            "pool_kernels": [_xyz(k, backward, ras_axes) for k in current.pool_kernels],
            "conv_kernels": [_xyz(k, backward, ras_axes) for k in current.conv_kernels],
            "features_per_stage": list(rules.features_per_stage(len(current.pool_kernels))),
        }

    def measure(current: rules.Topology, batch: int) -> dict[str, Any]:
        layout_xyz = planned(current)
        spec = network_spec(layout_xyz, network=network, in_channels=in_channels, n_classes=n_classes)
        patch = (
            layout_xyz["patch_size"] if network == "dynunet" else segresnet_patch(layout_xyz["patch_size"])
        )
        logger.info(
            "measuring a training step: %s at patch %s, batch %d on %s", network, patch, batch, device
        )
        result = as_dict(
            measure_step(spec, patch_size=patch, batch_size=batch, in_channels=in_channels, device=device)
        )
        measurements.append(result)
        return result

    for _ in range(8):
        one, two = measure(layout, 1), measure(layout, 2)
        if 0 <= two["peak_bytes"] <= budget:
            break
        proxy = rules.feature_map_elements(layout.patch_size, layout.pool_kernels, n_classes)
        bytes_per_element = (two["peak_bytes"] if two["peak_bytes"] > 0 else 2 * budget) / proxy
        while (
            rules.feature_map_elements(layout.patch_size, layout.pool_kernels, n_classes) * bytes_per_element
            > budget
        ):
            smaller = rules.shrink(spacing_t, layout, median_t)
            if smaller is None:
                raise InputError(
                    f"memory budget ({budget_source}): expected it to fit a training step at batch 2, "
                    f"found {two['peak_bytes'] / 1024**3:.2f} GB needed at the smallest patch"
                )
            layout = smaller
    else:
        raise InputError(f"memory budget ({budget_source}): no patch fitted after 8 measurements")
    per_sample = max(two["peak_bytes"] - one["peak_bytes"], 1)
    fixed = max(one["peak_bytes"] - per_sample, 0)
    batch_memory = int((budget - fixed) // per_sample)
    cap = round(n_voxels * rules.MAX_DATASET_COVERED / np.prod(layout.patch_size, dtype=np.float64))
    batch = max(min(batch_memory, cap), rules.MIN_BATCH)
    final = two if batch == 2 else measure(layout, batch)
    while batch > 2 and not 0 <= final["peak_bytes"] <= budget:
        batch -= 1
        final = two if batch == 2 else measure(layout, batch)
    layout_xyz = planned(layout)
    n_train = max(1, round(fingerprint["n_cases"] * 0.8))
    steps = math.ceil(n_train / batch)
    plan.update(layout_xyz)
    if network == "segresnet":
        plan["patch_size"] = segresnet_patch(layout_xyz["patch_size"])
    plan["batch_size"] = int(batch)
    plan["memory"] = {
        "model": f"measured: one training step (forward, loss, backward, SGD) of {network} on {device}",
        "budget_bytes": budget,
        "budget_source": budget_source,
        "per_sample_bytes": int(per_sample),
        "fixed_bytes": int(fixed),
        "batch_size_from_memory": batch_memory,
        "batch_size_cap_5_percent": int(cap),
        "peak_bytes_at_plan": final["peak_bytes"],
        "measurements": measurements,
        "nnunet_proxy_start_gb": round(start_gb, 3),
    }
    plan["timing"] = {
        "device": device,
        "step_seconds": final["step_seconds"],
        "training_cases": n_train,
        "steps_per_epoch": steps,
        "epoch_seconds": round(final["step_seconds"] * steps, 2),
        "nnunet_epoch_seconds": round(final["step_seconds"] * 250, 1),
        "note": "an epoch is one pass over the training cases (voxpipe's trainer); nnU-Net's is 250 steps",
    }
    return plan
