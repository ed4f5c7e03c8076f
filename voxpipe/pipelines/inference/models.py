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


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A pulled model's :data:`MANIFEST`, checked: ``kind``, ``step`` in (0, 1], a bundle's relative
    ``bundle`` folder, or ``parts`` (relative folders inside the model, each label → a merged label
    in 1..255) and ``labels`` (merged label → name).

    Raises:
        InputError: unreadable or not an object (named, with its fix); BundleError: a field (named).
    """
    from voxpipe.pipelines.inference.downloads import read_json_record
    from voxpipe.pipelines.inference.nnunet.validate import MAX_LABEL, Fields

    path = Path(folder) / MANIFEST
    manifest = read_json_record(path, what="the manifest voxpipe models pull writes")
    fields = Fields(str(path))

    def inside(value: Any, key: str) -> str:
        relative = fields.string(value, key)
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise fields.fail(key, "a folder inside the model", relative)
        return relative

    kind = manifest.get("kind")
    if kind not in ("bundle", "nnunet", "nnunet-parts", "totalseg"):
        raise fields.fail("kind", "bundle, nnunet or nnunet-parts", kind)
    if "step" in manifest:
        step = fields.number(manifest["step"], "step", positive=True)
        if step > 1:
            raise fields.fail("step", "a fraction of the patch in (0, 1]", step)
    if kind == "bundle":
        inside(manifest.get("bundle"), "bundle")
        return manifest
    parts = fields.sequence(manifest.get("parts"), "parts")
    if not parts:
        raise fields.fail("parts", "at least one part", "none", shown=False)
    for index, part in enumerate(parts):
        part = fields.mapping(part, f"parts[{index}]")
        inside(part.get("folder"), f"parts[{index}].folder")
        for source, target in fields.mapping(part.get("labels"), f"parts[{index}].labels").items():
            if not str(source).isdigit():
                raise fields.fail(f"parts[{index}].labels", "label values as keys", source)
            fields.integer(target, f"parts[{index}].labels.{source}", low=1, high=MAX_LABEL)
    for value, name in fields.mapping(manifest.get("labels", {}), "labels").items():
        if not str(value).isdigit() or int(value) > MAX_LABEL:
            raise fields.fail("labels", f"label values 0..{MAX_LABEL} as keys", value)
        fields.string(name, f"labels.{value}")
    return manifest


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


__all__ = ["MANIFEST", "is_multipart", "is_nnunet_folder", "merge_parts", "model_kind", "read_manifest"]
