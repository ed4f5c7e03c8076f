"""``voxpipe plan DATASET -o BUNDLE_DIR``: fingerprint, plan, explain, and write the bundle."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError
from voxpipe.pipelines.data.datalists import load_datalist
from voxpipe.pipelines.data.splits import make_split, save_split
from voxpipe.pipelines.planning import NETWORKS, RULES
from voxpipe.pipelines.planning.bundle import write_planned_bundle
from voxpipe.pipelines.planning.fingerprint import planning_fingerprint
from voxpipe.pipelines.planning.plan import (
    measured_plan,
    network_spec,
    nnunet_plan,
    normalisation,
    segresnet_patch,
    to_xyz,
)
from voxpipe.transforms.files import write_text_atomic

logger = logging.getLogger(__name__)

FOLDS = 5  # nnU-Net's 5-fold cross-validation


def plan_dataset(
    dataset: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    rules: str = "voxpipe",
    network: str = "dynunet",
    gpu_memory_gb: float | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Plan a dataset and write ``plan.json``, ``plan.md``, ``fingerprint.json``, ``splits.json`` (5 folds,
    grouped by patient, seeded) and the bundle's configs (trained fold by fold with ``voxpipe train --folds``).

    Everything slow (reading the dataset, measuring memory) happens before the first file is written,
    so a failure leaves no partial plan.

    Raises:
        InputError: unknown rules/network, a dataset that cannot be read or planned (named).
    """
    if rules not in RULES:
        raise InputError(f"--rules: expected one of {RULES}, found {rules!r}")
    if network not in NETWORKS:
        raise InputError(f"--network: expected one of {NETWORKS}, found {network!r}")
    if gpu_memory_gb is not None and not gpu_memory_gb > 0:
        raise InputError(f"--gpu-memory: expected a positive number of GB, found {gpu_memory_gb}")
    _refuse_what_check_refuses(dataset, progress=progress)
    fingerprint = planning_fingerprint(dataset, progress=progress)
    if rules == "nnunet":
        plan = nnunet_plan(fingerprint, gpu_memory_gb=8.0 if gpu_memory_gb is None else gpu_memory_gb)
    else:
        from voxpipe.runtime import select_device

        chosen = str(select_device(device))
        plan = measured_plan(fingerprint, gpu_memory_gb=gpu_memory_gb, network=network, device=chosen)
    plan = {
        "rules": rules,
        "network": network,
        "dataset": fingerprint["dataset"],
        "n_cases": fingerprint["n_cases"],
        "channels": fingerprint["channel_names"],
        "labels": fingerprint["labels"],
        "normalisation": normalisation(fingerprint),
        **plan,
    }
    if network == "segresnet" and rules == "nnunet":
        plan["network_note"] = (
            "SegResNet does not use the planned pooling and kernels (they are nnU-Net's U-Net's); "
            f"its patch is nnU-Net's {plan['patch_size']} rounded up to multiples of 8"
        )
        plan["patch_size"] = segresnet_patch(plan["patch_size"])
    out = Path(output_dir)
    spec = network_spec(
        plan, network=network, in_channels=len(plan["channels"]), n_classes=len(plan["labels"])
    )
    plan["network_spec"] = spec
    schemes = {n["scheme"] for n in plan["normalisation"]}
    bundle_written = len(plan["channels"]) == 1 or (len(schemes) == 1 and "CTNormalization" not in schemes)
    plan["bundle"] = (
        "configs/ (train.yaml, inference.yaml, evaluate.yaml, metadata.json)"
        if bundle_written
        else f"not written: the channels need different normalisations ({', '.join(sorted(schemes))}), which "
        "voxpipe's planned bundles do not express yet"
    )
    entries = [e for e in load_datalist(dataset) if e.get("label")]
    groups = len({str(e.get("patient") or e["case"]) for e in entries})
    if groups < 2:
        raise InputError(
            f"{str(dataset)!r}: cross-validation needs labelled cases of at least 2 patients; found {groups} "
            f"({len(entries)} labelled case(s))",
            hint="add labelled cases; one patient cannot be both trained on and validated",
        )
    folds = min(FOLDS, groups)
    split = make_split(entries, folds=folds, seed=0)
    plan["cross_validation"] = {
        "folds": folds,
        "seed": 0,
        "split_file": "splits.json",
        "grouped_by": "patient where the dataset names one, else case",
    }
    write_text_atomic(out / "fingerprint.json", json.dumps(fingerprint, indent=2) + "\n")
    save_split(split, out / "splits.json")
    if bundle_written:
        write_planned_bundle(
            out,
            plan=plan,
            fingerprint=fingerprint,
            spec=spec,
            norm=plan["normalisation"][0],
            split_file=(out / "splits.json").resolve(),
        )
    else:
        logger.warning("%s: plan written, bundle %s", dataset, plan["bundle"])
    write_text_atomic(out / "plan.md", render_markdown(plan))
    write_text_atomic(out / "plan.json", json.dumps(plan, indent=2) + "\n")
    return plan


def _mm(values: list[float]) -> str:
    return " × ".join(f"{v:.4g}" for v in values)


def _vox(values: list[float]) -> str:
    return " × ".join(f"{v:g}" for v in values)


def render_markdown(plan: dict[str, Any]) -> str:
    """``plan.md``: each decision, its value and the number it came from, for a researcher to read."""
    why = plan["spacing_rule"]
    order = plan["nnunet_order"]
    memory = plan["memory"]
    lines = [
        f"# Plan for `{Path(plan['dataset']).name}` ({plan['rules']} rules, {plan['network']})",
        "",
        f"{plan['n_cases']} labelled cases; channels {', '.join(plan['channels'])}; labels "
        + ", ".join(f"{k} {v}" for k, v in plan["labels"].items())
        + ".",
        "All sizes are voxels and spacings mm, in RAS (x, y, z) order.",
        "",
        "| Decision | Value | Because |",
        "|---|---|---|",
    ]
    coarse = "zyx"[why["coarse_axis"]]
    if why["anisotropic_spacing"] and why["anisotropic_voxels"]:
        spacing_because = (
            f"median spacing {_mm(why['median_spacing'][::-1])} mm; the coarse axis (storage {coarse}) is > 3 × "
            f"the others in spacing and has > 3 × fewer voxels, so it takes its 10th percentile "
            f"({why['coarse_axis_p10']:.4g} mm, never finer than the other axes)"
        )
    else:
        spacing_because = (
            f"median spacing over the cases (anisotropic spacing: {why['anisotropic_spacing']}, "
            f"anisotropic voxel counts: {why['anisotropic_voxels']}; both are needed for the 10th-percentile rule)"
        )
    lines.append(f"| Target spacing | {_mm(plan['target_spacing'])} mm | {spacing_because} |")
    for norm in plan["normalisation"]:
        if norm["scheme"] == "CTNormalization":
            text = (
                f"CT: clip to the foreground 0.5–99.5th percentiles [{norm['window'][0]:g}, {norm['window'][1]:g}] and "
                "scale to [0, 1] (nnU-Net then z-scores; the same up to an affine map)"
            )
        else:
            text = f"{norm['scheme']} per channel" + (
                " inside the non-zero mask" if norm["use_mask_for_norm"] else ""
            )
        because = (
            f"channel name {norm['channel']!r}; cropping to non-zero kept a median "
            f"{100 * norm['median_relative_size_after_cropping']:.0f} % of the voxels (mask used below 75 %)"
        )
        lines.append(f"| Normalisation, {norm['channel']} | {text} | {because} |")
    initial = _vox(_xyz_of(order["initial_patch_size"], plan))
    lines.append(
        f"| Patch size | {_vox(plan['patch_size'])} | first patch {initial}: 256³ voxels in the aspect ratio of "
        f"1 / spacing, clipped to the median resampled image {_vox(plan['median_shape'])}; then shrunk along the "
        f"axis largest relative to that image until the memory model fits (see Memory); multiples of 2^pools |"
    )
    stages = len(plan["pool_kernels"])
    lines.append(
        f"| Stages | {stages} (features {', '.join(map(str, plan['features_per_stage']))}) | an axis pools while "
        "its feature map stays ≥ 8 voxels and its spacing is within 2 × the finest; bottleneck ≥ 4 voxels |"
    )
    lines.append(
        "| Pooling per stage | " + " · ".join(_vox(k) for k in plan["pool_kernels"]) + " | the rule above |"
    )
    lines.append(
        "| Convolution kernels | "
        + " · ".join(_vox(k) for k in plan["conv_kernels"])
        + " | 3 on an axis once its (pooled) spacing is within 2 × the finest, else 1 |"
    )
    cap = memory["batch_size_cap_5_percent"]
    lines.append(
        f"| Batch size | {plan['batch_size']} | {memory['batch_size_from_memory']} fit the memory budget; "
        f"at most {cap} patch(es) per step, so that one step sees ≤ 5 % of the dataset's voxels; at least 2 |"
    )
    low = plan["lowres"]
    lines.append(
        f"| Low-resolution stage | {'worthwhile' if low['worthwhile'] else 'not worthwhile'} | the patch covers "
        f"{100 * low['patch_fraction_of_median_image']:.1f} % of the median image (a cascade is considered "
        f"below 25 %)"
        + (
            f"; at {_mm(low['target_spacing'])} mm, patch {_vox(low['patch_size'])}, the image "
            f"has {low['voxel_reduction']:.2f} × fewer voxels"
            if low["worthwhile"]
            else ""
        )
        + " |"
    )
    if "budget_bytes" in memory:
        lines.append(
            f"| Memory budget | {memory['budget_bytes'] / 1024**3:.2f} GB | {memory['budget_source']}; "
            f"{memory['model']}: {memory['per_sample_bytes'] / 1024**2:.0f} MiB per sample + "
            f"{memory['fixed_bytes'] / 1024**2:.0f} MiB fixed; {memory['peak_bytes_at_plan'] / 1024**2:.0f} MiB "
            f"at the plan ({len(memory['measurements'])} measurements) |"
        )
        timing = plan["timing"]
        lines.append(
            f"| Time | {timing['step_seconds']:.2f} s per step, {timing['epoch_seconds']:.1f} s per epoch | "
            f"measured on {timing['device']}; {timing['steps_per_epoch']} steps over {timing['training_cases']} "
            f"training cases (an nnU-Net epoch of 250 steps: {timing['nnunet_epoch_seconds']:.0f} s) |"
        )
    else:
        lines.append(
            f"| Memory budget | {memory['gpu_memory_gb']:g} GB (proxy) | {memory['model']}: "
            f"{memory['proxy_elements']:,} elements at batch 2 against the reference {memory['proxy_reference']:,.0f} "
            f"(560e6 per 8 GB); {memory['patch_reductions']} patch reductions |"
        )
    lines.append(
        f"| Network | MONAI {plan['network_spec']['name']} | "
        + (
            "plain convolutions, instance norm, deep supervision: nnU-Net's U-Net in MONAI |"
            if plan["network"] == "dynunet"
            else "SegResNet at the planned spacing and patch (rounded to multiples of 8) |"
        )
    )
    cv = plan["cross_validation"]
    lines += [
        "",
        f"Bundle: {plan['bundle']}. Cross-validation: {cv['folds']} folds in `{cv['split_file']}` (seed "
        f"{cv['seed']}, grouped by {cv['grouped_by']}); `voxpipe train BUNDLE --folds all` trains them.",
        "",
        "## Where this departs from nnU-Net",
        "",
    ]
    if plan["rules"] == "nnunet":
        lines.append(
            "- Nothing in the numbers above: they are nnU-Net v2's `ExperimentPlanner` (3d_fullres) rules."
        )
    else:
        lines.append(
            "- Patch and batch size fit memory measured for the network that trains, on this device, "
            "instead of nnU-Net's fixed proxy (560e6 feature-map elements ≈ 8 GB)."
        )
    lines += [
        "- Training uses voxpipe's trainer (AdamW, cosine schedule, Dice + cross-entropy), not nnU-Net's SGD "
        "with polynomial decay over 1000 epochs of 250 steps.",
        "- CT intensities are clipped to the same percentiles and scaled to [0, 1] rather than z-scored.",
        "- Foreground patches: 1 in 3 (nnU-Net's 33 % oversampling) via RandCropByPosNegLabeld.",
        "- The plan is in RAS (x, y, z); nnU-Net's is in its transposed storage order "
        f"(transpose_forward {order['transpose_forward']}), kept in plan.json under `nnunet_order`.",
    ]
    if not plan["storage_axes_consistent"]:
        lines.append(
            "- Warning: the cases are stored with different axis orders; nnU-Net's rules (and this plan) "
            "take the median over storage axes, which then mixes anatomical axes."
        )
    return "\n".join(lines) + "\n"


def _xyz_of(values_transposed: list[float], plan: dict[str, Any]) -> list[float]:
    return to_xyz(values_transposed, plan["nnunet_order"]["transpose_backward"], plan["ras_axes"])


def _refuse_what_check_refuses(dataset: str | os.PathLike[str], *, progress: bool) -> None:
    """``voxpipe data check``'s errors stop planning (listed all at once), and so does a dataset whose
    every label map is empty: the CT window and the patch come from foreground voxels, of which there are none.

    Raises:
        InputError: the check's errors (case, file, what), or no foreground in any label map.
    """
    from voxpipe.pipelines.data.check import check_dataset

    report = check_dataset(dataset, progress=progress)
    errors = [p for p in report.problems if p.severity == "error"]
    if errors:
        listing = "\n  ".join(f"{p.case}: {p.path}: {p.code}: {p.message}" for p in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise InputError(
            f"{str(dataset)!r}: {len(errors)} problem(s) that `voxpipe data check` reports as errors:\n  {listing}{more}",
            hint="fix them first (voxpipe data check DATASET lists every one)",
        )
    labelled = [p for p in report.problems if p.code == "empty-label"]
    n_labels = sum(1 for _ in load_datalist(dataset) if _.get("label"))
    if n_labels and len(labelled) == n_labels:
        raise InputError(
            f"{str(dataset)!r}: all {n_labels} label maps are empty (no foreground voxel); expected labelled "
            "structures to plan spacing, patch and the CT intensity window from"
        )
