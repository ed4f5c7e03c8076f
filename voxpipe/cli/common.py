"""Helpers shared by the verb modules of :mod:`voxpipe.cli`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any


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


def bundle_options(args: Any) -> dict[str, Any]:
    """``voxpipe infer``'s options that only MONAI bundles take (flag → the value given)."""
    return {
        "--weights": args.weights,
        "--set": args.set,
        "--precision": args.precision,
        "--compile": args.compile,
        "--organ-roi": args.organ_roi,
        "--timings": args.timings,
        "--format": args.format if args.format != "nii.gz" else None,
    }


def refuse_options(given: Mapping[str, Any], model: str, runs_without: str, *, hint: str) -> None:
    """Refuse the options in ``given`` (flag → value) that were set, for a model kind they do not
    apply to: one line, ``'MODEL': RUNS_WITHOUT --a, --b``, with ``hint``.

    Raises:
        InputError: any of them was set.
    """
    from voxpipe.errors import InputError

    named = [flag for flag, value in given.items() if value]
    if named:
        raise InputError(f"{model!r}: {runs_without.format(options=', '.join(named))}", hint=hint)
