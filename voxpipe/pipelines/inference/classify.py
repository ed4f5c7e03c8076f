"""Nodule classification for ``voxpipe detect --classify BUNDLE``: a classification bundle (the shipped
``lung_nodule_ct_densenet``) applied to patches around the detected centres.

The scan is brought to the classifier's grid by its own transforms (up to its ``Spacingd``), a patch
of its ``patch_size`` is cut around each detected centre, and the rest of its transforms and its
network give the probability of its ``malignant`` class, for the ``classify_top`` (20) highest-scoring
candidates of each scan.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.utils import convert_to_tensor

from voxpipe.errors import InputError
from voxpipe.transforms.boxes import meta_affine, points_to_voxel

logger = logging.getLogger(__name__)


def _check_classification_bundle(root: Path) -> None:
    """Refuse a bundle whose metadata does not declare a classification output (a segmentation bundle, say)."""
    meta = root / "configs" / "metadata.json"
    try:
        outputs = json.loads(meta.read_text())["network_data_format"]["outputs"]
        formats = [str(o.get("format")) for o in outputs.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(
            f"{str(meta)!r}: expected bundle metadata with network_data_format.outputs, found {error}"
        ) from None
    if "classification" not in formats:
        raise InputError(
            f"{str(root)!r}: expected a nodule classification bundle (an output of format 'classification' "
            f"in configs/metadata.json), found outputs of format {formats}"
        )


class NoduleClassifier:
    """A classification bundle (``lung_nodule_ct_densenet``) applied to patches around world-mm centres.

    Built from the bundle's ``inference`` config: ``network_def``, ``preprocessing_transforms``
    (split after its last ``Spacingd``: the part before runs once per scan, the rest per patch),
    ``patch_size`` and ``class_names``; weights from ``BUNDLE/models/model.pt`` unless given.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        *,
        weights: str | os.PathLike[str] | None = None,
        safe: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        from monai.bundle import ConfigParser

        from voxpipe.networks.transfer import read_state_dict
        from voxpipe.pipelines.bundles.config import find_config
        from voxpipe.pipelines.bundles.safety import check_safe_parser

        root = Path(bundle_dir)
        config = find_config(root, "inference")
        _check_classification_bundle(root)
        parser = ConfigParser()
        parser.read_config(str(config))
        parser.update(
            {
                "bundle_root": str(root.resolve()),
                "device": {
                    "_target_": "voxpipe.runtime.select_device",
                    "preference": torch.device(device).type,
                },
            }
        )
        for key in ("network_def", "preprocessing_transforms", "patch_size"):
            if key not in parser.get():
                raise InputError(
                    f"{str(config)!r}: expected '{key}' (a nodule classification bundle), found no such entry"
                )
        if safe:
            check_safe_parser(parser, name=str(config), bundle_root=root)
        self.network = parser.get_parsed_content("network_def")
        checkpoint = Path(weights) if weights else root / "models" / "model.pt"
        if not checkpoint.is_file():
            raise InputError(
                f"{str(checkpoint)!r}: expected the classifier's weights, found no file",
                hint="train the classifier (voxpipe train configs/lung_nodule_ct_densenet) or pass its weights",
            )
        try:
            self.network.load_state_dict(read_state_dict(checkpoint))
        except RuntimeError as error:
            raise InputError(
                f"{str(checkpoint)!r}: expected weights of the classifier's network_def, found others "
                f"({str(error).splitlines()[0]})"
            ) from None
        self.network.eval()
        self.device = torch.device(device)
        transforms = list(parser.get_parsed_content("preprocessing_transforms"))
        names = [type(t).__name__ for t in transforms]
        if "Spacingd" not in names:
            raise InputError(
                f"{str(config)!r}: expected a Spacingd in preprocessing_transforms (patches are cut on its grid), found {names}"
            )
        cut = len(names) - names[::-1].index("Spacingd")
        from monai.transforms import Compose

        self.scan_transforms, self.patch_transforms = Compose(transforms[:cut]), Compose(transforms[cut:])
        self.patch_size = [int(v) for v in parser.get_parsed_content("patch_size")]
        classes = parser.get_parsed_content("class_names") if "class_names" in parser.get() else None
        self.index = list(classes).index("malignant") if classes and "malignant" in classes else -1
        self.source = str(root)

    def patches(self, image: str | os.PathLike[str], centres: np.ndarray) -> torch.Tensor:
        """The network's inputs (N, C, *patch_size): one patch centred on each world LPS centre (N, 3) of ``image``."""
        from monai.transforms import SpatialCrop

        scan = self.scan_transforms({"image": str(image)})["image"]
        affine = meta_affine(scan)
        size = np.asarray(self.patch_size)
        air = float(scan.min())
        patches = []
        for centre in centres:
            voxel = np.round(points_to_voxel(centre, affine, space="world_lps")[0]).astype(int)
            low = voxel - size // 2
            crop = SpatialCrop(roi_start=np.maximum(low, 0), roi_end=np.minimum(low + size, scan.shape[1:]))(
                scan
            )
            before = np.maximum(-low, 0)  # where the scan ends, pad so the centre stays in the middle
            after = np.maximum(size - np.asarray(crop.shape[1:]) - before, 0)
            widths = [
                int(v) for pair in zip(before[::-1], after[::-1], strict=True) for v in pair
            ]  # F.pad: last axis first
            tensor = convert_to_tensor(crop, track_meta=False)
            patches.append(
                self.patch_transforms({"image": torch.nn.functional.pad(tensor, widths, value=air)})["image"]
            )
        return torch.stack([convert_to_tensor(p, track_meta=False) for p in patches]).float()

    def __call__(self, image: str | os.PathLike[str], centres: np.ndarray) -> np.ndarray:
        """Malignancy probability of the nodule at each world LPS centre (N, 3) of the scan ``image``."""
        centres = np.asarray(centres, dtype=float).reshape(-1, 3)
        if not len(centres):
            return np.zeros(0)
        batch = self.patches(image, centres)
        with torch.no_grad():
            probabilities = torch.softmax(self.network(batch.to(self.device)).float(), dim=1).cpu().numpy()
        return probabilities[:, self.index]


__all__ = ["NoduleClassifier"]
