"""A runnable MONAI bundle from a plan: train/inference/evaluate configs and metadata.

The configs are those of the shipped liver bundle (``configs/liver_ct_segresnet``: voxpipe's
trainer, caching, fast sliding window, inversion onto the source grid, statistics) with the plan's
values put in: dataset, labels, spacing, patch and batch size, the network (MONAI DynUNet with the
planned kernels and strides, or SegResNet), the intensity normalisation per channel, and no
organ-specific post-processing (which post-processing helps is for cross-validation to say).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from voxpipe.metrics.lesions import is_lesion_name
from voxpipe.pipelines.bundles.config import shipped_bundle
from voxpipe.transforms.files import write_text_atomic

TEMPLATE = "liver_ct_segresnet"
_ORGAN_SPECIFIC = {"voxpipe.transforms.postprocess.PostProcessd"}


def _normalise(transform: dict[str, Any], norm: dict[str, Any]) -> dict[str, Any]:
    """The template's CT window transform, or a z-score for channels nnU-Net z-scores."""
    if norm["scheme"] == "CTNormalization":
        return transform  # a_min/a_max refer to hu_window, set from the foreground percentiles
    return {
        "_target_": "NormalizeIntensityd",
        "keys": transform["keys"],
        "nonzero": norm["use_mask_for_norm"],
        "channel_wise": True,
    }


def _rewrite(items: list[Any], norm: dict[str, Any], channels: int) -> list[Any]:
    result = []
    for item in items:
        if isinstance(item, dict) and str(item.get("_target_", "")).endswith("LoadVolumed") and channels > 1:
            item = {**item, "channels": channels}
        if isinstance(item, dict) and item.get("_target_") in _ORGAN_SPECIFIC:
            continue
        if isinstance(item, dict) and item.get("_target_") == "ScaleIntensityRanged":
            item = _normalise(item, norm)
        result.append(item)
    return result


def _configure(
    config: dict[str, Any],
    plan: dict[str, Any],
    fingerprint: dict[str, Any],
    spec: dict[str, Any],
    norm: dict[str, Any],
    split_file: Path,
    run_name: str,
) -> dict[str, Any]:
    config = copy.deepcopy(config)
    labels = fingerprint["labels"]
    names = [labels[k] for k in sorted(labels, key=int) if k != "0"]
    lesions = [int(k) for k in sorted(labels, key=int) if k != "0" and is_lesion_name(labels[k])]
    values = {
        "dataset_dir": fingerprint["dataset"],
        "num_classes": len(labels),
        "label_names": names,
        "pixdim": [round(float(v), 5) for v in plan["target_spacing"]],
        "patch_size": plan["patch_size"],
        "batch_size": plan["batch_size"],
        "samples_per_image": 1,
        "crop_pos": 1,
        "crop_neg": 2,
        "lesion_labels": lesions,
        "output_dir": f"runs/{run_name}" if "max_epochs" in config else config.get("output_dir"),
        "split_file": str(split_file),
        "fold": 0,
    }
    if norm["scheme"] == "CTNormalization":
        values["hu_window"] = norm["window"]
    else:
        config.pop("hu_window", None)
    for key, value in values.items():
        if key in config:
            config[key] = value
    datalist = config.get("datalist")
    if (
        isinstance(datalist, dict) and datalist.get("part") == "val"
    ):  # evaluate.yaml: the fold's validation cases
        config.update(split_file=str(split_file), fold=0)
        datalist.update(split_file="@split_file", fold="@fold")
    config.pop("min_tumour_mm3", None)
    network = dict(config["network_def"])
    for key in ("name", "init_filters"):
        network.pop(key, None)
    config["network_def"] = {
        "_target_": network.pop("_target_"),
        **spec,
        "out_channels": "@num_classes",
        **{k: v for k, v in network.items() if k not in spec and k != "out_channels"},
    }
    if "inferer" in config and isinstance(config["inferer"], dict) and "crop_body" not in config["inferer"]:
        if (
            config["inferer"].get("_target_", "").endswith("FastSlidingWindowInferer")
            and norm["scheme"] != "CTNormalization"
        ):
            config["inferer"]["crop_body"] = False  # the body mask, crop and window skipping assume CT
            config["inferer"]["skip_air"] = False
    _walk(config, norm, int(spec["in_channels"]))
    return config


def _walk(node: Any, norm: dict[str, Any], channels: int) -> None:
    """Rewrite every transform list in the config (training, validation, inference, evaluation)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, list) and any(isinstance(v, dict) and "_target_" in v for v in value):
                node[key] = _rewrite(value, norm, channels)
            _walk(node[key], norm, channels)
    elif isinstance(node, list):
        for value in node:
            _walk(value, norm, channels)


def write_planned_bundle(
    out: Path,
    *,
    plan: dict[str, Any],
    fingerprint: dict[str, Any],
    spec: dict[str, Any],
    norm: dict[str, Any],
    split_file: Path,
) -> list[Path]:
    """Write ``out/configs/{train,inference,evaluate}.yaml`` and ``metadata.json``; the paths written."""
    template = shipped_bundle(TEMPLATE) / "configs"
    header = (
        "# Written by `voxpipe plan` from {dataset}; every value below that the plan chose is explained in\n"
        "# ../plan.md (numbers in ../plan.json). Built from voxpipe's {template} bundle.\n"
    )
    written = []
    spec = {k: v for k, v in spec.items() if k not in ("out_channels",)}
    for name in ("train.yaml", "inference.yaml", "evaluate.yaml"):
        config = yaml.safe_load((template / name).read_text())
        config = _configure(config, plan, fingerprint, spec, norm, split_file, out.resolve().name)
        text = header.format(dataset=fingerprint["dataset"], template=TEMPLATE) + yaml.safe_dump(
            config, sort_keys=False
        )
        written.append(write_text_atomic(out / "configs" / name, text))
    metadata = json.loads((template / "metadata.json").read_text())
    labels = fingerprint["labels"]
    channels = fingerprint["channel_names"]
    metadata.update(
        {
            "version": "0.1.0",
            "changelog": {"0.1.0": "planned by voxpipe plan"},
            "name": f"Planned segmentation of {Path(fingerprint['dataset']).name} ({spec['name']})",
            "task": f"Segmentation of {', '.join(v for k, v in labels.items() if k != '0')}",
            "description": (
                f"3D {spec['name']} planned by voxpipe plan ({plan['rules']} rules): spacing "
                f"{plan['target_spacing']} mm, patch {plan['patch_size']}, batch {plan['batch_size']}; see plan.md."
            ),
            "data_source": fingerprint["dataset"],
            "image_classes": f"{len(channels)} channel(s): {', '.join(channels)}",
            "label_classes": ", ".join(f"{k} {v}" for k, v in labels.items()),
            "pred_classes": ", ".join(f"{k} {v}" for k, v in labels.items()),
            "labels": labels,
        }
    )
    image = metadata["network_data_format"]["inputs"]["image"]
    image.update(
        {
            "modality": channels[0].upper() if len(channels) == 1 else "multi-channel",
            "num_channels": len(channels),
            "channel_def": {str(i): c for i, c in enumerate(channels)},
            "format": "hounsfield" if norm["scheme"] == "CTNormalization" else "magnitude",
        }
    )
    pred = metadata["network_data_format"]["outputs"]["pred"]
    pred.update({"num_channels": len(labels), "channel_def": labels})
    written.append(
        write_text_atomic(out / "configs" / "metadata.json", json.dumps(metadata, indent=4) + "\n")
    )
    return written
