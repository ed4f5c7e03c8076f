"""One registry: network name → builder with 3D CT defaults (in_channels=1), its task and size contract.

MONAI has the networks; this adds one place that builds them by name from a bundle
(``_target_: voxpipe.networks.build_network``), answers a typo with the valid names, states which
patch sizes each accepts, and reports size and cost (:func:`network_cost`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks import nets
from torch.utils.flop_counter import FlopCounterMode

from voxpipe.errors import InputError


@dataclass(frozen=True)
class NetworkSpec:
    """What the registry knows about a network.

    Attributes:
        builder: keyword arguments → ``torch.nn.Module``.
        description: one line for ``voxpipe networks list``.
        task: ``"segmentation"`` (output (B, C, X, Y, Z)) or ``"classification"`` (output (B, C)).
        divisor: every patch side must be a multiple of this (voxels).
        fixed_size: ``True`` when the network is built for one input size (``img_size``).
        min_size: smallest patch side (voxels) it trains on.
        encoder: regular expressions matching the parameter names of the encoder (the part that
            ``freeze="encoder"`` and feature extraction keep fixed).
        head: regular expressions matching the output head (the layers whose shape depends on the
            number of classes).
    """

    builder: Callable[..., torch.nn.Module]
    description: str
    task: str
    divisor: int
    fixed_size: bool = False
    min_size: int = 16
    encoder: tuple[str, ...] = ()
    head: tuple[str, ...] = ()


def _segresnet(
    *, in_channels: int = 1, out_channels: int = 3, init_filters: int = 16, **kwargs: Any
) -> torch.nn.Module:
    kwargs.setdefault("blocks_down", (1, 2, 2, 4))
    kwargs.setdefault("blocks_up", (1, 1, 1))
    return nets.SegResNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        **kwargs,
    )


def _segresnet_ds(
    *, in_channels: int = 1, out_channels: int = 3, init_filters: int = 32, **kwargs: Any
) -> torch.nn.Module:
    kwargs.setdefault("blocks_down", (1, 2, 2, 4))
    kwargs.setdefault("dsdepth", 3)
    return nets.SegResNetDS(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        **kwargs,
    )


def _unet3d(*, in_channels: int = 1, out_channels: int = 2, **kwargs: Any) -> torch.nn.Module:
    kwargs.setdefault("channels", (16, 32, 64, 128, 256))
    kwargs.setdefault("strides", (2, 2, 2, 2))
    kwargs.setdefault("num_res_units", 2)
    kwargs.setdefault("norm", "instance")
    return nets.UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _dynunet(*, in_channels: int = 1, out_channels: int = 3, **kwargs: Any) -> torch.nn.Module:
    # nnU-Net-like 3D full-resolution layout: 5 levels, 4 stride-2 downsamplings, residual blocks.
    kwargs.setdefault("kernel_size", [3, 3, 3, 3, 3])
    kwargs.setdefault("strides", [1, 2, 2, 2, 2])
    kwargs.setdefault("upsample_kernel_size", [2, 2, 2, 2])
    kwargs.setdefault("res_block", True)
    return nets.DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _attention_unet(*, in_channels: int = 1, out_channels: int = 3, **kwargs: Any) -> torch.nn.Module:
    kwargs.setdefault("channels", (16, 32, 64, 128))
    kwargs.setdefault("strides", (2, 2, 2))
    return nets.AttentionUnet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _swin_unetr(
    *, in_channels: int = 1, out_channels: int = 3, feature_size: int = 24, **kwargs: Any
) -> torch.nn.Module:
    return nets.SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        spatial_dims=3,
        **kwargs,
    )


def _unetr(
    *,
    in_channels: int = 1,
    out_channels: int = 3,
    img_size: tuple[int, int, int] = (96, 96, 96),
    **kwargs: Any,
) -> torch.nn.Module:
    kwargs.setdefault("feature_size", 16)
    return nets.UNETR(
        in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size), spatial_dims=3, **kwargs
    )


def _densenet(cls: type[torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    def build(*, in_channels: int = 1, out_channels: int = 2, **kwargs: Any) -> torch.nn.Module:
        return cls(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)

    return build


def _resnet(
    *, in_channels: int = 1, out_channels: int = 2, depth: int = 18, **kwargs: Any
) -> torch.nn.Module:
    factories = {18: nets.resnet18, 34: nets.resnet34, 50: nets.resnet50}
    if depth not in factories:
        raise InputError(f"resnet depth: expected one of {sorted(factories)}, found {depth!r}")
    return factories[depth](spatial_dims=3, n_input_channels=in_channels, num_classes=out_channels, **kwargs)


# Parameter-name patterns. MONAI's UNet and AttentionUnet nest each level in ``.1.submodule``:
# the down block of a level is its ``.0``, the bottom block sits directly in the deepest submodule.
_UNET_ENCODER = (r"^model(\.1\.submodule)*\.0\.", r"^model(\.1\.submodule)+\.(conv|residual)\.")
_DENSENET = {"encoder": (r"^features\.",), "head": (r"^class_layers\.",)}

_REGISTRY: dict[str, NetworkSpec] = {
    "unet3d": NetworkSpec(
        _unet3d,
        "MONAI residual 3D U-Net (Çiçek 2016 style), 4 downsamplings",
        "segmentation",
        16,
        encoder=_UNET_ENCODER,
        head=(r"^model\.2\.",),
    ),
    "segresnet": NetworkSpec(
        _segresnet,
        "MONAI SegResNet (Myronenko 2018), 3 downsamplings",
        "segmentation",
        8,
        encoder=(r"^convInit\.", r"^down_layers\."),
        head=(r"^conv_final\.",),
    ),
    "segresnet_ds": NetworkSpec(
        _segresnet_ds,
        "MONAI SegResNetDS, deep supervision (training returns a list of scales)",
        "segmentation",
        8,
        encoder=(r"^encoder\.",),
        head=(r"^up_layers\.\d+\.head\.",),
    ),
    "dynunet": NetworkSpec(
        _dynunet,
        "MONAI DynUNet, nnU-Net-like 3D full-resolution layout",
        "segmentation",
        16,
        encoder=(r"^input_block\.", r"^downsamples\.", r"^bottleneck\."),
        head=(r"^output_block\.", r"^deep_supervision_heads\."),
    ),
    "attention_unet": NetworkSpec(
        _attention_unet,
        "MONAI Attention U-Net (Oktay 2018)",
        "segmentation",
        8,
        encoder=(r"^model\.0\.", r"^model(\.1\.submodule)+\.0\.", r"^model(\.1\.submodule)+\.conv\."),
        head=(r"^model\.2\.",),
    ),
    "swin_unetr": NetworkSpec(
        _swin_unetr,
        "MONAI SwinUNETR (Hatamizadeh 2022), Swin transformer encoder",
        "segmentation",
        32,
        min_size=64,
        encoder=(r"^swinViT\.", r"^encoder\d+\."),
        head=(r"^out\.",),
    ),
    "unetr": NetworkSpec(
        _unetr,
        "MONAI UNETR (Hatamizadeh 2022), ViT encoder for one img_size",
        "segmentation",
        16,
        fixed_size=True,
        encoder=(r"^vit\.", r"^encoder\d+\."),
        head=(r"^out\.",),
    ),
    "densenet121": NetworkSpec(
        _densenet(nets.DenseNet121), "MONAI 3D DenseNet-121 classifier", "classification", 1, **_DENSENET
    ),
    "densenet169": NetworkSpec(
        _densenet(nets.DenseNet169), "MONAI 3D DenseNet-169 classifier", "classification", 1, **_DENSENET
    ),
    "densenet201": NetworkSpec(
        _densenet(nets.DenseNet201), "MONAI 3D DenseNet-201 classifier", "classification", 1, **_DENSENET
    ),
    "resnet": NetworkSpec(
        _resnet,
        "MONAI 3D ResNet classifier (depth 18, 34 or 50)",
        "classification",
        1,
        encoder=(r"^(conv1|bn1|layer\d)\.",),
        head=(r"^fc\.",),
    ),
}


def list_networks() -> dict[str, str]:
    """Registered network names and a one-line description of each."""
    return {name: spec.description for name, spec in _REGISTRY.items()}


def network_spec(name: str) -> NetworkSpec:
    """The :class:`NetworkSpec` of a registered name.

    Raises:
        InputError: unknown name; the message lists the valid ones and the closest match.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" By {name!r}, did you mean {close[0]!r}?" if close else ""
        raise InputError(f"network name: expected one of {sorted(_REGISTRY)}, found {name!r}.{hint}")
    return _REGISTRY[name]


def build_network(
    name: str,
    *,
    device: str | torch.device | None = None,
    weights: str | os.PathLike[str] | None = None,
    freeze: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a registered network by name, optionally from pretrained weights, moved to ``device``.

    Args:
        name: a key of :func:`list_networks`.
        device: where to put the parameters (``None`` leaves them on the CPU).
        weights: fine-tune from this weights file (voxpipe/MONAI checkpoint or state dict). Tensors
            whose shape differs (an output head for another class count) keep their initialisation;
            the load report is logged (see :func:`voxpipe.networks.transfer.load_weights`).
        freeze: with or without ``weights``: ``"encoder"``, ``"backbone"`` (all but the output head)
            or module names to freeze (see :func:`voxpipe.networks.transfer.freeze`).
        **kwargs: passed to the MONAI constructor (``in_channels``, ``out_channels``, ...).

    Raises:
        InputError: unknown name (the message lists the valid ones and the closest match),
            arguments the network does not accept, or unusable weights.
    """
    spec = network_spec(name)
    try:
        network = spec.builder(**kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise InputError(f"network {name!r}: bad arguments {sorted(kwargs)} ({error})") from error
    if weights is not None:
        from voxpipe.networks.transfer import prepare_pretrained  # transfer imports this module

        prepare_pretrained(network, name, weights=weights, freeze_part=freeze)
    elif freeze:
        from voxpipe.networks.transfer import freeze as freeze_part

        freeze_part(network, name, freeze)
    return network.to(device) if device is not None else network


@dataclass(frozen=True)
class NetworkCost:
    """Size and cost of a network: parameters and forward GFLOPs for one ``size``³ input."""

    parameters: int
    gflops: float
    size: int


def network_cost(name: str, *, size: int = 96, **kwargs: Any) -> NetworkCost:
    """Parameters and forward-pass GFLOPs for one (1, 1, size, size, size) input.

    Sizes below the network's ``min_size`` are raised to it (the result's ``size`` tells).

    FLOPs are counted by ``torch.utils.flop_counter`` on the meta device (shapes only, no compute);
    networks that need real values during the forward pass (SwinUNETR) are run once on the CPU.
    """
    spec = network_spec(name)
    size = max(size, spec.min_size)  # NetworkCost.size says which size was measured
    if spec.fixed_size:
        kwargs.setdefault("img_size", (size, size, size))

    def count(device: str) -> tuple[int, float]:
        with torch.device(device):
            network = build_network(name, **kwargs).eval()
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                network(torch.zeros(1, 1, size, size, size))
        return sum(p.numel() for p in network.parameters()), counter.get_total_flops() / 1e9

    try:
        parameters, gflops = count("meta")
    except (RuntimeError, NotImplementedError):
        parameters, gflops = count("cpu")
    return NetworkCost(parameters, gflops, size)
