"""``voxpipe train BUNDLE --folds all``: k-fold cross-validation with out-of-fold probabilities.

Each fold trains with the bundle's train config (``fold: k``, ``output_dir: <output_dir>/fold_k``),
is resumable on its own (``--resume`` continues its ``checkpoints/last.pt``), and then predicts its
validation cases with the bundle's inference config, keeping the probabilities on each case's own
grid (``fold_k/validation/<case>_probabilities.npz``): the out-of-fold predictions that
``voxpipe select`` compares configurations, ensembles and post-processing on. A fold whose final
weights and predictions exist is not run again, so rerunning the command finishes what is missing.
``<output_dir>/cv.json`` records the folds.

Folds run one after the other in a process. Under ``torchrun --nproc_per_node=N`` (one process per
GPU) ``voxpipe train --folds`` gives each rank every N-th fold on its own GPU, each trained as a
single process (no process group: the folds are independent), merged into one ``cv.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voxpipe.errors import InputError
from voxpipe.pipelines.bundles.config import find_config, read_config
from voxpipe.pipelines.bundles.run import run_bundle
from voxpipe.pipelines.data.datalists import split_datalist
from voxpipe.pipelines.inference.infer import infer_with_bundle
from voxpipe.transforms.files import exclusive_lock, write_text_atomic

logger = logging.getLogger(__name__)

# Settings of the training run that must not reach the fold's inference (which writes to fold_K/validation).
_RUN_KEYS = {"output_dir", "split_file", "fold", "resume", "checkpoint", "datalist"}


def parse_folds(text: str | Sequence[int], n_folds: int) -> list[int]:
    """``"all"`` or ``"0,2"`` (or a list) → fold numbers, each checked against the split's ``n_folds``."""
    if isinstance(text, str):
        if text.strip() == "all":
            return list(range(n_folds))
        try:
            folds = [int(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise InputError(
                f"--folds: expected 'all' or fold numbers such as 0,1,2, found {text!r}"
            ) from error
    else:
        folds = [int(v) for v in text]
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad or not folds:
        raise InputError(
            f"--folds: expected folds in 0..{n_folds - 1} (the split has {n_folds}), found {folds or text!r}"
        )
    return sorted(dict.fromkeys(folds))


def _config_values(bundle_dir: Path, overrides: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    parser = ConfigParser(read_config(find_config(bundle_dir, "train")))
    parser["bundle_root"] = str(bundle_dir)
    for key, value in overrides.items():
        parser[key] = value
    return {key: (parser.get_parsed_content(key) if key in parser else None) for key in keys}


def train_folds(
    bundle_dir: str | os.PathLike[str],
    *,
    folds: str | Sequence[int] = "all",
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    worker: tuple[int, int] | None = None,
) -> Path:
    """Train the chosen folds of the bundle's k-fold ``split_file`` and predict each fold's validation cases.

    ``worker=(i, n)``: this process is worker ``i`` of ``n`` (one per GPU, e.g. the ranks of
    ``torchrun``) and takes every n-th of the chosen folds, starting at the i-th; the workers merge
    their folds into one ``cv.json`` under a file lock.

    Returns:
        ``<output_dir>/cv.json``.

    Raises:
        InputError: no k-fold split file in the config, unknown folds, and everything the bundle's
            training and inference raise.
    """
    bundle = Path(bundle_dir).resolve()
    overrides = dict(overrides or {})
    values = _config_values(bundle, overrides, ["split_file", "output_dir", "dataset_dir"])
    split_file = values["split_file"]
    if not split_file:
        raise InputError(
            f"{str(find_config(bundle, 'train'))!r}: 'split_file': expected a k-fold split for --folds, found none",
            hint="voxpipe plan writes one (splits.json); or voxpipe data split DATASET -o split.json --folds 5",
        )
    try:
        split = json.loads(Path(split_file).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{str(split_file)!r}: could not read the split JSON ({error})") from error
    if "folds" not in split:
        raise InputError(
            f"{str(split_file)!r}: expected a k-fold split ('folds'), found parts {sorted(split)}"
        )
    chosen = parse_folds(folds, len(split["folds"]))
    if worker is not None:
        index, count = worker
        chosen = chosen[index::count]
        logger.info("worker %d of %d: folds %s", index + 1, count, chosen)
    base = Path(values["output_dir"]).resolve()
    base.mkdir(parents=True, exist_ok=True)
    record_path = base / "cv.json"
    about = {
        "bundle": str(bundle),
        "dataset_dir": str(values["dataset_dir"]),
        "split_file": str(Path(split_file).resolve()),
        "n_folds": len(split["folds"]),
    }
    inference_keys = _inference_keys(bundle)
    for position, fold in enumerate(chosen, start=1):
        fold_dir = base / f"fold_{fold}"
        final = fold_dir / "models" / "model_final.pt"
        if final.is_file():
            logger.info("fold %d (%d of %d): trained already (%s)", fold, position, len(chosen), final)
        else:
            logger.info("fold %d (%d of %d): training into %s", fold, position, len(chosen), fold_dir)
            run_bundle(
                bundle,
                config="train",
                overrides={
                    **overrides,
                    "split_file": str(split_file),
                    "fold": fold,
                    "output_dir": str(fold_dir),
                    "resume": resume,
                },
            )
        best = fold_dir / "models" / "model.pt"
        weights = best if best.is_file() else final
        predictions = fold_dir / "validation"
        done = predictions / "done.json"
        cases = split["folds"][fold]["val"]
        if not done.is_file():
            logger.info("fold %d: predicting its %d validation case(s)", fold, len(cases))
            entries = split_datalist(values["dataset_dir"], split_file, part="val", fold=fold)
            infer_with_bundle(
                bundle,
                [e["image"] for e in entries],
                output_dir=predictions,
                weights=weights,
                overrides={k: v for k, v in overrides.items() if k in inference_keys and k not in _RUN_KEYS},
                save_probabilities=True,
                progress=progress,
            )
            write_text_atomic(done, json.dumps({"cases": cases, "weights": str(weights)}, indent=2) + "\n")
        entry = {
            "output_dir": str(fold_dir),
            "weights": str(weights),
            "validation_dir": str(predictions),
            "cases": cases,
        }
        with exclusive_lock(base / ".cv.lock"):  # other workers may be adding their folds
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            record.update(about)
            record.setdefault("folds", {})[str(fold)] = entry
            record["folds"] = dict(sorted(record["folds"].items(), key=lambda item: int(item[0])))
            write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    if not record_path.is_file():  # a worker with no fold to run
        with exclusive_lock(base / ".cv.lock"):
            if not record_path.is_file():
                write_text_atomic(record_path, json.dumps({**about, "folds": {}}, indent=2) + "\n")
    return record_path


def _inference_keys(bundle: Path) -> set[str]:

    return set(read_config(find_config(bundle, "inference")))
