"""nnU-Net model folders: labels and configurations as nnunetv2 2.8.1 reads them; errors that name the file."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from helpers import require

from voxpipe.errors import BundleError, InputError
from voxpipe.pipelines.inference.nnunet.folder import NnUNetFolder, read_labels, resolve_configuration


def _nnunet(module: str):
    """An nnunetv2 module (installed --no-deps as a test oracle). acvl_utils imports blosc2 for a type
    hint only, in a module these functions do not use; a stand-in keeps blosc2 (and its own
    dependencies) out of the install."""
    require("acvl_utils")
    require("batchgenerators")
    stub = types.ModuleType("blosc2")
    stub.ndarray = types.SimpleNamespace(NDArray=object)
    sys.modules.setdefault("blosc2", stub)
    return require(module)


def _label_dicts():
    rng = np.random.default_rng(5)
    cases = [
        {"background": 0, "liver": 1, "tumour": 2},
        {"background": 0, "a": 3, "b": 1},  # out of order, a gap
        {"background": 0, "organ": 1, "ignore": 2},
        {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        {"background": 0, "b": [1, 2], "c": [2], "d": 1},
    ]
    for _ in range(25):
        count = int(rng.integers(1, 8))
        values = [int(v) for v in rng.permutation(np.arange(1, 12))[:count]]
        labels = {"background": 0, **{f"s{i}": v for i, v in enumerate(values)}}
        if rng.random() < 0.3:
            labels["ignore"] = max(values) + 1
        if rng.random() < 0.4:
            labels[f"r{count}"] = sorted(
                {int(v) for v in rng.choice(values, size=min(2, count), replace=False)} | {0}
            )[1:]
        cases.append(labels)
    return cases


@pytest.mark.parametrize("labels", _label_dicts())
def test_labels_and_regions_equal_nnunets_label_manager(labels):
    handling = _nnunet("nnunetv2.utilities.label_handling.label_handling")
    has_regions = any(isinstance(v, list) and len(v) > 1 for v in labels.values())
    regions = [v for k, v in labels.items() if k != "ignore" and v != 0]
    order = list(range(1, len(regions) + 1)) if has_regions else None
    manager = handling.LabelManager(labels, order)
    ours = read_labels({"labels": labels, "regions_class_order": order})
    assert ours.values == [int(v) for v in manager.all_labels]
    assert ours.ignore == manager.ignore_label
    assert ours.heads == manager.num_segmentation_heads
    assert (ours.regions is not None) == manager.has_regions
    if manager.has_regions:
        assert [tuple(r) if isinstance(r, (list, tuple)) else r for r in ours.regions] == [
            tuple(r) if isinstance(r, (list, tuple)) else r for r in manager.all_regions
        ]


def test_configuration_inheritance_equals_nnunets_plans_manager():
    plans_handler = _nnunet("nnunetv2.utilities.plans_handling.plans_handler")
    plans = {
        "configurations": {
            "3d_fullres": {
                "patch_size": [64, 64, 64],
                "spacing": [1, 1, 1],
                "batch_size": 2,
                "normalization_schemes": ["CTNormalization"],
            },
            "3d_lowres": {
                "inherits_from": "3d_fullres",
                "spacing": [2, 2, 2],
                "next_stage": "3d_cascade_fullres",
            },
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
            "deep": {"inherits_from": "3d_lowres", "batch_size": 9},
        }
    }
    manager = plans_handler.PlansManager(plans)
    for name in plans["configurations"]:
        expected = manager._internal_resolve_configuration_inheritance(name)
        expected.pop("inherits_from", None)
        assert resolve_configuration(plans, name) == expected
    looped = {"configurations": {"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}}}
    with pytest.raises(InputError, match="cycle: a → b → a"):
        resolve_configuration(looped, "a")
    with pytest.raises(InputError, match="expected 'x' \\(inherited by 'a'\\)"):
        resolve_configuration({"configurations": {"a": {"inherits_from": "x"}}}, "a")


def _folder(tmp_path, *, name="nnUNetTrainer__nnUNetPlans__3d_fullres", folds=(0, 1)):
    root = tmp_path / name
    root.mkdir()
    (root / "plans.json").write_text(
        json.dumps(
            {
                "configurations": {
                    "3d_fullres": {
                        "patch_size": [8, 8, 8],
                        "spacing": [1.0, 1.0, 1.0],
                        "normalization_schemes": ["ZScoreNormalization"],
                    }
                }
            }
        )
    )
    (root / "dataset.json").write_text(
        json.dumps(
            {"labels": {"background": 0, "liver": 1}, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}
        )
    )
    for fold in folds:
        (root / f"fold_{fold}").mkdir()
        torch.save({"network_weights": {}}, root / f"fold_{fold}" / "checkpoint_final.pth")
    return root


def test_a_model_folder_is_read_and_what_is_missing_is_named(tmp_path):
    folder = NnUNetFolder(_folder(tmp_path, folds=(1, 0, 10, 2, "all")))
    assert folder.trainer == "nnUNetTrainer" and folder.configuration_name == "3d_fullres"
    # nnUNetv2_predict's automatic folds: its (name) order, fold_all left out unless named
    assert [p.parent.name for p in folder.checkpoints] == ["fold_0", "fold_1", "fold_10", "fold_2"]
    assert [p.parent.name for p in NnUNetFolder(folder.path, folds=["all"]).checkpoints] == ["fold_all"]
    assert folder.channels == ["CT"] and folder.labels.names == {0: "background", 1: "liver"}
    assert [p.parent.name for p in NnUNetFolder(folder.path, folds=[1]).checkpoints] == ["fold_1"]
    with pytest.raises(BundleError, match="fold_4/checkpoint_final.pth'.*requested fold"):
        NnUNetFolder(folder.path, folds=[4])
    for fold in (0, 1, 2, 10):
        (folder.path / f"fold_{fold}" / "checkpoint_final.pth").unlink()
    with pytest.raises(BundleError, match="expected fold_K/checkpoint_final.pth"):
        NnUNetFolder(folder.path)
    other = _folder(tmp_path, name="Trainer__Plans__2d")
    with pytest.raises(BundleError, match="plans.json.*expected '2d'"):
        NnUNetFolder(other)
    (other / "plans.json").write_text("{not json")
    with pytest.raises(BundleError, match="plans.json'.*expected JSON"):
        NnUNetFolder(other)


def test_plans_with_another_resampling_function_are_refused_by_name(tmp_path):
    folder = _folder(tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["resampling_fn_data"] = "resample_torch_fornnunet"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(BundleError, match="resampling_fn_data: expected.*found 'resample_torch_fornnunet'"):
        NnUNetFolder(folder)
