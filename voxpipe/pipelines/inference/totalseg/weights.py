"""The TotalSegmentator weights folder already on the machine, used in place (no download, no copy).

TotalSegmentator looks in ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
``~/.totalsegmentator/nnunet/results`` (``/tmp/.totalsegmentator`` where the home is ``/``, as in its
Docker image); voxpipe looks in the same places in the same order, and ``voxpipe models pull`` writes
there. Each model is ``<root>/<DatasetNNN_name>/<trainer>__<plans>__<configuration>``: the exact folder
TotalSegmentator's table names for the task, never the first ``DatasetNNN_*`` found.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from voxpipe.errors import InputError
from voxpipe.pipelines.inference.totalseg.tasks import LICENCE_URL, dataset_folder, release


def weights_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where TotalSegmentator keeps its weights on this machine (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(env["TOTALSEG_WEIGHTS_PATH"])
    if env.get("TOTALSEG_HOME_DIR"):
        home = Path(env["TOTALSEG_HOME_DIR"])
    else:
        user = Path(env["HOME"]) if env.get("HOME") else Path.home()
        home = (Path("/tmp") if str(user) == "/" else user) / ".totalsegmentator"
    return home / "nnunet" / "results"


def model_folder(
    root: Path, task_id: int, trainer: str, plans: str, configuration: str, *, task: str
) -> Path:
    """The nnU-Net model folder of TotalSegmentator model ``task_id``.

    Raises:
        InputError: the folder is not there (named, with how to get it).
    """
    dataset = root / dataset_folder(task_id)
    folder = dataset / f"{trainer}__{plans}__{configuration}"
    if (folder / "plans.json").is_file():
        return folder
    if release(task_id) is None:
        hint = (
            f"{task!r} is a licensed TotalSegmentator task: get a licence ({LICENCE_URL}), let "
            "TotalSegmentator download its weights once, then voxpipe uses them in place"
        )
    else:
        hint = (
            f"voxpipe models pull {task} (into {root}); or set TOTALSEG_WEIGHTS_PATH to the folder "
            "holding TotalSegmentator's Dataset folders"
        )
    found = (
        "no such folder"
        if not dataset.is_dir()
        else f"{dataset.name} holds {sorted(p.name for p in dataset.iterdir())[:6]}"
    )
    raise InputError(
        f"{str(folder)!r}: expected TotalSegmentator's model {task_id} for task {task!r} "
        f"(plans.json, dataset.json, fold_K/checkpoint_final.pth), found {found}",
        hint=hint,
    )


__all__ = ["model_folder", "weights_root"]
