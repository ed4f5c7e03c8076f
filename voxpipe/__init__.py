"""voxpipe: 3D CT/MRI segmentation and classification from file to trustworthy results.

Built on MONAI (transforms, networks, bundles), PyTorch and PyTorch-Ignite. Layout (README, Layout):
``transforms``, ``networks``, ``metrics`` and ``phantoms`` are building blocks; ``pipelines`` is what
users run, one subpackage per capability; ``cli`` is a thin shell over ``pipelines``.
"""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__"]
