"""nnU-Net's U-Nets, built by voxpipe from plans, against dynamic-network-architectures (the oracle):
the same state-dict keys and shapes, and the same outputs with the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import require

from voxpipe.errors import InputError
from voxpipe.networks.nnunet import network_from_plans

IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def plain(dims=3, *, stages=4, kernels=None, strides=None, features=None, **extra):
    kernels = kernels or [[3] * dims] * stages
    strides = strides or [[1] * dims] + [[2] * dims] * (stages - 1)
    arch = {
        "n_stages": stages,
        "features_per_stage": features or [4 * 2**i for i in range(stages)],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        **extra,
    }
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": arch,
        "_kw_requires_import": IMPORTS,
    }


def resenc(**extra):
    architecture = plain(stages=5, features=[4, 8, 12, 16, 16])
    arch = architecture["arch_kwargs"]
    del arch["n_conv_per_stage"]
    arch["n_blocks_per_stage"] = [1, 3, 4, 6, 6]  # ResEnc M's block counts, narrower
    arch["n_conv_per_stage_decoder"] = [1, 1, 1, 1]
    arch.update(extra)
    architecture["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    )
    return architecture


CASES = {
    "3d isotropic": (plain(), (1, 1, 32, 32, 32)),
    "3d anisotropic": (
        plain(
            kernels=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
            strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
        ),
        (1, 1, 8, 32, 32),
    ),
    "2d, 2 channels": (plain(2, stages=5), (1, 2, 64, 48)),
    "dropout, nonlin first": (
        plain(dropout_op="torch.nn.Dropout3d", dropout_op_kwargs={"p": 0.2}, nonlin_first=True),
        (1, 1, 16, 16, 16),
    ),
    "resenc": (resenc(), (1, 1, 32, 32, 32)),
    "resenc, batch norm": (
        resenc(norm_op="torch.nn.BatchNorm3d", norm_op_kwargs={"eps": 1e-5, "momentum": 0.1}),
        (1, 1, 16, 32, 32),
    ),
}


def _reference(architecture, input_channels, classes, deep_supervision):
    """dynamic-network-architectures' own network for the same arch_kwargs (its classes imported as nnU-Net does)."""
    import importlib
    import pydoc

    require("dynamic_network_architectures")
    kwargs = copy.deepcopy(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    module, name = architecture["network_class_name"].rsplit(".", 1)
    network = getattr(importlib.import_module(module), name)
    return network(
        input_channels=input_channels, num_classes=classes, deep_supervision=deep_supervision, **kwargs
    )


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_keys_shapes_and_outputs_equal_dynamic_network_architectures(name, deep_supervision):
    architecture, shape = CASES[name]
    torch.manual_seed(0)
    reference = _reference(architecture, shape[1], 3, deep_supervision).eval()
    ours = network_from_plans(
        {},
        {"architecture": architecture},
        input_channels=shape[1],
        num_classes=3,
        deep_supervision=deep_supervision,
    ).eval()
    theirs = reference.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(theirs)  # nnU-Net checkpoints' keys, duplicates included
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    ours.load_state_dict(theirs, strict=True)
    image = torch.randn(*shape)
    with torch.no_grad():
        expected, found = reference(image), ours(image)
    if deep_supervision:
        assert len(found) == len(expected)
        for a, b in zip(found, expected, strict=True):
            assert torch.equal(a, b)
    else:
        assert torch.equal(found, expected)


def test_the_legacy_plans_form_builds_the_same_network_as_the_current_one():
    legacy = {
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": 8,
        "unet_max_num_features": 32,
        "conv_kernel_sizes": [[3, 3, 3]] * 4,
        "pool_op_kernel_sizes": [[1, 1, 1]] + [[2, 2, 2]] * 3,
        "n_conv_per_stage_encoder": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
    }
    current = plain(features=[8, 16, 32, 32])
    a = network_from_plans({}, legacy, input_channels=1, num_classes=2)
    b = network_from_plans({}, {"architecture": current}, input_channels=1, num_classes=2)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"network_class_name": "os.system"}, "expected PlainConvUNet or ResidualEncoderUNet"),
        ({"arch_kwargs": {**plain()["arch_kwargs"], "nonlin": "builtins.eval"}}, "arch_kwargs.nonlin"),
        ({"arch_kwargs": {**plain()["arch_kwargs"], "conv_op": "subprocess.Popen"}}, "arch_kwargs.conv_op"),
        ({"arch_kwargs": {**plain()["arch_kwargs"], "evil": 1}}, "unexpected \\['evil'\\]"),
        (
            {"arch_kwargs": {**plain()["arch_kwargs"], "kernel_sizes": [[3, 3, 3]] * 2}},
            "kernel_sizes: expected 4",
        ),
    ],
)
def test_plans_name_only_allow_listed_classes_and_bad_sizes_are_named(change, message):
    architecture = {**plain(), **change}
    with pytest.raises(InputError, match=message):
        network_from_plans(
            {}, {"architecture": architecture}, input_channels=1, num_classes=2, source="p.json"
        )


def _checkpoint(path, weights, **extra):
    """A checkpoint as nnU-Net's trainer saves it (numpy scalars in its logging, a torch.device)."""
    import numpy as np

    torch.save(
        {
            "network_weights": weights,
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "params": [0]}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5), np.float32(0.25)], "lrs": [0.01]},
            "_best_ema": np.float64(0.7),
            "current_epoch": 1000,
            "init_args": {
                "plans": {},
                "configuration": "3d_fullres",
                "fold": 0,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            **extra,
        },
        path,
    )
    return path


def test_checkpoints_load_with_weights_only_and_numpy_scalars_numpy_1_names_too(tmp_path):
    import zipfile

    from voxpipe.networks.nnunet import read_checkpoint

    network = network_from_plans({}, {"architecture": plain()}, input_channels=1, num_classes=2)
    path = _checkpoint(tmp_path / "checkpoint_final.pth", network.state_dict())
    found = read_checkpoint(path)
    assert found.trainer == "nnUNetTrainer" and found.mirroring_axes == (0, 1, 2)
    assert found.configuration == "3d_fullres" and set(found.weights) == set(network.state_dict())
    # the same file as numpy 1 wrote it (numpy.core, not numpy._core)
    old = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            target.writestr(item, data)
    assert read_checkpoint(old).trainer == "nnUNetTrainer"


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_that_would_run_code_is_refused_naming_the_file_and_the_global(tmp_path):
    from voxpipe.networks.nnunet import read_checkpoint

    path = _checkpoint(tmp_path / "checkpoint_final.pth", {"w": torch.zeros(1)}, extra=Payload())
    with pytest.raises(InputError, match=r"checkpoint_final.pth.*(posix|os)\.system"):
        read_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match=r"other.pth.*'network_weights'"):
        read_checkpoint(tmp_path / "other.pth")
