"""One registry: network name → builder with 3D CT defaults (in_channels=1).

MONAI has the networks; this adds one place that builds them by name from a bundle
(``_target_: voxpipe.networks.build_network``) and answers a typo with the valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from monai.networks.nets import SegResNet, UNet

from voxpipe.errors import InputError


def _segresnet(*, in_channels: int = 1, out_channels: int = 3, init_filters: int = 16, **kwargs: Any) -> torch.nn.Module:
    kwargs.setdefault("blocks_down", (1, 2, 2, 4))
    kwargs.setdefault("blocks_up", (1, 1, 1))
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, init_filters=init_filters, **kwargs)


def _unet3d(*, in_channels: int = 1, out_channels: int = 2, **kwargs: Any) -> torch.nn.Module:
    kwargs.setdefault("channels", (16, 32, 64, 128, 256))
    kwargs.setdefault("strides", (2, 2, 2, 2))
    kwargs.setdefault("num_res_units", 2)
    kwargs.setdefault("norm", "instance")
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)


_REGISTRY: dict[str, tuple[Callable[..., torch.nn.Module], str]] = {
    "segresnet": (_segresnet, "MONAI SegResNet (Myronenko 2018), 3 downsamplings: patch sides divisible by 8"),
    "unet3d": (_unet3d, "MONAI residual 3D U-Net, 4 downsamplings: patch sides divisible by 16"),
}


def list_networks() -> dict[str, str]:
    """Registered network names and a one-line description of each."""
    return {name: description for name, (_, description) in _REGISTRY.items()}


def build_network(name: str, *, device: str | torch.device | None = None, **kwargs: Any) -> torch.nn.Module:
    """Build a registered network by name, optionally moved to ``device``.

    Args:
        name: a key of :func:`list_networks`.
        device: where to put the parameters (``None`` leaves them on the CPU).
        **kwargs: passed to the MONAI constructor (``in_channels``, ``out_channels``, ...).

    Raises:
        InputError: unknown name (the message lists the valid ones and the closest match) or
            arguments the network does not accept.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" By {name!r}, did you mean {close[0]!r}?" if close else ""
        raise InputError(f"network name: expected one of {sorted(_REGISTRY)}, found {name!r}.{hint}")
    builder, _ = _REGISTRY[name]
    try:
        network = builder(**kwargs)
    except TypeError as error:
        raise InputError(f"network {name!r}: bad arguments {sorted(kwargs)} ({error})") from error
    return network.to(device) if device is not None else network
