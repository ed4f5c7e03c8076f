"""Evaluation: challenge-grade scoring of prediction folders against references, and the HTML report.
May import voxpipe.pipelines.data, .inference and .training (curves), voxpipe.metrics, voxpipe.transforms and errors.
"""
