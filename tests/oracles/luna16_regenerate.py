"""Rewrite ``tests/data/luna16_expected.json`` with what the LUNA16 evaluation script computes.

The script (``noduleCADEvaluationLUNA16.py`` with ``NoduleFinding.py`` and ``tools/csvTools.py``, as in
the LUNA16 ``evaluationScript`` folder) stays outside this repository. It is Python 2: this runner
converts it with lib2to3 in memory, opens CSVs as text, turns plotting into no-ops and bootstrapping
off, then runs what ``noduleCADEvaluation`` runs (``collect``, ``evaluateCAD`` with 100 marks) on every generated case of ``tests/luna16_cases.py`` and
records its CPM (the ``frvvlu / 7`` it prints), the sensitivities its loop reads off its own curve,
and the counts it writes to ``CADAnalysis.txt``. A case where the script's CPM is NaN (no nodule
found: it divides by zero) is left out.

    python tests/oracles/luna16_regenerate.py /path/to/evaluationScript   # needs scikit-learn
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from luna16_cases import SEEDS, VARIED_SEEDS, write_case, write_varied_case  # noqa: E402


def _python3(source: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lib2to3.refactor import RefactoringTool, get_fixers_from_package

    tool = RefactoringTool(get_fixers_from_package("lib2to3.fixes"))
    return str(tool.refactor_string(source + "\n", "script"))


class _NoPlot(types.ModuleType):
    """Every attribute is a callable that returns this object: plotting calls do nothing."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self


def load_script(folder: Path) -> types.ModuleType:
    finding = types.ModuleType("NoduleFinding")
    exec(_python3((folder / "NoduleFinding.py").read_text()), finding.__dict__)
    csv_tools = types.ModuleType("tools.csvTools")
    source = _python3((folder / "tools" / "csvTools.py").read_text())
    exec(re.sub(r"open\((\w+), *[\"']rb[\"']\)", r"open(\1, 'r', newline='')", source), csv_tools.__dict__)
    tools = types.ModuleType("tools")
    tools.csvTools = csv_tools
    sys.modules.update({"NoduleFinding": finding, "tools": tools, "tools.csvTools": csv_tools})
    script = types.ModuleType("luna16_script")
    source = _python3((folder / "noduleCADEvaluationLUNA16.py").read_text())
    exec(source, script.__dict__)
    script.plt = _NoPlot("plt")
    script.bPerformBootstrapping = False
    return script


def run_case(script: types.ModuleType, paths: dict[str, Path], out: Path) -> dict | None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nodules, uids = script.collect(
            str(paths["annotations"]), str(paths["annotations_excluded"]), str(paths["seriesuids"])
        )
        # as noduleCADEvaluation calls it (some copies do not return its result)
        fps, sens, *_ = script.evaluateCAD(
            uids,
            str(paths["candidates"]),
            str(out),
            nodules,
            "cad",
            maxNumberOfCADMarks=100,
            performBootstrapping=False,
        )
    # print(frvvlu/7, nxth) in Python 2 prints a tuple: "(0.62..., 16.0)" (NumPy may wrap the float)
    line = next(x for x in printed.getvalue().splitlines() if re.search(r"16\.0\)?$", x.strip()))
    cpm = float(re.search(r"([-+]?\d+\.?\d*(?:[eE][-+]?\d+)?|nan)", line.replace("float64", "")).group(1))
    if not np.isfinite(cpm):
        return None
    grid = np.linspace(script.FROC_minX, script.FROC_maxX, num=10001)
    curve = np.interp(grid, fps, sens)
    at, rate = [], 0.125
    for fp, value in zip(grid, curve, strict=True):  # the script's own reading loop, on its own curve
        if abs(fp - rate) < 3e-4:
            at.append(float(value))
            rate *= 2
        if abs(rate - 16) < 1e-5:
            break
    report = (out / "CADAnalysis.txt").read_text()

    def count(label: str) -> int:
        return int(re.search(rf"{label}: (\d+)", report).group(1))

    return {
        "cpm": cpm,
        "at": at,
        "tp": count("True positives"),
        "fp": count("False positives"),
        "fn": count("False negatives"),
        "nodules": count("Total number of nodules"),
        "ignored": count("Ignored candidates on excluded nodules"),
        "double": count("Ignored candidates which were double detections on a nodule"),
    }


def main(folder: str) -> None:
    script = load_script(Path(folder))
    expected = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (*SEEDS, *VARIED_SEEDS):
            case = Path(tmp) / str(seed)
            writer = write_case if seed in SEEDS else write_varied_case
            result = run_case(script, writer(case, seed), case)
            if result is not None:
                expected[str(seed)] = result
    target = TESTS / "data" / "luna16_expected.json"
    target.write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {len(expected)} cases to {target}")


if __name__ == "__main__":
    main(sys.argv[1])
