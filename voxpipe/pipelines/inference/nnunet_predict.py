"""Where ``voxpipe bundle import-nnunet`` pointed bundles before the nnU-Net code moved to
:mod:`voxpipe.pipelines.inference.nnunet`: bundles written then name this module's ``run_nnunet_bundle``
in their ``configs/inference.json``, and keep running."""

from __future__ import annotations

from voxpipe.pipelines.inference.nnunet.bundle import run_nnunet_bundle

__all__ = ["run_nnunet_bundle"]
