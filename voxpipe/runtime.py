"""Device choice and seeding, shared by training, inference and bundles."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from voxpipe.errors import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


DEVICE_NAMES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def device_name(text: str) -> str:
    """A device name as the user wrote it, checked for its form only (argparse ``type``): ``auto``,
    ``cpu``, ``cuda``, ``cuda:N``, ``mps``. Whether the device exists is :func:`select_device`'s to say."""
    import argparse
    import re

    name = str(text).strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_NAMES}, found {text!r}")
    return name


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def select_device(preference: str = "auto") -> torch.device:
    """Pick the compute device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"`` (Apple GPUs).

    Raises:
        InputError: a GPU was asked for explicitly but is not available, or the name is unknown.
    """
    import torch  # here, not at import: the CLI's argument checks use this module without torch

    preference = str(preference).strip().lower()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device: expected an available CUDA device for {preference!r}, found none on this machine"
            )
        device = torch.device(preference)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device: expected one of the {torch.cuda.device_count()} CUDA device(s) of this machine, "
                f"found {preference!r}"
            )
        return device
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("device: expected an available Apple GPU for 'mps', found none on this machine")
        return torch.device("mps")
    raise InputError(f"device: expected {DEVICE_NAMES}, found {preference!r}")


def optional_module(name: str, *, extra: str, feature: str) -> Any:
    """Import ``name``, a dependency of an optional feature; a missing one is the user's to install.

    Raises:
        InputError: ``name`` is not installed; the message names the feature and the extra that brings
            it (``pip install 'voxpipe[serve]'``). Exit code 2 in the CLI.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise InputError(
            f"{feature} needs the package {name.split('.')[0]!r}, which is not installed ({error})",
            hint=f"pip install 'voxpipe[{extra}]'",
        ) from None
