"""A model folder is a stranger's input: every malformed field of plans.json, dataset.json, a
checkpoint or voxpipe-model.json ends in exit 2 with one line naming that file and the key, before
anything runs, never blamed on the image and never a label map. Each case names its promise."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_hostile_inputs import one_error_line
from test_nnunet_predict import liver_model, make_image

from voxpipe.cli import main


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-models")
    folder = liver_model(root)
    image = make_image(root / "scan.nii.gz", shape=(24, 22, 20), spacing=(2.0, 2.0, 2.0))
    return folder, image


def _config(plans):
    return plans["configurations"]["3d_fullres"]


def _arch(plans):
    return _config(plans)["architecture"]["arch_kwargs"]


# (promise, file, change, the key the message must name)
PLANS = {
    "a patch edge of 0": (lambda p: _config(p).update(patch_size=[0, 16, 16]), "patch_size[0]"),
    "a spacing of 0": (lambda p: _config(p).update(spacing=[0.0, 2.0, 2.0]), "spacing[0]"),
    "a NaN spacing": (lambda p: _config(p).update(spacing=[2.0, math.nan, 2.0]), "spacing[1]"),
    "a spacing given as text": (lambda p: _config(p).update(spacing="2,2,2"), "spacing"),
    "a spacing of the wrong length": (lambda p: _config(p).update(spacing=[2.0, 2.0]), "spacing"),
    "a configuration given as a list": (
        lambda p: p["configurations"].update({"3d_fullres": [1, 2]}),
        "configurations.3d_fullres",
    ),
    "features_per_stage of 60 000": (
        lambda p: _arch(p).update(features_per_stage=[60000] * 3),
        "features_per_stage",
    ),
    "features_per_stage that are not numbers": (
        lambda p: _arch(p).update(features_per_stage=["4", "8", "16"]),
        "features_per_stage[0]",
    ),
    "100 000 convolutions per stage": (
        lambda p: _arch(p).update(n_conv_per_stage=[100000] * 3),
        "n_conv_per_stage",
    ),
    "a kernel size of 0": (
        lambda p: _arch(p).update(kernel_sizes=[[3, 3, 3], [0, 3, 3], [3, 3, 3]]),
        "kernel_sizes[1]",
    ),
    "strides for 2 of 3 stages": (lambda p: _arch(p).update(strides=[[1, 1, 1], [2, 2, 2]]), "strides"),
    "a transpose that is no permutation": (
        lambda p: p.update(transpose_forward=[0, 0, 1]),
        "transpose_forward",
    ),
    "transposes that are not inverse": (
        lambda p: p.update(transpose_forward=[2, 0, 1], transpose_backward=[2, 0, 1]),
        "transpose_backward",
    ),
    "a NaN intensity mean": (
        lambda p: p["foreground_intensity_properties_per_channel"]["0"].update(mean=math.nan),
        "foreground_intensity_properties_per_channel.0.mean",
    ),
    "intensity properties missing": (
        lambda p: p.update(foreground_intensity_properties_per_channel={}),
        "foreground_intensity_properties_per_channel.0",
    ),
    "percentiles the wrong way round": (
        lambda p: p["foreground_intensity_properties_per_channel"]["0"].update(percentile_00_5=5000.0),
        "percentile_00_5",
    ),
    "an unknown normalisation": (
        lambda p: _config(p).update(normalization_schemes=["Mine"]),
        "normalization_schemes[0]",
    ),
    "a normalisation per channel too many": (
        lambda p: _config(p).update(normalization_schemes=["CTNormalization"] * 2),
        "normalization_schemes",
    ),
    "a resampling order of 9": (
        lambda p: _config(p)["resampling_fn_data_kwargs"].update(order=9),
        "resampling_fn_data_kwargs.order",
    ),
    "use_mask_for_norm as text": (
        lambda p: _config(p).update(use_mask_for_norm=["no"]),
        "use_mask_for_norm[0]",
    ),
    "inherits_from a number": (lambda p: _config(p).update(inherits_from=3), "inherits_from"),
}

DATASET = {
    "labels.background 'zero'": (lambda d: d["labels"].update(background="zero"), "labels.background"),
    "labels.background 1": (lambda d: d["labels"].update(background=1), "labels.background"),
    "two labels with one value": (
        lambda d: d.update(labels={"background": 0, "liver": 1, "spleen": 1}),
        "labels.spleen",
    ),
    "a label value above the uint8 map": (
        lambda d: d.update(labels={"background": 0, "liver": 1, "tumour": 300}),
        "labels.tumour",
    ),
    "a negative label value": (
        lambda d: d.update(labels={"background": 0, "liver": -1, "tumour": 2}),
        "labels.liver",
    ),
    "a label value as text": (
        lambda d: d.update(labels={"background": 0, "liver": "1", "tumour": 2}),
        "labels.liver",
    ),
    "regions_class_order [1, 300]": (
        lambda d: d.update(labels={"background": 0, "a": [1, 2], "b": 2}, regions_class_order=[1, 300]),
        "regions_class_order[1]",
    ),
    "labels given as a list": (lambda d: d.update(labels=["background", "liver"]), "labels"),
    "channel_names keyed by name": (lambda d: d.update(channel_names={"CT": "0"}), "channel_names"),
    "channel_names with a gap": (lambda d: d.update(channel_names={"0": "CT", "2": "CT"}), "channel_names"),
    "fewer labels than the network's outputs": (
        lambda d: d.update(labels={"background": 0, "liver": 1}),
        "seg_layers",
    ),
}

CHECKPOINT = {
    "mirroring axes 'xyz'": (
        lambda c: c.update(inference_allowed_mirroring_axes="xyz"),
        "inference_allowed_mirroring_axes",
    ),
    "mirroring axes beyond the image": (
        lambda c: c.update(inference_allowed_mirroring_axes=(0, 1, 5)),
        "inference_allowed_mirroring_axes",
    ),
    "mirroring axis 3 of a 3D patch": (
        lambda c: c.update(inference_allowed_mirroring_axes=(3,)),
        "inference_allowed_mirroring_axes",
    ),
    "repeated mirroring axes": (
        lambda c: c.update(inference_allowed_mirroring_axes=(1, 1)),
        "inference_allowed_mirroring_axes",
    ),
    "NaN weights": (
        lambda c: next(iter(v for v in c["network_weights"].values() if v.is_floating_point())).fill_(
            math.nan
        ),
        "network_weights.",
    ),
    "a trainer name that is a number": (lambda c: c.update(trainer_name=7), "trainer_name"),
}


def _run(folder: Path, image: Path, out: Path, capsys, *extra: str) -> str:
    code = main(["infer", str(folder), str(image), "-o", str(out), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not list(out.rglob("*.nii.gz")) if out.exists() else True
    return one_error_line(err)


def _copy(pristine, tmp_path) -> tuple[Path, Path]:
    folder, image = pristine
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy, image


@pytest.mark.parametrize(
    "file,promise", [("plans.json", p) for p in PLANS] + [("dataset.json", p) for p in DATASET]
)
def test_promise_malformed_plans_and_dataset_json_are_named_by_file_and_key(
    pristine, tmp_path, capsys, file, promise
):
    change, key = (PLANS if file == "plans.json" else DATASET)[promise]
    folder, image = _copy(pristine, tmp_path)
    content = json.loads((folder / file).read_text())
    change(content)
    (folder / file).write_text(json.dumps(content))
    line = _run(folder, image, tmp_path / "out", capsys)
    named = "checkpoint_final.pth" if key == "seg_layers" else file  # the head that does not fit
    assert named in line and key in line and image.name not in line, line


@pytest.mark.parametrize("promise", list(CHECKPOINT))
def test_promise_malformed_checkpoint_fields_are_named_by_file_and_key(pristine, tmp_path, capsys, promise):
    change, key = CHECKPOINT[promise]
    folder, image = _copy(pristine, tmp_path)
    path = folder / "fold_0" / "checkpoint_final.pth"
    content = torch.load(path, weights_only=False)  # the test's own file
    change(content)
    torch.save(content, path)
    line = _run(folder, image, tmp_path / "out", capsys)
    assert "checkpoint_final.pth" in line and key in line and image.name not in line, line


def test_promise_plans_nested_100000_deep_are_refused_not_a_recursion_error(pristine, tmp_path, capsys):
    folder, image = _copy(pristine, tmp_path)
    (folder / "plans.json").write_text("[" * 100_000 + "]" * 100_000)
    line = _run(folder, image, tmp_path / "out", capsys)
    assert "plans.json" in line and "nested" in line


def test_promise_mirroring_axes_beyond_a_2d_patch_are_refused_only_with_mirroring(tmp_path, capsys):
    from test_nnunet_predict import make_model

    folder = make_model(
        tmp_path / "m2d",
        spacing=[2.0, 2.0],
        patch=[16, 16],
        schemes=["CTNormalization"],
        labels={"background": 0, "liver": 1},
    )
    path = folder / "fold_0" / "checkpoint_final.pth"
    content = torch.load(path, weights_only=False)
    content["inference_allowed_mirroring_axes"] = (0, 2)  # a 2D network has axes 0 and 1
    torch.save(content, path)
    image = make_image(tmp_path / "scan.nii.gz", shape=(12, 12, 4), spacing=(2.0, 2.0, 2.0))
    line = _run(folder, image, tmp_path / "out", capsys)
    assert "checkpoint_final.pth" in line and "below 2" in line
    assert main(["infer", str(folder), str(image), "-o", str(tmp_path / "ok"), "--disable-tta"]) == 0


def test_promise_import_nnunet_refuses_a_malformed_background_by_file(pristine, tmp_path, capsys):
    folder, _ = _copy(pristine, tmp_path)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["background"] = "zero"
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert main(["bundle", "import-nnunet", str(folder), "-o", str(tmp_path / "bundle")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "dataset.json" in line and "labels.background" in line
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("content", ['{"parts": [', "[1, 2]", '{"kind": "nnunet-parts", "parts": "x"}'])
def test_promise_a_damaged_voxpipe_model_json_is_named_with_its_fix(pristine, tmp_path, capsys, content):
    _, image = pristine
    model = tmp_path / "pulled"
    model.mkdir()
    (model / "voxpipe-model.json").write_text(content)
    line = _run(model, image, tmp_path / "out", capsys)
    assert "voxpipe-model.json" in line and image.name not in line


def test_promise_a_spacing_too_fine_to_resample_to_is_named_before_allocating(pristine, tmp_path, capsys):
    folder, image = _copy(pristine, tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    _config(plans).update(spacing=[1e-4, 1e-4, 1e-4])  # 20 000× finer: petabytes
    (folder / "plans.json").write_text(json.dumps(plans))
    assert main(["infer", str(folder), str(image), "-o", str(tmp_path / "out"), "--disable-tta"]) == 2
    err = capsys.readouterr().err
    assert "plans.json" in err and "configurations.3d_fullres.spacing" in err and "GiB" in err, err
    assert "Traceback" not in err and not (tmp_path / "out" / "scan.nii.gz").exists()
