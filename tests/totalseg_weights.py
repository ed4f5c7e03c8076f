"""TotalSegmentator weights folders of its real layout, with small seeded networks, for the tests.

``make_weights(root, task, ...)`` writes every model a task needs (its own and its crop models) as
``<root>/<DatasetNNN_name>/<trainer>__nnUNetPlans__<configuration>/`` with ``plans.json``,
``dataset.json`` (TotalSegmentator's label names) and ``fold_0/checkpoint_final.pth``. The plans'
spacing is the task's own, so nnU-Net's resampling is a no-op after TotalSegmentator's, as with the
real weights. A random network's labels are noise; each network's last layer is fitted (least squares
on its own features) to intensity bands of a phantom, so the maps have structures with borders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from voxpipe.networks.nnunet import network_from_plans
from voxpipe.pipelines.inference.totalseg import tasks

#: Intensity bands (HU) the fitted heads follow; the label of band i is the model's i-th structure.
BANDS = (-2000, -700, -150, 30, 120, 250, 600, 5000)


def model_labels(task_id: int) -> dict[int, str]:
    """The labels of TotalSegmentator model ``task_id`` as its dataset.json has them."""
    for name, parts in tasks.tables()["parts"].items():
        if str(task_id) in parts:
            return tasks.part_classes(name, task_id)
    for name in tasks.task_names():
        spec = tasks.task(name)
        if spec.task_ids == (task_id,) or task_id in spec.task_ids and not spec.several:
            return tasks.classes(name)
    special = {297: "total", 298: "total", 300: "body", 299: "body", 852: "total_mr", 853: "total_mr",
               305: "vertebrae_body", 836: "total_v3", 837: "total_v3"}  # fmt: skip
    return tasks.classes(special[task_id])


def _trainer_spacing(task_id: int) -> tuple[str, str, tuple[float, float, float]]:
    """(trainer, configuration, spacing x y z) of model ``task_id`` as TotalSegmentator runs it."""
    crop = {
        297: ("nnUNetTrainer_4000epochs_NoMirroring", 3.0),
        298: ("nnUNetTrainer_4000epochs_NoMirroring", 6.0),
        300: ("nnUNetTrainer", 6.0),
        852: ("nnUNetTrainer_2000epochs_NoMirroring", 3.0),
        305: ("nnUNetTrainer_DASegOrd0", 1.5),
    }
    if task_id in crop:
        trainer, mm = crop[task_id]
        return trainer, "3d_fullres", (mm, mm, mm)
    for name in tasks.task_names():
        for fast, fastest in ((False, False), (True, False), (False, True)):
            try:
                spec = tasks.task(name, fast=fast, fastest=fastest)
            except Exception:
                continue
            if task_id in spec.task_ids:
                return spec.trainer, spec.configuration, spec.resample or (1.5, 1.5, 1.5)
    raise KeyError(task_id)


def make_model(
    root: Path, task_id: int, *, seed: int = 0, patch=(16, 16, 16), spacing=None, folds=(0,), prefer=()
) -> Path:
    """One TotalSegmentator model folder (see the module docstring); ``spacing`` (x, y, z) overrides
    the task's (a plans spacing that differs makes nnU-Net resample on its own); the structures named
    in ``prefer`` get the bands first (a crop model finds what the task crops to)."""
    from test_nnunet_predict import make_model as nnunet_model

    trainer, configuration, task_spacing = _trainer_spacing(task_id)
    labels = model_labels(task_id)
    xyz = spacing or task_spacing
    scratch = root / f".build{task_id}"
    built = nnunet_model(
        scratch,
        spacing=[float(xyz[2]), float(xyz[1]), float(xyz[0])],
        patch=list(patch),
        schemes=["CTNormalization"],
        labels={"background": 0, **{name: value for value, name in sorted(labels.items())}},
        folds=folds,
        configuration_name=configuration,
        seed=seed + task_id,
        features=(16, 16, 16),
    )
    target = root / tasks.dataset_folder(task_id) / f"{trainer}__nnUNetPlans__{configuration}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(target))
    shutil.rmtree(scratch)
    for checkpoint in sorted(target.glob("fold_*/checkpoint_final.pth")):
        _fit_head(checkpoint, _picks(labels, prefer, seed + task_id), seed=seed + task_id)
    return target


def _picks(labels: dict[int, str], prefer, seed: int) -> list[int]:
    """The label of each intensity band: background for air, then the preferred structures
    (``"background"`` keeps a band empty), then the model's others from a seeded start."""
    values = sorted(labels)
    by_name = {"background": 0, **{v: k for k, v in labels.items()}}
    first = [by_name[n] for n in prefer if n in by_name]
    start = seed % len(values)
    rest = [v for v in values[start:] + values[:start] if v not in first]
    chosen = (first + rest)[: len(BANDS) - 2]
    return [0, *chosen] + [chosen[i % len(chosen)] for i in range(len(BANDS) - 2 - len(chosen))]


def _fit_head(checkpoint: Path, picks: list[int], *, seed: int) -> None:
    """The segmentation head refitted so that band i of :data:`BANDS` gives label ``picks[i]``."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    plans = saved["init_args"]["plans"]
    configuration = plans["configurations"][saved["init_args"]["configuration"]]
    heads = len(saved["init_args"]["dataset_json"]["labels"])
    network = network_from_plans(plans, configuration, input_channels=1, num_classes=heads).eval()
    network.load_state_dict(saved["network_weights"])
    rng = np.random.default_rng(seed)
    shape = configuration["patch_size"]
    hu = rng.uniform(-1200, 1500, size=(4, *[max(4, s // 4) for s in shape]))
    hu = np.kron(hu, np.ones([1] + [int(np.ceil(s / max(4, s // 4))) for s in shape]))[
        (slice(None), *[slice(0, s) for s in shape])
    ]
    properties = plans["foreground_intensity_properties_per_channel"]["0"]
    normalised = (
        np.clip(hu, properties["percentile_00_5"], properties["percentile_99_5"]) - properties["mean"]
    ) / properties["std"]
    features: list[torch.Tensor] = []
    layer = network.decoder.seg_layers[-1]
    hook = layer.register_forward_hook(lambda module, args, out: features.append(args[0].detach()))
    with torch.no_grad():
        network(torch.from_numpy(normalised[:, None].astype(np.float32)))
    hook.remove()
    x = features[0].movedim(1, -1).reshape(-1, features[0].shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    band = np.digitize(hu, BANDS[1:-1]).reshape(-1)
    target = torch.full((len(x), heads), -4.0, dtype=torch.float64)
    wanted = torch.from_numpy(np.array(picks)[band])
    target[torch.arange(len(x)), wanted] = 4.0
    solution = torch.linalg.lstsq(x, target).solution  # (features + 1, heads)
    weights = dict(saved["network_weights"])
    prefix = [k for k in weights if k.endswith(f"seg_layers.{len(network.decoder.seg_layers) - 1}.weight")]
    for key in prefix:
        shape_w = weights[key].shape
        weights[key] = solution[:-1].T.reshape(shape_w).float().contiguous()
        weights[key.replace(".weight", ".bias")] = solution[-1].float().contiguous()
    saved["network_weights"] = weights
    torch.save(saved, checkpoint)


def make_weights(
    root: Path,
    task: str,
    *,
    seed: int = 0,
    patch=(16, 16, 16),
    fast: bool = False,
    fastest: bool = False,
    prefer=(),
) -> Path:
    """Every model ``task`` needs, in TotalSegmentator's layout under ``root``; the crop models find
    the task's crop structures (and ``prefer``'s)."""
    spec = tasks.task(task, fast=fast, fastest=fastest)
    prefer = [*(spec.crop or ()), *prefer]
    ids = list(spec.task_ids)
    if not (fast or fastest):
        ids = tasks.models_of(task)
    for task_id in ids:
        trainer, configuration, _ = _trainer_spacing(task_id)
        if task_id in spec.task_ids:
            trainer, configuration = spec.trainer, spec.configuration
        folder = root / tasks.dataset_folder(task_id) / f"{trainer}__nnUNetPlans__{configuration}"
        if not folder.exists():
            made = make_model(root, task_id, seed=seed, patch=patch, prefer=prefer)
            if made != folder:
                folder.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(made), str(folder))
    return root


def write_config(home: Path) -> None:
    """TotalSegmentator's config.json, set to send nothing."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(
        json.dumps(
            {
                "totalseg_id": "totalseg_TESTS000",
                "send_usage_stats": False,
                "prediction_counter": 0,
                "statistics_disclaimer_shown": True,
            }
        )
    )
