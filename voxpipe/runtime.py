"""Device choice and seeding, shared by training, inference and bundles."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from voxpipe.errors import InputError

logger = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """Pick the compute device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Raises:
        InputError: CUDA was asked for explicitly but is not available, or the name is unknown.
    """
    preference = str(preference).strip().lower()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"device: expected an available CUDA device for {preference!r}, found none on this machine"
            )
        return torch.device(preference)
    if preference == "cpu":
        return torch.device("cpu")
    raise InputError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', found {preference!r}")


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
