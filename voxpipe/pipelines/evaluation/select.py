"""``voxpipe select RUN_DIR...``: choose configuration, ensemble and post-processing by cross-validation.

Every run is a ``voxpipe train --folds`` output (``cv.json``) with out-of-fold probabilities. On the
cases all runs predicted out of fold, each candidate is scored:

* each configuration alone, and every ensemble of two or more (the mean of their probabilities);
* each with every post-processing option: none, the largest component per class, the largest
  component of all foreground classes together (an organ with its lesions), hole filling, and a
  minimum lesion size for lesion classes (names such as tumour, nodule, metastasis).

The score is the mean foreground Dice (per case the mean over classes, a class absent from both
prediction and reference counting 1; then the mean over cases) with a 95 % bootstrap CI over cases;
lesion classes also get lesion-wise F1, pooled over all cases' lesions (so a false lesion in a case
without lesions counts). The winner: the model candidate with the highest mean
Dice; then the post-processing option with the highest mean Dice *among those that raise it and
lower no lesion class's lesion F1* — a rule that deletes true second lesions cannot win by a Dice
gain on the organ. ``selection.json`` and ``selection.md`` list every candidate, and ``bundle/`` is
an inference bundle that runs the winner (all folds of the chosen configurations as one
:class:`~voxpipe.networks.ensemble.FoldEnsemble`, the chosen post-processing) with ``voxpipe infer``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from voxpipe.errors import InputError
from voxpipe.metrics.conventions import apply_convention
from voxpipe.metrics.lesions import detect_lesions, is_lesion_name
from voxpipe.metrics.overlap import dice
from voxpipe.networks.transfer import read_state_dict
from voxpipe.pipelines.bundles.config import find_config
from voxpipe.pipelines.data.datalists import load_datalist
from voxpipe.pipelines.evaluation.evaluate import bootstrap_ci
from voxpipe.pipelines.inference.infer import label_names
from voxpipe.transforms.files import write_text_atomic
from voxpipe.transforms.io import load_volume
from voxpipe.transforms.postprocess import postprocess_labels

logger = logging.getLogger(__name__)

MIN_LESION_MM3 = (20.0, 100.0)
MAX_ENSEMBLE_RUNS = 4  # 2^4 - 1 = 15 model candidates


def _load_run(path: Path) -> dict[str, Any]:
    """A cross-validation run's ``cv.json`` and its out-of-fold probability files, checked.

    A run whose folds are not all done is scored on the cases of the folds it has, with a warning
    naming the missing folds (``missing_folds`` in the result).

    Raises:
        InputError: no or unreadable cv.json, one not written by ``voxpipe train --folds``, or a missing
            probability file (each named).
    """
    record_path = path / "cv.json" if path.is_dir() else path
    try:
        record = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"{str(record_path)!r}: expected the cv.json of a voxpipe train --folds run ({error})"
        ) from error
    folds = record.get("folds") if isinstance(record, dict) else None
    if (
        not isinstance(folds, dict)
        or not isinstance(record.get("bundle"), str)
        or not isinstance(record.get("dataset_dir"), str)
        or not all(
            isinstance(f, dict)
            and isinstance(f.get("cases"), list)
            and isinstance(f.get("validation_dir"), str)
            for f in folds.values()
        )
    ):
        raise InputError(
            f"{str(record_path)!r}: expected the cv.json of a voxpipe train --folds run (bundle, dataset_dir, "
            f"folds with cases and validation_dir), found {type(record).__name__} with keys "
            f"{sorted(record) if isinstance(record, dict) else []}"
        )
    probabilities = {}
    for fold, info in folds.items():
        for case in info["cases"]:
            file = Path(info["validation_dir"]) / f"{case}_probabilities.npz"
            if not file.is_file():
                raise InputError(
                    f"{str(file)!r}: expected the out-of-fold probabilities of case {case!r} (fold {fold}), found no file",
                    hint="rerun voxpipe train BUNDLE --folds ... to finish the fold's predictions",
                )
            probabilities[case] = file
    n_folds = record.get("n_folds")
    missing = [k for k in range(n_folds) if str(k) not in folds] if isinstance(n_folds, int) else []
    if missing:
        logger.warning(
            "%s: folds %s of %d are not done; this run is scored on the %d out-of-fold cases of folds %s only",
            record_path,
            missing,
            n_folds,
            len(probabilities),
            sorted(int(k) for k in folds),
        )
    bundle_name, run_name = Path(record["bundle"]).name, record_path.parent.name
    name = bundle_name if run_name in ("", ".", bundle_name) else f"{bundle_name} ({run_name})"
    return {
        "path": record_path.parent,
        "name": name,
        "record": record,
        "probabilities": probabilities,
        "missing_folds": missing,
    }


def _read_probabilities(file: Path) -> np.ndarray:
    """The ``probabilities`` array of an out-of-fold ``.npz`` (never unpickled).

    Raises:
        InputError: not a readable npz, no ``probabilities`` array, or an object (pickled) array.
    """
    try:
        with np.load(file, allow_pickle=False) as archive:
            return archive["probabilities"].astype(np.float32)
    except KeyError:
        raise InputError(f"{str(file)!r}: expected an array named 'probabilities', found none") from None
    except ValueError as error:
        raise InputError(f"{str(file)!r}: expected a numeric probability array, found {error}") from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"{str(file)!r}: expected an npz archive, found a damaged file ({error})") from error


def _options(labels: dict[int, str]) -> dict[str, dict[str, Any]]:
    foreground = sorted(labels)
    lesions = [v for v in foreground if is_lesion_name(labels[v])]
    options: dict[str, dict[str, Any]] = {
        "none": {},
        "largest per class": {"largest": [[v] for v in foreground]},
    }
    if len(foreground) > 1:
        options["largest of all foreground"] = {"largest": [foreground]}
    options["fill holes"] = {"fill_holes": foreground}
    for size in MIN_LESION_MM3 if lesions else ():
        options[f"lesions >= {size:g} mm3"] = {"min_size_mm3": {v: size for v in lesions}}
    return options


def _score(prediction: np.ndarray, reference: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """Per class: Dice, a structure absent from both counting 1 (a correct "nothing here", the LiTS/FLARE
    convention, so removing false positives from a case without that structure is rewarded); for lesion
    classes the lesion counts (TP, FP, FN), pooled over cases into the F1 later."""
    scores: dict[str, float] = {}
    for value, name in labels.items():
        predicted, expected = prediction == value, reference == value
        scores[f"dice_{name}"] = apply_convention(
            {"dice": dice(predicted, expected)},
            prediction_empty=not predicted.any(),
            reference_empty=not expected.any(),
            convention="lits",
            worst_distance=0.0,
        )["dice"]
        if is_lesion_name(name):
            found = detect_lesions(predicted, expected)
            scores.update({f"tp_{name}": found.tp, f"fp_{name}": found.fp, f"fn_{name}": found.fn})
    return scores


def _pooled_f1(rows: list[dict[str, float]], name: str) -> float | None:
    """Lesion-wise F1 over all cases' lesions together: 2 TP / (2 TP + FP + FN); ``None`` without any lesion."""
    tp, fp, fn = (sum(r[f"{k}_{name}"] for r in rows) for k in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def select_runs(
    runs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str], *, write_bundle: bool = True
) -> dict[str, Any]:
    """Score every candidate on the out-of-fold cases, choose, and write ``selection.json``/``.md`` and ``bundle/``.

    Raises:
        InputError: a run without cv.json or probabilities, runs on different datasets or label sets,
            no case that every run predicted, more than 4 runs.
    """
    loaded = [_load_run(Path(r)) for r in runs]
    if not loaded:
        raise InputError("select: expected at least one RUN_DIR (a voxpipe train --folds output), found none")
    if len(loaded) > MAX_ENSEMBLE_RUNS:
        raise InputError(
            f"select: expected at most {MAX_ENSEMBLE_RUNS} runs (every ensemble is scored), found {len(loaded)}"
        )
    datasets = {str(Path(r["record"]["dataset_dir"]).resolve()) for r in loaded}
    if len(datasets) != 1:
        raise InputError(f"select: expected runs on one dataset, found {sorted(datasets)}")
    labels = label_names(loaded[0]["record"]["bundle"])
    for run in loaded[1:]:
        if label_names(run["record"]["bundle"]) != labels:
            raise InputError(
                f"{str(run['path'])!r}: expected the labels {labels} of {str(loaded[0]['path'])!r}, "
                f"found {label_names(run['record']['bundle'])}"
            )
    cases = sorted(set.intersection(*(set(r["probabilities"]) for r in loaded)))
    if not cases:
        raise InputError("select: expected cases that every run predicted out of fold, found none")
    for run in loaded:
        if len(run["probabilities"]) > len(cases):
            logger.warning(
                "%s: scored on the %d cases every run predicted, of its %d",
                run["name"],
                len(cases),
                len(run["probabilities"]),
            )
    references = {e["case"]: e["label"] for e in load_datalist(next(iter(datasets))) if e.get("label")}
    missing = [c for c in cases if c not in references]
    if missing:
        raise InputError(
            f"{next(iter(datasets))!r}: expected reference labels for the out-of-fold cases, found none for {missing[:5]}"
        )
    members = [
        combo
        for size in range(1, len(loaded) + 1)
        for combo in itertools.combinations(range(len(loaded)), size)
    ]
    options = _options(labels)
    per_case: dict[tuple[int, ...], dict[str, list[dict[str, float]]]] = {
        m: {o: [] for o in options} for m in members
    }
    for case in cases:
        reference = load_volume(references[case], label=True)
        voxel_mm3 = float(abs(np.linalg.det(np.asarray(reference.affine)[:3, :3])))
        probabilities = []
        for run in loaded:
            data = _read_probabilities(run["probabilities"][case])
            if data.shape[1:] != reference.array.shape:
                raise InputError(
                    f"{str(run['probabilities'][case])!r}: expected probabilities on the reference grid "
                    f"{list(reference.array.shape)}, found {list(data.shape[1:])}"
                )
            probabilities.append(data)
        for combo in members:
            prediction = np.mean([probabilities[i] for i in combo], axis=0).argmax(0).astype(np.int16)
            for option, settings in options.items():
                processed = (
                    postprocess_labels(prediction, voxel_mm3=voxel_mm3, **settings)
                    if settings
                    else prediction
                )
                per_case[combo][option].append(_score(processed, reference.array, labels))
    table = []
    for combo in members:
        for option in options:
            rows = per_case[combo][option]
            case_means = [_mean([r[f"dice_{n}"] for n in labels.values()]) for r in rows]
            foreground = np.array([np.nan if m is None else m for m in case_means], dtype=float)
            ci = bootstrap_ci(foreground[np.isfinite(foreground)])
            entry = {
                "members": [loaded[i]["name"] for i in combo],
                "runs": list(combo),
                "postprocessing": option,
                "settings": options[option],
                "mean_foreground_dice": _mean(foreground.tolist()),
                "ci95": list(ci) if ci else None,
                "dice": {n: _mean([r[f"dice_{n}"] for r in rows]) for n in labels.values()},
                "lesion_f1": {n: _pooled_f1(rows, n) for n in labels.values() if is_lesion_name(n)},
            }
            table.append(entry)
    winner, why = _choose(table)
    selection = {
        "cases": cases,
        "runs": [
            {"name": r["name"], "path": str(r["path"]), "missing_folds": r["missing_folds"]} for r in loaded
        ],
        "labels": {str(k): v for k, v in labels.items()},
        "candidates": table,
        "winner": winner,
        "why": why,
        "rule": "highest mean foreground Dice among models (a class absent from prediction and reference "
        "counts 1); post-processing only if it raises that Dice and lowers no lesion class's lesion-wise "
        "F1 (pooled over cases)",
    }
    out = Path(output_dir)
    if write_bundle:
        selection["bundle"] = str(_export(loaded, winner, out / "bundle"))
    write_text_atomic(out / "selection.md", render_selection(selection))
    write_text_atomic(out / "selection.json", json.dumps(selection, indent=2) + "\n")
    return selection


def _choose(table: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    models = [e for e in table if e["postprocessing"] == "none"]
    best = max(models, key=lambda e: (e["mean_foreground_dice"] or -1.0, -len(e["runs"])))
    why = [
        f"model: {' + '.join(best['members'])} has the highest mean foreground Dice without post-processing "
        f"({best['mean_foreground_dice']:.4f})"
    ]
    chosen = best
    for entry in table:
        if entry["runs"] != best["runs"] or entry["postprocessing"] == "none":
            continue
        gain = (entry["mean_foreground_dice"] or -1.0) - (best["mean_foreground_dice"] or -1.0)
        lesion_loss = [
            n
            for n, f1 in entry["lesion_f1"].items()
            if f1 is not None and best["lesion_f1"].get(n) is not None and f1 < best["lesion_f1"][n] - 1e-9
        ]
        if lesion_loss:
            why.append(
                f"{entry['postprocessing']}: refused, it lowers the lesion-wise F1 of {', '.join(lesion_loss)} "
                f"(Dice change {gain:+.4f})"
            )
        elif gain <= 0:
            why.append(f"{entry['postprocessing']}: not taken, Dice change {gain:+.4f}")
        elif (entry["mean_foreground_dice"] or -1.0) > (chosen["mean_foreground_dice"] or -1.0):
            chosen = entry
            why.append(
                f"{entry['postprocessing']}: raises the mean foreground Dice by {gain:+.4f}, lowers no lesion F1"
            )
        else:
            why.append(f"{entry['postprocessing']}: raises Dice by {gain:+.4f}, less than another option")
    return chosen, why


def render_selection(selection: dict[str, Any]) -> str:
    winner = selection["winner"]
    lines = [
        f"# Model selection over {len(selection['cases'])} out-of-fold cases",
        "",
        f"Winner: **{' + '.join(winner['members'])}**, post-processing **{winner['postprocessing']}**, mean "
        f"foreground Dice {winner['mean_foreground_dice']:.4f}"
        + (f" (95 % CI {winner['ci95'][0]:.4f}–{winner['ci95'][1]:.4f})" if winner["ci95"] else "")
        + ".",
        "",
        f"Rule: {selection['rule']}.",
        "",
        "Why:",
        *[f"- {line}" for line in selection["why"]],
        "",
        "| Members | Post-processing | Mean fg Dice | 95 % CI | "
        + " | ".join(f"Dice {n}" for n in selection["labels"].values())
        + " | Lesion F1 |",
        "|---" * (5 + len(selection["labels"])) + "|",
    ]
    for entry in selection["candidates"]:
        ci = f"{entry['ci95'][0]:.3f}–{entry['ci95'][1]:.3f}" if entry["ci95"] else "–"
        dices = " | ".join("–" if v is None else f"{v:.4f}" for v in entry["dice"].values())
        f1 = (
            ", ".join(f"{n} {'–' if v is None else f'{v:.3f}'}" for n, v in entry["lesion_f1"].items()) or "–"
        )
        mark = " ✔" if entry is winner else ""
        mean = "–" if entry["mean_foreground_dice"] is None else f"{entry['mean_foreground_dice']:.4f}"
        lines.append(
            f"| {' + '.join(entry['members'])}{mark} | {entry['postprocessing']} | {mean} | {ci} | {dices} | {f1} |"
        )
    if selection.get("bundle"):
        lines += [
            "",
            f"Inference bundle: `{selection['bundle']}` (`voxpipe infer {selection['bundle']} IMAGES -o OUT`).",
        ]
    return "\n".join(lines) + "\n"


def _common_patch(patches: list[list[int]], networks: list[dict[str, Any]]) -> list[int]:
    """One sliding window for every member: the largest patch per axis, rounded up to a size every member
    takes (a multiple of each DynUNet's total stride, of 8 for SegResNet); fully convolutional networks
    accept the larger window."""
    multiples = []
    for spec in networks:
        if spec.get("name") == "dynunet" and spec.get("strides"):
            multiples.append(
                [
                    int(np.prod([s[axis] if isinstance(s, list) else s for s in spec["strides"]]))
                    for axis in range(3)
                ]
            )
        elif spec.get("name") in ("segresnet", "segresnet_ds"):
            multiples.append([8, 8, 8])
    result = []
    for axis in range(3):
        step = int(np.lcm.reduce([m[axis] for m in multiples])) if multiples else 1
        result.append(int(-(-max(p[axis] for p in patches) // step) * step))
    return result


def _export(runs: list[dict[str, Any]], winner: dict[str, Any], out: Path) -> Path:
    """The winner as an inference bundle: folds of the chosen runs in one FoldEnsemble, its post-processing."""
    chosen = [runs[i] for i in winner["runs"]]
    configs = [
        yaml.safe_load(find_config(Path(r["record"]["bundle"]), "inference").read_text()) for r in chosen
    ]
    for key in ("pixdim", "hu_window", "preprocessing"):
        values = {json.dumps(c.get(key), sort_keys=True) for c in configs}
        if len(values) > 1:
            raise InputError(
                f"select: the winning ensemble mixes configurations with different {key} {sorted(values)}; "
                "expected one preprocessing to export one bundle",
                hint="use voxpipe select --no-bundle",
            )
    networks, state = [], {}
    for run, config in zip(chosen, configs, strict=True):
        spec = dict(config["network_def"])
        if spec.get("_target_") != "voxpipe.networks.build_network":
            raise InputError(
                f"{str(run['record']['bundle'])!r}: expected network_def built by voxpipe.networks.build_network, "
                f"found {spec.get('_target_')!r}; cannot put it into an ensemble"
            )
        spec = {k: v for k, v in spec.items() if k not in ("_target_", "device", "weights", "freeze")}
        for fold in sorted(run["record"]["folds"], key=int):
            index = len(networks)
            networks.append({**spec, "out_channels": config["num_classes"]})
            for key, tensor in read_state_dict(run["record"]["folds"][fold]["weights"]).items():
                state[f"members.{index}.{key}"] = tensor
    template = Path(chosen[0]["record"]["bundle"])
    config = copy.deepcopy(configs[0])
    config["network_def"] = {
        "_target_": "voxpipe.networks.ensemble.FoldEnsemble",
        "networks": networks,
        "device": "@device",
    }
    config["patch_size"] = _common_patch([c["patch_size"] for c in configs], networks)
    settings = winner["settings"]
    steps = config["postprocessing"]["transforms"]
    steps = [s for s in steps if s.get("_target_") != "voxpipe.transforms.postprocess.PostProcessd"]
    if settings:
        position = next(
            (i for i, s in enumerate(steps) if str(s.get("_target_", "")).endswith("SaveLabelLiked")),
            len(steps),
        )
        steps.insert(
            position, {"_target_": "voxpipe.transforms.postprocess.PostProcessd", "keys": "pred", **settings}
        )
    config["postprocessing"]["transforms"] = steps
    header = (
        f"# Written by `voxpipe select`: {' + '.join(winner['members'])} ({len(networks)} fold models averaged in one\n"
        f"# FoldEnsemble), post-processing: {winner['postprocessing']}. See ../selection.md.\n"
    )
    write_text_atomic(out / "configs" / "inference.yaml", header + yaml.safe_dump(config, sort_keys=False))
    metadata = json.loads((template / "configs" / "metadata.json").read_text())
    metadata["changelog"] = {
        **metadata.get("changelog", {}),
        metadata.get("version", "0.1.0"): "selected by voxpipe select",
    }
    metadata["description"] = (
        f"{metadata.get('description', '')} Selected by cross-validation: {' + '.join(winner['members'])}, "
        f"{len(networks)} fold models, post-processing {winner['postprocessing']}."
    )
    write_text_atomic(out / "configs" / "metadata.json", json.dumps(metadata, indent=4) + "\n")
    (out / "models").mkdir(parents=True, exist_ok=True)
    partial = out / "models" / ".model.pt.partial"
    torch.save(state, partial)
    os.replace(partial, out / "models" / "model.pt")
    return out
