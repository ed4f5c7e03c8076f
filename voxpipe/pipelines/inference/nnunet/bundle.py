"""``voxpipe bundle import-nnunet``: a MONAI bundle that runs an nnU-Net model folder, and its ``run``.

The bundle's ``configs/inference.json`` calls :func:`run_nnunet_bundle` with plain config values, so
``python -m monai.bundle run`` and ``voxpipe`` run the folder the same way as ``voxpipe infer FOLDER``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voxpipe.errors import BundleError
from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder
from voxpipe.pipelines.inference.nnunet.run import infer_with_nnunet


def run_nnunet_bundle(
    *,
    bundle_root: str | os.PathLike[str],
    datalist: Sequence[Any],
    output_dir: str | os.PathLike[str],
    folds: Sequence[int | str] | None = None,
    tta: bool = False,
    step: float = 0.5,
) -> list[str]:
    """The ``run`` of a bundle written by :func:`import_nnunet`: the nnU-Net folder under
    ``<bundle_root>/models/<Trainer>__<Plans>__<configuration>`` on the datalist's images (entries ``{"image": path}`` or paths),
    as ``voxpipe infer`` runs it. MONAI's runner calls this with plain config values."""
    images = [str(e["image"]) if isinstance(e, Mapping) else str(e) for e in datalist]
    found = sorted(p.parent for p in (Path(bundle_root) / "models").glob("*__*__*/plans.json"))
    if len(found) != 1:
        raise BundleError(
            f"{str(Path(bundle_root) / 'models')!r}: expected one nnU-Net model folder "
            f"(<Trainer>__<Plans>__<configuration>), found {len(found)}"
        )
    outputs = infer_with_nnunet(found[0], images, output_dir=output_dir, folds=folds, tta=tta, step=step)
    return [str(p) for p in outputs]


def import_nnunet(folder: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write a MONAI bundle that runs an nnU-Net model folder: ``configs/inference.json`` (its ``run``
    is :func:`run_nnunet_bundle`), ``configs/metadata.json`` (labels, channels, licence unknown),
    and the folder's plans, dataset and checkpoints under ``models/<the folder's name>/``. ``python -m monai.bundle
    run --config_file configs/inference.json --meta_file configs/metadata.json --bundle_root B
    --datalist "['ct.nii.gz']" --output_dir OUT`` then writes what ``voxpipe infer FOLDER`` writes.

    Raises:
        BundleError: the folder does not load; OutputError: ``output`` exists and is not empty.
    """
    import json
    import shutil

    from voxpipe.errors import OutputError
    from voxpipe.transforms.files import write_text_atomic

    model = NnUNetFolder(folder)
    target = Path(output)
    if target.exists() and any(target.iterdir()):
        raise OutputError(
            f"{str(target)!r}: expected a new or empty folder for the bundle, found files in it"
        )
    copied = target / "models" / model.path.name  # the name says the configuration
    copied.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model.path / name, copied / name)
    for checkpoint in model.checkpoints:
        (copied / checkpoint.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(checkpoint, copied / checkpoint.parent.name / checkpoint.name)
    inference = {
        "bundle_root": ".",
        "output_dir": "predictions",
        "datalist": [],
        "folds": None,
        "tta": False,
        "step": 0.5,
        "run": {
            "_target_": "voxpipe.pipelines.inference.nnunet.bundle.run_nnunet_bundle",
            "bundle_root": "@bundle_root",
            "datalist": "@datalist",
            "output_dir": "@output_dir",
            "folds": "@folds",
            "tta": "@tta",
            "step": "@step",
        },
    }
    channel_def = {str(k): v for k, v in model.labels.names.items()}
    metadata = {
        "version": "0.1.0",
        "monai_version": "*",
        "pytorch_version": "*",
        "numpy_version": "*",
        "name": f"{model.path.name} (nnU-Net v2)",
        "task": f"nnU-Net {model.configuration_name} segmentation, imported by voxpipe bundle import-nnunet",
        "description": f"Runs the nnU-Net model folder {model.path.name} ({len(model.checkpoints)} fold(s)) as "
        "nnU-Net 2.8's predictor does (voxpipe.pipelines.inference.nnunet).",
        "authors": "the model's authors (nnU-Net folder); bundle written by voxpipe",
        "copyright": "see the model's own licence",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if "CT" in model.channels else "magnitude",
                    "num_channels": len(model.channels),
                    "spatial_shape": [int(v) for v in model.configuration.get("patch_size", [])],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): c for i, c in enumerate(model.channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": model.labels.heads,
                    "spatial_shape": [int(v) for v in model.configuration.get("patch_size", [])],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
    }
    (target / "configs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "configs" / "inference.json", json.dumps(inference, indent=2) + "\n")
    write_text_atomic(target / "configs" / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    return target


__all__ = ["import_nnunet", "run_nnunet_bundle"]
