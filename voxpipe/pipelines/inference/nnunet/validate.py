"""Every field voxpipe reads from an nnU-Net model folder, checked before anything is built or run.

A model folder is a stranger's input like an image: ``plans.json``, ``dataset.json`` and each
``checkpoint_*.pth`` are checked for type, range and count before use — patch and spacing positive
and finite, a transpose that is a permutation, normalisation schemes voxpipe knows with finite
intensity properties, label values unique and within the uint8 map voxpipe writes, regions within
the classes, channel keys ``"0"``, ``"1"``, ..., mirroring axes within the image, a network whose
size fits in memory (estimated from the plans before any allocation) and whose outputs match the
labels, and finite weights. A failure is one :class:`~voxpipe.errors.BundleError` line naming the
file, the key, what was expected and what was found (exit 2; never blamed on the image).

Why our own: nnU-Net's ``PlansManager`` and ``LabelManager`` trust their files (assertions, or an
``IndexError`` deep in preprocessing), and a checkpoint's fields are read as pickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from voxpipe.errors import BundleError, Fields

#: The label maps voxpipe writes are uint8 (as nnU-Net's for fewer than 256 classes).
MAX_LABEL = 255
_DIMS = (2, 3)


def check_labels_json(dataset: Mapping[str, Any], source: str) -> None:
    """``dataset.json``'s ``labels``, ``regions_class_order`` and ``channel_names`` (module doc)."""
    fields = Fields(source)
    labels = fields.mapping(dataset.get("labels"), "labels")
    if not labels:
        raise fields.fail("labels", "name → value entries", "none", shown=False)
    if "background" not in labels:
        raise fields.fail("labels", "a 'background': 0 entry", sorted(labels)[:8])
    background = labels["background"]
    if isinstance(background, list) and len(background) == 1:
        background = background[0]
    if isinstance(background, bool) or background != 0 or not isinstance(background, int):
        raise fields.fail("labels.background", "0", labels["background"])
    plain: dict[int, str] = {}
    regions = 0
    for name, value in labels.items():
        key = f"labels.{name}"
        if name == "background":
            continue
        if name == "ignore":
            fields.integer(value, key, low=1, high=MAX_LABEL)
            continue
        if isinstance(value, list):
            members = fields.integers(value, key, low=0, high=MAX_LABEL)
            if not members:
                raise fields.fail(key, "at least one value", value)
            if len(members) > 1:
                regions += 1
                continue
            value = members[0]
        number = fields.integer(value, key, low=0, high=MAX_LABEL)
        if number in plain:
            raise fields.fail(
                key,
                f"a value of its own (labels.{plain[number]} is {number} too)",
                value,
                hint="each label needs a distinct value; regions are lists of values",
            )
        plain[number] = str(name)
    if regions:
        order = fields.integers(
            dataset.get("regions_class_order"), "regions_class_order", low=1, high=MAX_LABEL
        )
        if len(set(order)) != len(order):
            raise fields.fail("regions_class_order", "distinct values", order)
    channels = dataset.get("channel_names", dataset.get("modality"))
    channels = fields.mapping(channels, "channel_names")
    if not channels:
        raise fields.fail("channel_names", "at least one channel", "none", shown=False)
    expected = [str(i) for i in range(len(channels))]
    if set(map(str, channels)) != set(expected):
        raise fields.fail(
            "channel_names",
            f"keys {', '.join(repr(k) for k in expected)} (channel index → name)",
            sorted(channels),
        )
    for key, value in channels.items():
        fields.string(value, f"channel_names.{key}")


def check_plans(
    plans: Mapping[str, Any], configuration: Mapping[str, Any], name: str, source: str, channels: int
) -> None:
    """The resolved ``configuration`` ``name`` of ``plans`` and the plans-wide keys voxpipe reads."""
    from voxpipe.transforms.nnunet import SCHEMES

    fields = Fields(source)
    at = f"configurations.{name}"
    patch = fields.integers(
        configuration.get("patch_size"), f"{at}.patch_size", count=_DIMS, low=1, high=4096
    )
    dims = len(patch)
    fields.numbers(configuration.get("spacing"), f"{at}.spacing", count=(dims,), positive=True)
    schemes = fields.sequence(
        configuration.get("normalization_schemes"), f"{at}.normalization_schemes", count=channels
    )
    for index, scheme in enumerate(schemes):
        if scheme not in SCHEMES:
            raise fields.fail(f"{at}.normalization_schemes[{index}]", f"one of {list(SCHEMES)}", scheme)
    use_mask = configuration.get("use_mask_for_norm")
    if use_mask is not None:
        for index, flag in enumerate(fields.sequence(use_mask, f"{at}.use_mask_for_norm", count=channels)):
            if not isinstance(flag, bool):
                raise fields.fail(f"{at}.use_mask_for_norm[{index}]", "true or false", flag)
    for key in (
        "resampling_fn_data_kwargs",
        "resampling_fn_seg_kwargs",
        "resampling_fn_probabilities_kwargs",
    ):
        kwargs = configuration.get(key)
        if kwargs is None:
            continue
        kwargs = fields.mapping(kwargs, f"{at}.{key}")
        for option in ("order", "order_z"):
            if option in kwargs:
                fields.integer(kwargs[option], f"{at}.{key}.{option}", low=0, high=5)
        if kwargs.get("force_separate_z") not in (None, True, False):
            raise fields.fail(
                f"{at}.{key}.force_separate_z", "true, false or null", kwargs["force_separate_z"]
            )
    axes = list(range(3))
    for key in ("transpose_forward", "transpose_backward"):
        if key in plans and sorted(fields.integers(plans[key], key, count=3)) != axes:
            raise fields.fail(key, "a permutation of [0, 1, 2]", plans[key])
    if "transpose_forward" in plans and "transpose_backward" in plans:
        forward, backward = plans["transpose_forward"], plans["transpose_backward"]
        if [forward[b] for b in backward] != axes:
            raise fields.fail("transpose_backward", f"the inverse of transpose_forward {forward}", backward)
    properties = plans.get("foreground_intensity_properties_per_channel")
    for index, scheme in enumerate(schemes):
        if scheme != "CTNormalization":
            continue
        key = "foreground_intensity_properties_per_channel"
        entry = fields.mapping(fields.mapping(properties, key).get(str(index)), f"{key}.{index}")
        values = {
            k: fields.number(entry.get(k), f"{key}.{index}.{k}")
            for k in ("mean", "std", "percentile_00_5", "percentile_99_5")
        }
        if values["std"] < 0:
            raise fields.fail(f"{key}.{index}.std", "a number >= 0", values["std"])
        if values["percentile_00_5"] > values["percentile_99_5"]:
            raise fields.fail(
                f"{key}.{index}.percentile_00_5",
                f"at most percentile_99_5 ({values['percentile_99_5']})",
                values["percentile_00_5"],
            )
    _check_architecture(fields, configuration, at, dims)


def _check_architecture(fields: Fields, configuration: Mapping[str, Any], at: str, dims: int) -> None:
    architecture = configuration.get("architecture")
    if isinstance(architecture, Mapping):
        kwargs = fields.mapping(architecture.get("arch_kwargs"), f"{at}.architecture.arch_kwargs")
        key = f"{at}.architecture.arch_kwargs"
        stages = fields.integer(kwargs.get("n_stages"), f"{key}.n_stages", low=1, high=12)
        features = fields.integers(
            kwargs.get("features_per_stage"), f"{key}.features_per_stage", count=stages, low=1
        )
        kernels, strides = kwargs.get("kernel_sizes"), kwargs.get("strides")
    elif architecture is not None:
        raise fields.fail(f"{at}.architecture", "an object", type(architecture).__name__, shown=False)
    else:  # the legacy keys
        kernels, strides = configuration.get("conv_kernel_sizes"), configuration.get("pool_op_kernel_sizes")
        if kernels is None and strides is None:
            return  # named by the network builder
        stages = len(fields.sequence(kernels, f"{at}.conv_kernel_sizes"))
        base = fields.integer(
            configuration.get("UNet_base_num_features", 32), f"{at}.UNet_base_num_features", low=1
        )
        ceiling = fields.integer(
            configuration.get("unet_max_num_features", 320), f"{at}.unet_max_num_features", low=1
        )
        features = [min(base * 2**i, ceiling) for i in range(stages)]
        key = at
    source = kwargs if isinstance(architecture, Mapping) else configuration
    for name, count in (
        ("n_conv_per_stage", stages),
        ("n_blocks_per_stage", stages),
        ("n_conv_per_stage_decoder", stages - 1),
        ("n_conv_per_stage_encoder", stages),
    ):
        if name in source:
            value = source[name]
            if isinstance(value, int) and not isinstance(value, bool):
                fields.integer(value, f"{key}.{name}", low=1, high=64)
            else:
                fields.integers(value, f"{key}.{name}", count=count, low=1, high=64)
    kernel_key = "kernel_sizes" if isinstance(architecture, Mapping) else "conv_kernel_sizes"
    stride_key = "strides" if isinstance(architecture, Mapping) else "pool_op_kernel_sizes"
    for index, entry in enumerate(fields.sequence(kernels, f"{key}.{kernel_key}", count=stages)):
        if isinstance(entry, int) and not isinstance(entry, bool):
            entry = [entry] * dims
        fields.integers(entry, f"{key}.{kernel_key}[{index}]", count=dims, low=1, high=15)
    for index, entry in enumerate(fields.sequence(strides, f"{key}.{stride_key}", count=stages)):
        if isinstance(entry, int) and not isinstance(entry, bool):
            entry = [entry] * dims
        fields.integers(entry, f"{key}.{stride_key}[{index}]", count=dims, low=1, high=16)
    check_network_memory(fields, configuration, features, at, dims)


def network_bytes(features: Sequence[int], patch: Sequence[int], kernel_volume: int = 27) -> tuple[int, int]:
    """A U-Net's weights and one window's largest activations in float32 bytes (an upper estimate:
    two convolutions per stage in the encoder and the decoder, the first stage's features at the
    patch's size, three live tensors)."""
    previous, weights = 1, 0
    for width in features:
        weights += 4 * kernel_volume * width * (previous + width) * 2  # encoder and decoder
        previous = width
    voxels = math.prod(int(p) for p in patch)
    return weights, 4 * 3 * int(features[0]) * voxels


def check_resampled_memory(shape: Sequence[int], channels: int, source: str, key: str, spacing: Any) -> None:
    """Refuse resampling an image to a grid whose arrays would not fit in memory (a tiny spacing in the
    plans), before they are allocated: the normalised and the resampled image, float32."""
    from voxpipe.transforms.headers import available_memory

    needed = 2 * 4 * channels * math.prod(int(s) for s in shape)
    available = available_memory()
    if available is not None and needed > available:
        raise BundleError(
            f"{source!r}: {key}: expected a spacing this image can be resampled to in the "
            f"{available / 2**30:.1f} GiB available, found {spacing}: a {list(shape)} grid needs "
            f"{needed / 2**30:.1f} GiB"
        )


def check_network_memory(
    fields: Fields, configuration: Mapping[str, Any], features: Sequence[int], at: str, dims: int
) -> None:
    """Refuse a network whose estimated size exceeds the memory available, before it is allocated."""
    from voxpipe.transforms.headers import available_memory

    weights, activations = network_bytes(features, configuration.get("patch_size") or [1] * dims, 3**dims)
    available = available_memory()
    if available is not None and weights + activations > available:
        raise fields.fail(
            f"{at} features_per_stage",
            f"a network that fits in the {available / 2**30:.1f} GiB available",
            f"{list(features)[:8]}: about {weights / 2**30:.1f} GiB of weights and "
            f"{activations / 2**30:.1f} GiB per window",
            shown=False,
        )


def check_outputs(weights: Mapping[str, Any], heads: int, source: str, dataset: str) -> None:
    """The checkpoint's segmentation head has as many outputs as ``dataset.json``'s labels need."""
    layers = sorted(
        (k for k in weights if re.fullmatch(r"decoder\.seg_layers\.\d+\.weight", k)),
        key=lambda k: int(k.split(".")[2]),
    )
    if layers and int(weights[layers[-1]].shape[0]) != heads:
        raise BundleError(
            f"{source!r}: {layers[-1]}: expected {heads} outputs (the labels or regions of {dataset!r}), "
            f"found {int(weights[layers[-1]].shape[0])}"
        )


__all__ = [
    "MAX_LABEL",
    "check_resampled_memory",
    "check_labels_json",
    "check_outputs",
    "check_plans",
    "network_bytes",
]
