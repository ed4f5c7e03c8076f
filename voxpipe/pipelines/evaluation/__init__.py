"""Evaluation: challenge-grade scoring against references, the HTML report, cross-validation and selection.
May import voxpipe.pipelines.bundles, .data, .inference and .training, building blocks (metrics, transforms, networks) and errors.
"""
