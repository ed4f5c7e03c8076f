"""Run nnunetv2's own planner on the cases of ``tests/planning_cases.py``; write what it planned.

Not part of the test run (nnunetv2 pulls torchvision and timm, which do not match our CPU torch pin).
It produced ``tests/data/nnunet_plans_expected.json`` with:

    python -m venv /tmp/nnunet-oracle && /tmp/nnunet-oracle/bin/pip install -e . -c constraints.txt
    /tmp/nnunet-oracle/bin/pip install nnunetv2==2.8.1 -c constraints.txt
    /tmp/nnunet-oracle/bin/pip uninstall -y torchvision timm   # not needed by the planner; broken with torch 2.13 CPU
    /tmp/nnunet-oracle/bin/python tests/oracles/nnunet_planner.py tests/data/nnunet_plans_expected.json

For hand-made fingerprints it writes nnU-Net's ``dataset_fingerprint.json`` and runs
``ExperimentPlanner.plan_experiment``; for the phantom datasets it runs nnU-Net's
``DatasetFingerprintExtractor`` on the files first, exactly as ``nnUNetv2_plan_and_preprocess`` does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))


def _configuration(plans: dict) -> dict:
    full = plans["configurations"]["3d_fullres"]
    architecture = full["architecture"]["arch_kwargs"]
    low = plans["configurations"].get("3d_lowres")
    return {
        "transpose_forward": plans["transpose_forward"],
        "spacing": full["spacing"],
        "patch_size": full["patch_size"],
        "batch_size": full["batch_size"],
        "pool_op_kernel_sizes": architecture["strides"],
        "conv_kernel_sizes": architecture["kernel_sizes"],
        "features_per_stage": architecture["features_per_stage"],
        "median_image_size_in_voxels": full["median_image_size_in_voxels"],
        "normalization_schemes": full["normalization_schemes"],
        "use_mask_for_norm": full["use_mask_for_norm"],
        "lowres": None if low is None else {"spacing": low["spacing"], "patch_size": low["patch_size"]},
    }


def main(out: str) -> None:
    from planning_cases import PHANTOM_DATASETS, fingerprint_cases, write_phantom_dataset, write_real_dataset

    root = Path(tempfile.mkdtemp(prefix="nnunet-oracle-"))
    raw, preprocessed = root / "raw", root / "preprocessed"
    os.environ.update(
        nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(root / "results")
    )
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    class FingerprintOnlyPlanner(ExperimentPlanner):
        def determine_reader_writer(self):  # no image files for a hand-made fingerprint
            return SimpleITKIO

    results = {"nnunetv2": importlib.metadata.version("nnunetv2"), "fingerprints": {}, "datasets": {}}
    for number, (name, case) in enumerate(fingerprint_cases().items(), start=500):
        dataset = f"Dataset{number}_{name}"
        (raw / dataset / "imagesTr").mkdir(parents=True)
        save_json(
            {
                "channel_names": case["channel_names"],
                "labels": case["labels"],
                "numTraining": len(case["spacings"]),
                "file_ending": ".nii.gz",
            },
            str(raw / dataset / "dataset.json"),
        )
        (preprocessed / dataset).mkdir(parents=True)
        channels = len(case["channel_names"])
        save_json(
            {
                "spacings": case["spacings"],
                "shapes_after_crop": case["shapes"],
                "foreground_intensity_properties_per_channel": {str(c): {} for c in range(channels)},
                "median_relative_size_after_cropping": case["median_relative_size_after_cropping"],
            },
            str(preprocessed / dataset / "dataset_fingerprint.json"),
        )
        plans = FingerprintOnlyPlanner(
            dataset, gpu_memory_target_in_gb=case["gpu_memory_gb"]
        ).plan_experiment()
        results["fingerprints"][name] = _configuration(plans)
    data = Path(os.environ.get("VOXPIPE_REAL_DATA", TESTS.parents[1] / "shared" / "data"))
    if data.is_dir():  # real scans, when ../shared/data is there
        folder = write_real_dataset(data, raw / "Dataset950_real")
        DatasetFingerprintExtractor(folder.name, num_processes=2).run()
        fingerprint = json.loads((preprocessed / folder.name / "dataset_fingerprint.json").read_text())
        plans = ExperimentPlanner(folder.name, gpu_memory_target_in_gb=8).plan_experiment()
        results["real"] = {
            **_configuration(plans),
            "spacings": fingerprint["spacings"],
            "shapes_after_crop": fingerprint["shapes_after_crop"],
        }
    for name in PHANTOM_DATASETS:
        folder = write_phantom_dataset(name, raw)
        DatasetFingerprintExtractor(folder.name, num_processes=2).run()
        fingerprint = json.loads((preprocessed / folder.name / "dataset_fingerprint.json").read_text())
        plans = ExperimentPlanner(folder.name, gpu_memory_target_in_gb=8).plan_experiment()
        results["datasets"][name] = {
            **_configuration(plans),
            "spacings": fingerprint["spacings"],
            "shapes_after_crop": fingerprint["shapes_after_crop"],
            "median_relative_size_after_cropping": fingerprint["median_relative_size_after_cropping"],
        }
    lines = ["{", f' "nnunetv2": {json.dumps(results["nnunetv2"])},']
    if "real" in results:
        lines.append(f' "real": {json.dumps(results["real"])},')
    for section in ("fingerprints", "datasets"):  # one line per case keeps the file reviewable
        rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in results[section].items()]
        lines += [f' "{section}": {{', ",\n".join(rows), " }" + ("," if section == "fingerprints" else "")]
    Path(out).write_text("\n".join(lines + ["}"]) + "\n")
    print(f"wrote {out}: {len(results['fingerprints'])} fingerprints, {len(results['datasets'])} datasets")


if __name__ == "__main__":
    main(sys.argv[1])
