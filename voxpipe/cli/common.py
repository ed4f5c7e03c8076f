"""Helpers shared by the verb modules of :mod:`voxpipe.cli`."""

from __future__ import annotations

import logging
import math


def quiet_monai_bundle(verbose: int) -> None:
    """Silence MONAI's bundle-runner notes (logging set-up, optional GPU codecs) unless -v.

    voxpipe configures logging and checks bundle properties itself. MONAI's loggers set their own
    level when their module is imported, so this runs after the import, in the commands that need it.
    """
    import monai.bundle.workflows  # noqa: F401  (the import creates the loggers)

    for name in ("monai.bundle.workflows", "monai.data.nvimgcodec_pydicom_plugin"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def format_metric(value: float | None) -> str:
    """Six characters: the value to 3 decimals, or a dash when it is undefined (None, nan, inf)."""
    undefined = value is None or (isinstance(value, float) and not math.isfinite(value))
    return "   -  " if undefined else f"{value:6.3f}"
