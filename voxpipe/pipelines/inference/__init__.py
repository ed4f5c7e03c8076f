"""Inference: ``voxpipe infer`` over files and series, the fast sliding-window inferer, per-case statistics; ``voxpipe detect``.
May import voxpipe.pipelines.bundles, voxpipe.pipelines.training (handlers), building blocks and errors/runtime.
"""
