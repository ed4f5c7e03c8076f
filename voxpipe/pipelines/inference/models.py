"""What a model is, for ``voxpipe infer``: a MONAI bundle, an nnU-Net model folder, or a model of several
nnU-Net parts (a pulled multi-part task), and how the parts' label maps are merged into one.

The runs themselves go through the one predictor (:mod:`voxpipe.pipelines.inference.predictor`) and
the one case loop (:mod:`voxpipe.pipelines.inference.cases`); this module only tells the kinds apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The file a pulled catalogue model keeps beside its parts (written by the catalogue's pull).
MANIFEST = "voxpipe-model.json"


def is_nnunet_folder(path: str | os.PathLike[str]) -> bool:
    """A folder with nnU-Net's ``plans.json`` and ``dataset.json`` (not a MONAI bundle)."""
    folder = Path(path)
    return (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()


def is_multipart(path: str | os.PathLike[str]) -> bool:
    """A pulled catalogue model: a folder with :data:`MANIFEST` naming its nnU-Net parts."""
    return (Path(path) / MANIFEST).is_file()


def model_kind(path: str | os.PathLike[str]) -> str:
    """``"nnunet"`` (a model folder or a multi-part model made of them) or ``"bundle"``."""
    return "nnunet" if is_nnunet_folder(path) or is_multipart(path) else "bundle"


def merge_parts(part_maps: Sequence[Any], parts: Sequence[Mapping[str, Any]]) -> Any:
    """One label map from the parts' maps (same grid): each part's labels mapped through its manifest
    entry, in part order, later parts overwriting where they found something (TotalSegmentator's rule)."""
    merged = np.zeros(part_maps[0].shape, dtype=np.uint8)
    for array, part in zip(part_maps, parts, strict=True):
        mapping = {int(k): int(v) for k, v in part["labels"].items()}
        lut = np.zeros(max(int(array.max()), max(mapping, default=0)) + 1, dtype=np.uint8)
        for source, target in mapping.items():
            lut[source] = target
        mapped = lut[array]
        np.copyto(merged, mapped, where=mapped != 0)
    return merged


__all__ = ["MANIFEST", "is_multipart", "is_nnunet_folder", "merge_parts", "model_kind"]
