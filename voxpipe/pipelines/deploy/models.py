"""What the DICOM node runs when it is not a MONAI bundle: a TotalSegmentator task (as TotalSegmentator
runs it, from its weights folder) or an nnU-Net model folder (as ``nnUNetv2_predict`` runs it), named
as ``voxpipe infer`` names them.

Each gives, for one series, the label map on the series' grid (as voxpipe loads it), the structures'
names and the statistics the SR reports (volume, mean CT number); the node writes the DICOM-SEG and
the SR from them exactly as it does for a bundle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from voxpipe.errors import InputError


def node_model_kind(model: str | os.PathLike[str]) -> str:
    """``"totalseg"`` (a TotalSegmentator task name), ``"nnunet"`` (a model folder) or ``"bundle"``."""
    from voxpipe.pipelines.inference.models import model_kind
    from voxpipe.pipelines.inference.totalseg.tasks import is_task

    path = Path(model)
    if not path.exists() and is_task(str(model)):
        return "totalseg"
    if path.is_dir() and model_kind(path) == "nnunet":
        return "nnunet"
    return "bundle"


class NodeModel:
    """A TotalSegmentator task or an nnU-Net model folder, loaded once, run series by series."""

    def __init__(self, model: str | os.PathLike[str], *, device: str = "auto") -> None:
        self.name = str(model)
        self.kind = node_model_kind(model)
        self.device = device
        if self.kind == "totalseg":
            from voxpipe.pipelines.inference.totalseg.pipeline import TotalSegmentator
            from voxpipe.pipelines.inference.totalseg.tasks import models_of, task
            from voxpipe.pipelines.inference.totalseg.weights import model_folder

            self.runner = TotalSegmentator(device=device)
            spec = task(self.name)
            for task_id in models_of(self.name):  # every model there before the node listens
                if task_id in spec.task_ids:
                    model_folder(
                        self.runner.root,
                        task_id,
                        spec.trainer,
                        spec.plans,
                        spec.configuration,
                        task=self.name,
                    )
            self.modality: str | None = "MR" if self.name.endswith("_mr") or spec.modality == "mr" else "CT"
        elif self.kind == "nnunet":
            from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder

            folder = NnUNetFolder(self.name)  # checked now: a bad folder stops the node at start-up
            channel = str(folder.channels[0]).upper() if folder.channels else ""
            self.modality = channel if channel in ("CT", "MR") else None
        else:
            raise InputError(f"{self.name!r}: expected a TotalSegmentator task or an nnU-Net model folder")

    def segment(self, series: Path, out: Path) -> tuple[np.ndarray, dict[int, str], dict[str, Any]]:
        """(label map on the series' grid, value → structure name, statistics per structure name)."""
        from voxpipe.pipelines.inference.stats import case_statistics
        from voxpipe.transforms.io import load_volume, save_nifti

        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "totalseg":
            from voxpipe.pipelines.inference.totalseg.run import on_grid_of, read_image

            image = read_image(series)
            result = self.runner.run(image, self.name)
            volume = load_volume(series)  # the series' own grid, which the DICOM-SEG follows
            label = np.asarray(on_grid_of(result.image, volume.affine).dataobj)
            names = dict(result.labels)
            save_nifti(label, volume.affine, out / "label.nii.gz")
            statistics = case_statistics(label, volume.affine, names=names, image=np.asarray(volume.array))
            (out / "statistics.json").write_text(json.dumps(statistics, indent=2))
            return label, names, statistics
        from voxpipe.pipelines.inference.nnunet.run import infer_with_nnunet

        [written] = infer_with_nnunet(self.name, [series], output_dir=out, tta=True, device=self.device)
        label = load_volume(written, label=True).array
        from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder

        names = {int(k): v for k, v in NnUNetFolder(self.name).labels.names.items() if int(k)}
        statistics = json.loads((out / "statistics.json").read_text())[written.name[: -len(".nii.gz")]]
        return label, names, statistics


__all__ = ["NodeModel", "node_model_kind"]
