"""Inputs on which voxpipe's nnU-Net rules are checked against nnunetv2 2.8.1 itself.

Two kinds, shared by the oracle script (``tests/oracles/nnunet_planner.py``, which runs nnU-Net) and
``tests/test_planning.py`` (which runs voxpipe and compares):

* hand-made fingerprints (spacings and cropped shapes per case, in nnU-Net's ``(z, y, x)``),
  covering isotropic, anisotropic (5 mm slices, ACDC-like 10 mm), tiny, huge and 2D-like stacks,
  several channels and memory targets;
* phantom datasets written in nnU-Net v2's raw layout, on which both sides also measure the
  fingerprint from the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

CT = {"0": "CT"}
LIVER = {"background": 0, "liver": 1, "tumour": 2}


def _cases(
    rng: np.random.Generator, n: int, spacing: list[tuple[float, float]], shape: list[tuple[int, int]]
) -> dict[str, list]:
    """``n`` cases whose spacing and shape per axis (z, y, x) are drawn uniformly from the given ranges."""
    spacings = [[round(float(rng.uniform(*s)), 4) for s in spacing] for _ in range(n)]
    shapes = [[int(rng.integers(lo, hi + 1)) for lo, hi in shape] for _ in range(n)]
    return {"spacings": spacings, "shapes": shapes}


def fingerprint_cases() -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(20261201)
    cases: dict[str, dict[str, Any]] = {}

    def add(
        name: str, n: int, spacing, shape, *, channels=CT, labels=LIVER, relative=0.95, gpu=8.0, fixed=None
    ):
        values = fixed or _cases(rng, n, spacing, shape)
        cases[name] = {
            **values,
            "channel_names": channels,
            "labels": labels,
            "median_relative_size_after_cropping": relative,
            "gpu_memory_gb": gpu,
        }

    add("isotropic_1mm", 20, [(0.9, 1.1)] * 3, [(150, 260), (180, 260), (180, 260)])
    add("isotropic_1mm_24gb", 20, [(0.9, 1.1)] * 3, [(150, 260), (180, 260), (180, 260)], gpu=24.0)
    add("ct_5mm_slices", 30, [(2.5, 5.0), (0.6, 0.98), (0.6, 0.98)], [(40, 120), (512, 512), (512, 512)])
    add(
        "ct_mixed_thin_thick", 40, [(0.7, 5.0), (0.6, 0.98), (0.6, 0.98)], [(60, 600), (512, 512), (512, 512)]
    )
    add(
        "acdc_like_10mm",
        50,
        [(5.0, 10.0), (1.2, 1.8), (1.2, 1.8)],
        [(6, 18), (150, 260), (150, 260)],
        channels={"0": "cineMRI"},
        labels={"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
        relative=0.98,
    )
    add(
        "prostate_two_channels",
        32,
        [(3.0, 4.0), (0.55, 0.7), (0.55, 0.7)],
        [(15, 24), (256, 320), (256, 320)],
        channels={"0": "T2", "1": "ADC"},
        labels={"background": 0, "PZ": 1, "TZ": 2},
        relative=0.7,
    )
    add(
        "brats_like_four_channels",
        24,
        [(1.0, 1.0)] * 3,
        [(130, 150), (160, 180), (130, 150)],
        channels={"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        labels={"background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3},
        relative=0.45,
    )
    add("tiny_images", 12, [(0.9, 1.1)] * 3, [(18, 30), (24, 40), (24, 40)], gpu=8.0)
    add("huge_images", 10, [(0.6, 0.8)] * 3, [(700, 900), (480, 512), (480, 512)], gpu=4.0)
    add("two_d_like_stacks", 16, [(8.0, 12.0), (0.8, 1.0), (0.8, 1.0)], [(3, 8), (256, 320), (256, 320)])
    add(
        "coarse_in_plane",
        16,
        [(1.0, 1.2), (3.0, 4.0), (0.7, 0.9)],
        [(200, 260), (60, 80), (200, 260)],
        gpu=11.0,
    )
    add(
        "many_classes_80gb",
        14,
        [(1.4, 1.6)] * 3,
        [(250, 320), (220, 300), (220, 300)],
        labels={"background": 0, **{f"organ_{i}": i for i in range(1, 15)}},
        gpu=80.0,
    )
    add(
        "exact_ties", 6, None, None, fixed={"spacings": [[2.0, 2.0, 2.0]] * 6, "shapes": [[96, 128, 128]] * 6}
    )
    return cases


def write_nnunet_dataset(source_msd: Path, target: Path, *, name: str) -> Path:
    """Copy a voxpipe MSD phantom dataset into nnU-Net v2's raw layout (``imagesTr/<case>_0000.nii.gz``)."""
    if target.exists():
        shutil.rmtree(target)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    info = json.loads((source_msd / "dataset.json").read_text())
    for entry in info["training"]:
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        shutil.copy(source_msd / entry["image"], target / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(source_msd / entry["label"], target / "labelsTr" / f"{case}.nii.gz")
    labels = {v: int(k) for k, v in info["labels"].items()}
    (target / "dataset.json").write_text(
        json.dumps(
            {
                "name": name,
                "channel_names": {"0": "CT"},
                "labels": labels,
                "numTraining": len(info["training"]),
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )
    return target


# Phantom datasets: (task, seed, n_train, size, orientation note). Written by voxpipe synth, then copied
# into nnU-Net's layout; both planners read the same files.
PHANTOM_DATASETS = {
    "liver_tiny": {"task": "liver", "seed": 11, "n_train": 8, "size": "tiny"},
    "lung_tiny": {"task": "lung", "seed": 12, "n_train": 8, "size": "tiny"},
    "sagittal_mri": {"task": "sagittal", "seed": 13, "n_train": 5},
    "sagittal_mri_reoriented": {
        "task": "sagittal",
        "seed": 13,
        "n_train": 5,
        "reader": "NibabelIOWithReorient",
    },
    "sagittal_mri_sitk_reoriented": {
        "task": "sagittal",
        "seed": 14,
        "n_train": 5,
        "reader": "SimpleITKIOWithReorient",
    },
}


def write_sagittal_dataset(target: Path, *, seed: int, n_train: int, reader: str | None = None) -> Path:
    """MRI-like volumes stored sagittally (storage i runs along world y, j along z at 3-4.4 mm, k along x),
    zero outside an ellipsoid so that cropping to non-zero matters."""
    import nibabel as nib

    if target.exists():
        shutil.rmtree(target)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    for index in range(n_train):
        shape = (int(rng.integers(56, 72)), int(rng.integers(12, 20)), int(rng.integers(56, 72)))
        spacing = (
            round(float(rng.uniform(0.7, 0.9)), 3),
            round(float(rng.uniform(3.0, 4.4)), 3),
            round(float(rng.uniform(0.7, 0.9)), 3),
        )
        affine = np.zeros((4, 4))
        affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = spacing[0], spacing[1], -spacing[2], 1.0
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
        inside = (grid**2).sum(0) < 0.8
        image = np.where(inside, rng.normal(300, 40, shape), 0).astype(np.float32)
        label = ((grid**2).sum(0) < 0.15).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, affine), target / "imagesTr" / f"knee{index:02d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), target / "labelsTr" / f"knee{index:02d}.nii.gz")
    info = {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "cartilage": 1},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    if reader:
        info["overwrite_image_reader_writer"] = reader
    (target / "dataset.json").write_text(json.dumps(info, indent=2))
    return target


def write_phantom_dataset(name: str, folder: Path) -> Path:
    from voxpipe.phantoms.ct import write_msd_dataset

    spec = PHANTOM_DATASETS[name]
    target = folder / f"Dataset{900 + list(PHANTOM_DATASETS).index(name)}_{name}"
    if spec["task"] == "sagittal":
        return write_sagittal_dataset(
            target, seed=spec["seed"], n_train=spec["n_train"], reader=spec.get("reader")
        )
    msd = folder / f"{name}_msd"
    write_msd_dataset(
        msd, task=spec["task"], n_train=spec["n_train"], n_test=0, seed=spec["seed"], size=spec["size"]
    )
    return write_nnunet_dataset(msd, target, name=name)


# Real scans from ../shared/data (spacings from 0.63 × 0.63 × 5 mm to 3 mm isotropic, CT and MRI), copied into
# nnU-Net's raw layout as NIfTI; the labels only need to be on the image grid for planning.
REAL_CASES = {
    "ts_abdomen": (
        "totalsegmentator/example_ct.nii.gz",
        "totalsegmentator/example_seg_fast_force_split.nii.gz",
    ),
    "ts_abdomen_top": ("totalsegmentator/example_ct_sm.nii.gz", "totalsegmentator/example_seg.nii.gz"),
    "ts_mr": ("totalsegmentator/example_mr_sm.nii.gz", "totalsegmentator/example_seg_mr.nii.gz"),
    "lung2": ("pyradiomics/lung2_image.nrrd", "pyradiomics/lung2_label.nrrd"),
    "monai_mri": ("monai_testing_data/anatomical.nii", "monai_testing_data/anatomical_label.nii.gz"),
    "dcmqi_ct": ("dcmqi/ct-3slice", "dcmqi/liver_seg.nrrd"),
}


def write_real_dataset(data: Path, target: Path) -> Path:
    """The REAL_CASES as ``Dataset950_real`` (nnU-Net v2 raw, .nii.gz written by SimpleITK, labels binarised)."""
    import SimpleITK as sitk

    if target.exists():
        shutil.rmtree(target)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    for case, (image_name, label_name) in REAL_CASES.items():
        source = data / image_name
        if source.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source)))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(source))
        label = sitk.ReadImage(str(data / label_name))
        mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(label) > 0).astype(np.uint8))
        mask.CopyInformation(image)
        sitk.WriteImage(image, str(target / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(mask, str(target / "labelsTr" / f"{case}.nii.gz"))
    (target / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "structure": 1},
                "numTraining": len(REAL_CASES),
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )
    return target
