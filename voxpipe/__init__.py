"""voxpipe: 3D CT/MRI segmentation and classification from file to trustworthy results.

Built on MONAI (transforms, networks, bundles), PyTorch and PyTorch-Ignite. See ARCHITECTURE in the
README for the layout: ``transforms``, ``networks`` and ``metrics`` are building blocks;
``pipelines`` is what users run; ``cli`` is a thin shell over ``pipelines``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
