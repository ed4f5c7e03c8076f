"""Device choice and seeding, shared by training, inference and bundles."""

from __future__ import annotations

import logging

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
