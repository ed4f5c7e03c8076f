"""benchmarks/gpu_check.py, the script a lent GPU runs, works: here on the CPU, small, every part."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from voxpipe.pipelines.inference.predictor import resolve_precision

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_script_runs_every_part_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--device", "cpu", "--quick", "--init-filters", "8"])
    inference = report["inference"]
    assert set(inference["seconds"]) == {"cpu fp32", "cpu auto"}
    agreement = inference["agreement"]["cpu auto vs cpu fp32"]
    assert set(agreement) == {"1", "2"}
    if resolve_precision(torch.device("cpu"), "auto") == "fp32":  # the same arithmetic: the same map
        assert all(value == 1.0 for value in agreement.values()), agreement
    else:  # bf16 on this CPU: a random network's near-tied logits still mostly agree
        assert all(value >= 0.5 for value in agreement.values()), agreement
    stitched = report["stitching"]
    assert stitched["stitch on input"]["output device"] == stitched["stitch on cpu"]["output device"] == "cpu"
    assert stitched["12 classes streamed"]["rows handed on"] == 40  # every row of the 40-row grid, once
    assert report["training"]["finite"] and not math.isnan(report["training"]["last loss"])
    # the nnU-Net part: the same torch code on the same device twice gives the same map
    assert report["nnunet"]["identical voxels"] == 1.0
    assert report["totalseg"]["identical voxels"] == 1.0 and report["totalseg"]["image"] == [40, 36, 30]
    assert '"training"' in capsys.readouterr().out
