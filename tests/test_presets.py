"""Presets and augmentation: invariants over every preset/level, alignment, seeding, fingerprint."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from monai.transforms import RandAffined, RandFlipd, Randomizable

from voxpipe.errors import InputError
from voxpipe.phantoms.ct import liver_phantom
from voxpipe.pipelines.data.fingerprint import compute_fingerprint, target_spacing
from voxpipe.transforms.augment import LEVELS, augmentation
from voxpipe.transforms.intensity import CT_WINDOWS
from voxpipe.transforms.io import save_nifti
from voxpipe.transforms.presets import PRESETS, compose, patch_sampling, preprocessing, window_of


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    phantom = liver_phantom(5, orientation="LPS", size="tiny")
    root = tmp_path_factory.mktemp("preset")
    return {
        "image": str(save_nifti(phantom.image, phantom.affine, root / "image.nii.gz")),
        "label": str(save_nifti(phantom.label, phantom.affine, root / "label.nii.gz")),
        "case": "p5",
    }


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_keys_input_and_alignment(case, name):
    original = copy.deepcopy(case)
    chain = compose([preprocessing(name, spacing=(2.0, 2.0, 3.0), crop_foreground=True)])
    out = chain(case)
    assert case == original and set(out) == set(case)  # input unchanged, keys kept
    image, label = out["image"], out["label"]
    assert image.shape == label.shape and image.dtype == torch.float32
    assert not torch.is_floating_point(label.as_tensor()) or torch.equal(label, label.round())
    assert np.allclose(image.affine, label.affine)
    assert set(torch.unique(label).tolist()) <= {0, 1, 2} and (label > 0).any()
    if name == "mri":
        assert abs(float(image[image != 0].mean())) < 0.1
    else:
        assert (
            float(image.min()) >= 0.0
            and float(image.max()) <= 1.0
            and window_of(chain.transforms) == CT_WINDOWS[name]
        )
    assert np.allclose(np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0), (2.0, 2.0, 3.0))
    assert not any(
        isinstance(t, Randomizable) for t in chain.transforms
    )  # deterministic: cacheable, inference-safe
    # The same chain without labels serves inference.
    assert set(chain({"image": case["image"]})) == {"image"}


@pytest.mark.parametrize("level", sorted(set(LEVELS) - {"none"}))
def test_augmentation_is_seeded_and_keeps_label_and_image_aligned(case, level):
    base = compose([preprocessing("ct_liver", spacing=(2.0, 2.0, 3.0))])(case)
    # An image that *is* the liver mask: after any spatial augmentation it must still overlay the label.
    probe = {"image": (base["label"] == 1).float(), "label": base["label"]}
    outs = []
    for seed in (1, 1, 2):
        chain = augmentation(level, seed=seed)
        for (
            transform
        ) in chain.transforms:  # every spatial transform fires; intensity ones would blur the probe
            transform.prob = 1.0 if isinstance(transform, (RandAffined, RandFlipd)) else 0.0
        outs.append(chain(copy.deepcopy(probe)))
    before = probe["image"].clone()
    chain(probe)
    assert torch.equal(probe["image"], before)  # the input is not modified in place
    assert torch.equal(outs[0]["image"], outs[1]["image"]) and torch.equal(outs[0]["label"], outs[1]["label"])
    assert not torch.equal(outs[0]["label"], outs[2]["label"])
    for out in outs:
        assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2}  # nearest: no new label values
        moved = out["image"] > 0.5
        truth = out["label"] == 1
        dice = 2 * float((moved & truth).sum()) / float(moved.sum() + truth.sum())
        centroid_gap = torch.linalg.norm(
            torch.nonzero(moved).float().mean(0) - torch.nonzero(truth).float().mean(0)
        )
        assert dice > 0.9 and float(centroid_gap) < 0.5, (
            dice,
            centroid_gap,
        )  # bilinear vs nearest edges only


def test_augmentation_none_and_unknown_level():
    assert len(augmentation("none").transforms) == 0
    with pytest.raises(InputError, match="expected one of"):
        augmentation("extreme")


def test_training_chain_samples_patches_reproducibly(case):
    def sample(seed):
        chain = compose(
            [
                preprocessing("ct_liver"),
                patch_sampling((32, 32, 16), num_samples=2),
                augmentation("default", seed=seed),
            ]
        )
        chain.set_random_state(seed=seed)
        return chain(dict(case))

    first, again = sample(0), sample(0)
    assert len(first) == 2 and all(
        torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True)
    )
    assert first[0]["image"].shape[1:] == (32, 32, 16)


def test_fingerprint_drives_window_and_spacing(tiny_liver_dataset):
    fingerprint = compute_fingerprint(tiny_liver_dataset)
    assert fingerprint["n_cases"] == 4 and set(fingerprint["label_volume_ml"]) <= {"1", "2"}
    low, high = (
        fingerprint["foreground_intensity"]["percentile_00_5"],
        fingerprint["foreground_intensity"]["percentile_99_5"],
    )
    assert -300 < low < high < 300  # liver and tumour HU
    chain = preprocessing("ct_liver", spacing="auto", fingerprint=fingerprint)
    assert window_of(chain) == (low, high)
    assert list(chain[3].spacing_transform.pixdim) == pytest.approx(fingerprint["suggested"]["spacing"])
    assert target_spacing(np.array([[0.8, 0.8, 5.0], [0.7, 0.7, 2.5], [0.9, 0.9, 5.0]])) == [0.8, 0.8, 3.0]
    with pytest.raises(InputError, match="'auto' with a fingerprint"):
        preprocessing("ct_liver", spacing="auto")


def test_promise_fingerprint_refuses_a_case_with_another_channel_count(tiny_liver_dataset, tmp_path):
    """A 2-channel image in a 1-channel (CT) dataset is named, not averaged into channel 0's statistics."""
    import json
    import shutil
    from pathlib import Path

    import nibabel as nib

    copy = Path(shutil.copytree(tiny_liver_dataset, tmp_path / "copy"))
    first = json.loads((copy / "dataset.json").read_text())["training"][1]["image"]
    image = nib.load(copy / first)
    data = np.asarray(image.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), image.affine), copy / first)
    with pytest.raises(
        InputError, match=rf"{Path(first).name}'?: 2 channel\(s\); expected 1 as in dataset.json"
    ):
        compute_fingerprint(copy)
