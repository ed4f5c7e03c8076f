"""Pure metric functions: arrays in, floats out, spacing in mm honoured (overlap, surface, lesions, classification).
A building block: imports numpy/scipy only, never voxpipe.pipelines or voxpipe.cli.
"""

from __future__ import annotations

from voxpipe.metrics.overlap import dice

__all__ = ["dice"]
