"""LUNA16 FROC/CPM: hand-made lists whose answer is known, and equality with the official evaluation script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import require
from luna16_cases import SEEDS, VARIED_SEEDS, write_case, write_varied_case

from voxpipe.errors import InputError
from voxpipe.metrics.detection import (
    FP_RATES,
    Finding,
    luna16_froc,
    read_findings,
    read_seriesuids,
    roc_curve,
)

EXPECTED = json.loads((Path(__file__).parent / "data" / "luna16_expected.json").read_text())


@pytest.mark.parametrize("seed", [*SEEDS, *VARIED_SEEDS])
def test_cpm_equals_the_official_luna16_script(tmp_path, seed):
    """Promise: the script's CPM, sensitivities and counts on 306 generated lists (ties, FP rates on the
    grid, double and excluded hits, empty scans, the 100-mark cap; tests/oracles/luna16_regenerate.py)."""
    if str(seed) not in EXPECTED:
        pytest.fail(f"seed {seed} has no expected value: rerun tests/oracles/luna16_regenerate.py")
    paths = (write_case if seed in SEEDS else write_varied_case)(tmp_path, seed)
    result = luna16_froc(
        read_findings(paths["candidates"], value="probability"),
        read_findings(paths["annotations"], value="diameter_mm"),
        excluded=read_findings(paths["annotations_excluded"], value="diameter_mm"),
        seriesuids=read_seriesuids(paths["seriesuids"]),
        n_bootstrap=0,
    )
    expected = EXPECTED[str(seed)]
    assert result.cpm == pytest.approx(expected["cpm"], abs=1e-12)
    assert [result.sensitivity_at[r] for r in FP_RATES] == pytest.approx(expected["at"], abs=1e-12)
    assert (result.true_positives, result.false_positives, result.false_negatives, result.n_nodules) == (
        expected["tp"],
        expected["fp"],
        expected["fn"],
        expected["nodules"],
    )
    assert (result.ignored_on_excluded, result.ignored_double_hits) == (
        expected["ignored"],
        expected["double"],
    )


def _f(series, x, value, y=0.0, z=0.0):
    return Finding(series, float(x), float(y), float(z), float(value))


def test_hand_made_lists_follow_the_rules():
    nodules = [_f("a", 0, 10), _f("a", 50, 10), _f("b", 0, -1)]  # b's nodule: diameter unknown → 10 mm
    excluded = [_f("a", 100, 8)]
    candidates = [
        _f("a", 1, 0.9),
        _f("a", -2, 0.95),
        _f("a", 4.99, 0.1),  # three hits on one nodule: one TP at 0.95
        _f("a", 5.0, 0.8),  # on the sphere, not inside: a false positive
        _f("a", 101, 0.99),  # on an excluded finding: ignored
        _f("b", 4.0, 0.7),  # inside b's 10 mm default
        _f("c", 0, 0.5),  # a scan without nodules: a false positive
    ]
    result = luna16_froc(
        candidates, nodules, excluded=excluded, seriesuids=["a", "b", "c", "d"], n_bootstrap=0
    )
    assert (result.n_nodules, result.true_positives, result.false_negatives) == (
        3,
        2,
        1,
    )  # the nodule at x=50 is missed
    assert (result.false_positives, result.ignored_on_excluded, result.ignored_double_hits) == (2, 1, 2)
    # TPs at 0.95 and 0.7, FPs at 0.8 and 0.5 over four scans: 1/3 up to the first FP (0.25 FP/scan), then 2/3.
    assert result.sensitivity_at[0.125] == pytest.approx(1 / 3)
    assert result.sensitivity_at[0.25] == pytest.approx(
        2 / 3
    )  # the script's grid point lies just right of 0.25
    assert result.sensitivity_at[8.0] == pytest.approx(2 / 3)
    assert result.cpm == pytest.approx((1 / 3 + 6 * 2 / 3) / 7)
    empty = luna16_froc([], nodules, seriesuids=["a", "b"], n_bootstrap=0)
    assert empty.cpm == 0.0 and empty.false_negatives == 3


def test_bootstrap_gives_a_seeded_ci_around_the_cpm(tmp_path):
    paths = write_case(tmp_path, 1)
    args = (
        read_findings(paths["candidates"], value="probability"),
        read_findings(paths["annotations"], value="diameter_mm"),
    )
    kwargs = {
        "excluded": read_findings(paths["annotations_excluded"], value="diameter_mm"),
        "seriesuids": read_seriesuids(paths["seriesuids"]),
        "n_bootstrap": 200,
        "seed": 3,
    }
    first, second = luna16_froc(*args, **kwargs), luna16_froc(*args, **kwargs)
    low, high = first.ci["cpm_ci95"]
    assert low < first.cpm < high and first.ci == second.ci and first.ci["bootstrap_samples"] == 200


def test_roc_curve_equals_scikit_learns():
    metrics = require("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 2, size=int(rng.integers(3, 60)))
        scores = np.round(rng.random(truth.size), int(rng.integers(1, 3)))  # rounding makes ties
        if truth.min() == truth.max():
            continue
        for mine, theirs in zip(roc_curve(truth, scores), metrics.roc_curve(truth, scores), strict=True):
            assert np.allclose(mine, theirs)


def test_bad_csv_files_are_named(tmp_path):
    (tmp_path / "c.csv").write_text("seriesuid,coordX,coordY,coordZ\n1,2,3,4\n")
    with pytest.raises(InputError, match="missing \\['probability'\\]"):
        read_findings(tmp_path / "c.csv", value="probability")
    (tmp_path / "d.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n1,2,x,4,0.5\n")
    with pytest.raises(InputError, match="line 2"):
        read_findings(tmp_path / "d.csv", value="probability")
    with pytest.raises(InputError, match="nothing at that path"):
        read_findings(tmp_path / "none.csv", value="probability")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_promise_decimal_commas_are_refused_naming_the_line(tmp_path):
    path = _write(
        tmp_path / "c.csv",
        "seriesuid,coordX,coordY,coordZ,probability\n1.2.3,10.5,20.0,30.0,0.9\n1.2.3,12,5,-3,4,7,0,9\n",
    )
    with pytest.raises(
        InputError, match=r"c.csv'.*line 3: expected 5 cells as in the header, found 8"
    ) as error:
        read_findings(path, value="probability")
    assert "decimal commas" in error.value.hint


def test_promise_spaces_after_separators_do_not_change_the_uids(tmp_path):
    spaced = _write(
        tmp_path / "c.csv", "seriesuid, coordX, coordY, coordZ, probability\n1.2.3, 10.5, 20.0, 30.0, 0.9\n"
    )
    assert read_findings(spaced, value="probability") == [Finding("1.2.3", 10.5, 20.0, 30.0, 0.9)]
    uids = _write(tmp_path / "s.csv", " 1.2.3\n1.2.4 \n1.2.3\n")
    assert read_seriesuids(uids) == ["1.2.3", "1.2.4"]


def test_promise_semicolon_files_get_a_hint(tmp_path):
    path = _write(tmp_path / "c.csv", "seriesuid;coordX;coordY;coordZ;probability\n1.2.3;1;2;3;0.5\n")
    with pytest.raises(InputError, match="c.csv'.*missing") as error:
        read_findings(path, value="probability")
    assert "semicolons" in error.value.hint


def test_promise_an_empty_seriesuids_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"s.csv': expected one series UID per line, found none"):
        read_seriesuids(_write(tmp_path / "s.csv", "\n\n"))


def test_promise_candidates_of_unlisted_scans_are_counted_and_reported(tmp_path, caplog, capsys):
    from voxpipe.cli import main

    candidates = _write(
        tmp_path / "c.csv",
        "seriesuid,coordX,coordY,coordZ,probability\na,0,0,0,0.9\nb,0,0,0,0.8\nzz,0,0,0,0.7\nzz,1,1,1,0.6\n",
    )
    annotations = _write(
        tmp_path / "a.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,6\nyy,0,0,0,6\n"
    )
    uids = _write(tmp_path / "s.csv", "a\nb\n")
    code = main(
        ["evaluate-detections", str(candidates), str(annotations), "--seriesuids", str(uids)]
        + ["-o", str(tmp_path / "out"), "--bootstrap", "0"]
    )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["unlisted_candidates"], summary["unlisted_nodules"]) == (2, 1)
    assert summary["unlisted_scans"] == ["yy", "zz"]
    assert "not scored: 2 candidate(s) and 1 nodule(s)" in capsys.readouterr().out
    assert summary["true_positives"] == 1 and summary["false_positives"] == 1
