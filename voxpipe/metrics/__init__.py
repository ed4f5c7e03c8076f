"""Pure metric functions: arrays in, floats out, spacing in mm honoured."""

from __future__ import annotations

from voxpipe.metrics.overlap import dice

__all__ = ["dice"]
