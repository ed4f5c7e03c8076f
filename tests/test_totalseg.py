"""TotalSegmentator's tasks in voxpipe against TotalSegmentator 2.18.0 itself, run offline on weights
folders of its own layout with seeded networks (``tests/totalseg_weights.py``).

The oracle runs once for the module, on every job below, in a child process (``tests/totalseg_oracle.py``);
each test compares voxpipe's files with TotalSegmentator's, voxel for voxel (DICOM: in world space),
and the statistics for equality. ``benchmarks/totalseg_parity.py`` runs every open task on every case.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from totalseg_oracle import (
    CASES,
    case_affine,
    differing,
    phantom_array,
    run_oracle,
    voxpipe_infer,
    write_case,
)
from totalseg_weights import make_weights

from voxpipe.cli import main
from voxpipe.errors import InputError
from voxpipe.pipelines.inference.totalseg import tasks
from voxpipe.pipelines.inference.totalseg.weights import model_folder, weights_root

LOBES = ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]  # fmt: skip

#: job id: (task, case, TotalSegmentator's options, voxpipe's CLI options)
JOBS = {
    "total RAS --ml --statistics": ("total", "RAS", {"ml": True, "statistics": True}, ["--ml", "--statistics"]),
    "total LPS --roi-subset --higher-order-resampling": (
        "total",
        "LPS",
        {"roi_subset": ["liver", *LOBES[:2]], "higher_order_resampling": True},
        ["--roi-subset", "liver", *LOBES[:2], "--higher-order-resampling"],
    ),
    "body LAS": ("body", "LAS", {}, []),
    "liver_vessels anisotropic --ml": ("liver_vessels", "anisotropic", {"ml": True}, ["--ml"]),
    "lung_nodules DICOM --ml --statistics": ("lung_nodules", "DICOM", {"ml": True, "statistics": True}, ["--ml", "--statistics"]),
}  # fmt: skip
# (every open task on every case, --fast, --fastest and the other options: benchmarks/totalseg_parity.py)


def _dicom_case(folder: Path) -> Path:
    from voxpipe.phantoms.dicom import write_dicom_series

    _, spacing, shape = CASES["LPS"]
    series = folder / "DICOM"
    write_dicom_series(
        phantom_array(shape, seed=5).astype(np.int16), case_affine("LPS", spacing, shape), series
    )
    return series


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Weights, cases, TotalSegmentator's outputs and voxpipe's, for every job."""
    root = tmp_path_factory.mktemp("totalseg")
    weights = root / "weights"
    for name in ("total", "body", "lung_nodules", "liver_vessels"):
        make_weights(weights, name, prefer=["liver", *LOBES])
    inputs = {name: write_case(root, name, seed=i) for i, name in enumerate(CASES)}
    inputs["DICOM"] = _dicom_case(root)
    jobs, ours = [], {}
    for job, (name, case, options, flags) in JOBS.items():
        slug = job.replace(" ", "_").replace("-", "")
        # (each job its own folder: with --ml TotalSegmentator writes statistics.json beside the map)
        theirs = root / "ts" / slug / (f"{slug}.nii.gz" if options.get("ml") else slug)
        jobs.append({"input": str(inputs[case]), "output": str(theirs), "task": name, "options": options})
        out = root / "voxpipe" / slug
        code = main(
            [
                "infer",
                name,
                str(inputs[case]),
                "-o",
                str(out),
                "--weights-dir",
                str(weights),
                "--device",
                "cpu",
                *flags,
            ]
        )
        ours[job] = (code, out, theirs)
    outcomes = run_oracle(jobs, weights, root / "home", root)
    return {job: (*ours[job], outcome) for job, outcome in zip(JOBS, outcomes, strict=True)}


def _case_name(job: str) -> str:
    return JOBS[job][1]


@pytest.mark.parametrize("job", list(JOBS))
def test_each_task_equals_totalsegmentators_own_output(parity, job):
    code, out, theirs, outcome = parity[job]
    assert outcome["ok"], outcome.get("error")
    assert code == 0
    name, case, options, _ = JOBS[job]
    if options.get("ml"):
        ours = nib.load(out / f"{case}.nii.gz")
        reference = nib.load(theirs)
        assert differing(ours, reference) == 0
        assert len(np.unique(np.asarray(ours.dataobj))) > 1  # structures were found, not an empty map
        from voxpipe.pipelines.inference.totalseg.steps import read_label_table

        assert read_label_table(out / f"{case}.nii.gz") == {int(k): v for k, v in _ts_table(theirs).items()}
        statistics = out / f"{case}_statistics.json"
        reference_stats = theirs.parent / "statistics.json"
    else:
        folder = out / case
        ours_files = sorted(p.name for p in folder.glob("*.nii.gz"))
        assert ours_files == sorted(p.name for p in theirs.glob("*.nii.gz"))
        found = 0
        for file in ours_files:
            a, b = nib.load(folder / file), nib.load(theirs / file)
            assert differing(a, b) == 0, file
            found += int(np.asarray(a.dataobj).any())
        assert found > 0
        statistics = folder / "statistics.json"
        reference_stats = theirs / "statistics.json"
    if options.get("statistics"):
        assert statistics.read_text() == reference_stats.read_text()  # the same file: values, order, format


def _ts_table(path: Path) -> dict:
    from voxpipe.pipelines.inference.totalseg.steps import read_label_table

    return read_label_table(path)


def test_the_task_tables_are_totalsegmentators_own(tmp_path):
    import os
    import subprocess
    import sys

    from totalseg_oracle import REPO, oracle_site

    site = oracle_site()
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "oracles" / "totalseg_tables.py")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, site)), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == tasks.tables()


def test_task_settings_follow_totalsegmentators_sub_modes_and_defaults():
    total = tasks.task("total")
    assert total.task_ids == (291, 292, 293, 294, 295) and total.resample == (1.5, 1.5, 1.5) and total.several
    assert (
        total.trainer == "nnUNetTrainerNoMirroring" and total.folds == (0,) and total.plans == "nnUNetPlans"
    )
    fast = tasks.task("total", fast=True)
    assert fast.task_ids == (297,) and fast.resample == (3.0, 3.0, 3.0) and not fast.several
    assert tasks.task("total", fastest=True).task_ids == (298,)
    assert tasks.task("body", fastest=True).task_ids == (300,)  # no 'fastest' model: the 6 mm 'fast' one
    vessels = tasks.task("liver_vessels")
    assert vessels.resample is None and vessels.crop == ("liver",) and vessels.crop_addon == (20, 20, 20)
    assert tasks.task("pleural_pericard_effusion").folds is None  # every fold found
    assert (
        tasks.task("liver_lesions").configuration == "3d_fullres_high"
        and tasks.task("liver_lesions").robust_crop
    )
    assert tasks.task("teeth").crop_model == "craniofacial_structures"
    assert tasks.task("tissue_types").licensed and not tasks.task("total").licensed
    assert set(tasks.OPEN_TASKS) <= set(tasks.task_names())
    assert tasks.models_of("lung_nodules") == [913, 298] and tasks.models_of("abdominal_muscles") == [
        952,
        300,
    ]
    assert tasks.dataset_folder(291) == "Dataset291_TotalSegmentator_part1_organs_1559subj"
    assert len(tasks.classes("total")) == 117 and tasks.classes("total")[5] == "liver"
    with pytest.raises(InputError, match="no --fast model"):
        tasks.task("liver_vessels", fast=True)
    with pytest.raises(InputError, match="not a TotalSegmentator task"):
        tasks.task("totally")


def test_the_weights_folder_is_found_where_totalsegmentator_looks(tmp_path):
    assert weights_root({"TOTALSEG_WEIGHTS_PATH": "/w", "TOTALSEG_HOME_DIR": "/h"}) == Path("/w")
    assert weights_root({"TOTALSEG_HOME_DIR": "/h", "HOME": "/u"}) == Path("/h/nnunet/results")
    assert weights_root({"HOME": "/u"}) == Path("/u/.totalsegmentator/nnunet/results")
    assert weights_root({"HOME": "/"}) == Path("/tmp/.totalsegmentator/nnunet/results")
    other = tmp_path / "Dataset291_other_name" / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    other.mkdir(parents=True)
    (other / "plans.json").write_text("{}")
    with pytest.raises(InputError, match="Dataset291_TotalSegmentator_part1_organs_1559subj") as error:
        model_folder(tmp_path, 291, "nnUNetTrainerNoMirroring", "nnUNetPlans", "3d_fullres", task="total")
    assert "voxpipe models pull total" in str(error.value.hint)  # never "the first Dataset291_* found"
    with pytest.raises(InputError, match="Dataset481_tissue_1559subj") as error:
        model_folder(tmp_path, 481, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", task="tissue_types")
    assert "licensed" in str(error.value.hint)


def test_cli_errors_are_the_users_problem_and_name_what_is_missing(tmp_path, capsys):
    image = write_case(tmp_path, "RAS")
    assert (
        main(
            [
                "infer",
                "total",
                str(image),
                "-o",
                str(tmp_path / "out"),
                "--weights-dir",
                str(tmp_path / "none"),
            ]
        )
        == 2
    )
    assert "Dataset291_TotalSegmentator_part1_organs_1559subj" in capsys.readouterr().err
    assert main(["infer", "liver_vessels", str(image), "-o", str(tmp_path / "o"), "--fast"]) == 2
    assert "no --fast model" in capsys.readouterr().err
    make_weights(tmp_path / "w", "body")
    code = main(
        [
            "infer",
            "body",
            str(image),
            "-o",
            str(tmp_path / "o"),
            "--weights-dir",
            str(tmp_path / "w"),
            "--roi-subset",
            "skin",
        ]
    )
    assert code == 2 and "--roi-subset works with the tasks total" in capsys.readouterr().err
    folder = next((tmp_path / "w").glob("Dataset299*/*"))
    assert main(["infer", str(folder), str(image), "-o", str(tmp_path / "n"), "--fast"]) == 2
    assert "--approximate" in capsys.readouterr().err  # the same word never means two things


@pytest.mark.realdata
@pytest.mark.slow
def test_real_scans_equal_totalsegmentators_output(real_data, tmp_path):
    """TotalSegmentator's own example scans (../shared/data/totalsegmentator): a CT, an MR stored LPS
    and the CT's DICOM series, each through TotalSegmentator and voxpipe on the same weights."""
    folder = real_data / "totalsegmentator"
    weights = tmp_path / "weights"
    make_weights(weights, "total", fast=True, prefer=["liver", "spleen", "kidney_left"])
    make_weights(weights, "total_mr", fast=True, prefer=["liver", "spleen"])
    # the CT is stored at 3 mm already: TotalSegmentator's resampling leaves it as it is (its own
    # branch); the DICOM series is resampled; 3 mm models keep the test short
    cases = [
        ("total", folder / "example_ct_sm.nii.gz", "example_ct_sm", {"fast": True}),
        ("total_mr", folder / "example_mr_sm.nii.gz", "example_mr_sm", {"fast": True}),
        ("total", folder / "example_ct_dicom", "example_ct_dicom", {"fast": True}),
    ]
    jobs = [
        {
            "input": str(path),
            "output": str(tmp_path / "ts" / f"{name}.nii.gz"),
            "task": task,
            "options": {"ml": True, **extra},
        }
        for task, path, name, extra in cases
    ]
    outcomes = run_oracle(jobs, weights, tmp_path / "home", tmp_path)
    for (task, path, name, extra), outcome in zip(cases, outcomes, strict=True):
        assert outcome["ok"], outcome.get("error")
        out = tmp_path / "voxpipe"
        flags = ["--fast"] if extra.get("fast") else []
        assert voxpipe_infer(task, path, out, weights, *flags) == 0
        ours = nib.load(out / f"{name}.nii.gz")
        assert len(np.unique(np.asarray(ours.dataobj))) > 2, name
        assert differing(ours, nib.load(tmp_path / "ts" / f"{name}.nii.gz")) == 0, name


@pytest.mark.slow
def test_several_tasks_in_one_run_load_each_model_once_and_equal_single_runs(tmp_path, monkeypatch):
    """``voxpipe infer lung_vessels,liver_lesions CT`` writes OUT/<task>/ as separate runs would, the
    3 mm crop model both tasks use built once."""
    from voxpipe.pipelines.inference.nnunet import model as model_module

    weights = tmp_path / "w"
    for task in ("lung_vessels", "liver_lesions"):
        make_weights(weights, task, prefer=["lung_upper_lobe_left", "liver"])
    image = write_case(tmp_path, "RAS", seed=1)
    built = []
    real = model_module.NnUNetModel.__init__

    def counting(self, folder, **options):
        built.append(folder.path)
        real(self, folder, **options)

    monkeypatch.setattr(model_module.NnUNetModel, "__init__", counting)
    both = tmp_path / "both"
    common = ["--weights-dir", str(weights), "--ml", "--device", "cpu"]
    assert main(["infer", "lung_vessels,liver_lesions", str(image), "-o", str(both), *common]) == 0
    assert len(built) == len(set(built))  # no model built twice ...
    assert sum("Dataset297" in str(p) for p in built) == 1  # ... the 3 mm crop model both tasks run
    alone = tmp_path / "alone"
    assert main(["infer", "liver_lesions", str(image), "-o", str(alone), *common]) == 0
    ours = np.asarray(nib.load(both / "liver_lesions" / "RAS.nii.gz").dataobj)
    assert np.array_equal(ours, np.asarray(nib.load(alone / "RAS.nii.gz").dataobj))
    assert (both / "lung_vessels" / "RAS.nii.gz").is_file()
    assert main(["infer", "liver_lesions,not_a_task", str(image), "-o", str(tmp_path / "x")]) == 2
