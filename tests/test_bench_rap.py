"""The RAP benchmark's counting, checked against brute force and hand-counted rows.

``img_correct_bounds`` is what the benchmark holds every row's ``rap_img_correct`` to: the range of
correct answers among PISM's λ = 0 attempts k < M that PISM's own recorded counts allow. Here it is
compared with every possible outcome sequence of the K attempts, walked by the early-exit rule and
by the full grid: the bounds must contain the true count of every sequence and be reached by some.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_rap as bench

K = 10


def early_exit_record(outcomes: tuple[bool, ...]) -> tuple[int, int]:
    """(attempts, correct) PISM early exit records at λ = 0: it stops at the first correct answer."""
    attempts = correct = 0
    for ok in outcomes:
        attempts += 1
        if ok:
            correct = 1
            break
    return attempts, correct


@pytest.mark.parametrize("m", [1, 3, 5, 10])
@pytest.mark.parametrize("mode", ["early_exit", "full"])
def test_bounds_hold_for_every_outcome_sequence_and_are_tight(mode, m):
    seen: dict[tuple[int, int], set[int]] = defaultdict(set)
    for outcomes in itertools.product((False, True), repeat=K):
        record = early_exit_record(outcomes) if mode == "early_exit" else (K, sum(outcomes))
        seen[record].add(sum(outcomes[:m]))  # RAP's image rollouts: the same attempts k < M
    for (attempts, correct), truths in seen.items():
        lo, hi = bench.img_correct_bounds(attempts, correct, m, K, mode)
        assert (lo, hi) == (min(truths), max(truths)), (attempts, correct)
        assert truths == set(range(lo, hi + 1))


def test_bounds_refuse_an_unknown_mode():
    with pytest.raises(ValueError, match="early_exit or full"):
        bench.img_correct_bounds(1, 1, 5, K, "released")


def _row(rid, task, d, pism, cmab, log_psi=None, norm=None, flag=None):
    return {
        "id": rid,
        "task": task,
        "rap_cde": d,
        "pism_bucket": pism,
        "cmab_bucket": cmab,
        "rap_ace_log_psi": log_psi,
        "rap_ace_log_psi_norm": norm,
        "rap_ace_flag": flag,
    }


ROWS = [
    _row("a", "ocr", 1.0, "easy", "hard", -5.0, -2.0, False),
    _row("b", "ocr", 0.4, "hard", "hard", -1.0, -3.0, True),
    _row("c", "color", 0.0, "unsolved", "unsolved"),
    _row("d", "color", -0.2, "medium", "easy", -2.0, -1.0, True),
    _row("e", "color", 0.5, "medium", None, -9.0, -4.0, False),
]


def test_d_classes_histogram_and_confusion_count_by_hand():
    assert [bench.cde_class(d) for d in (-1, 0.0, 1e-9, 0.4999, 0.5, 1)] == [
        "D <= 0",
        "D <= 0",
        "0 < D < 0.5",
        "0 < D < 0.5",
        "D >= 0.5",
        "D >= 0.5",
    ]
    assert bench.d_histogram(ROWS) == {
        "all": {"-0.20": 1, "+0.00": 1, "+0.40": 1, "+0.50": 1, "+1.00": 1},
        "color": {"-0.20": 1, "+0.00": 1, "+0.50": 1},
        "ocr": {"+0.40": 1, "+1.00": 1},
    }
    pism = bench.confusion(ROWS, "pism_bucket")
    assert pism["D <= 0"] == {"easy": 0, "medium": 1, "hard": 0, "unsolved": 1}
    assert pism["0 < D < 0.5"] == {"easy": 0, "medium": 0, "hard": 1, "unsolved": 0}
    assert pism["D >= 0.5"] == {"easy": 1, "medium": 1, "hard": 0, "unsolved": 0}
    cmab = bench.confusion(ROWS, "cmab_bucket")  # row e has no CMAB bucket: not counted
    assert sum(sum(v.values()) for v in cmab.values()) == 4


def test_ace_decision_is_made_again_from_the_stored_log_psi():
    # log 0.1 = -2.303: raw flags b (-1.0) and d (-2.0); normalised flags a (-2.0) and d (-1.0)
    shares = bench.ace_shares(ROWS, 0.1)
    assert shares == {
        "threshold": 0.1,
        "rows": 5,
        "scored": 4,
        "flagged_raw": 2,
        "flagged_normalized": 2,
        "flagged_stored": 2,
        "raw_vs_stored_mismatches": 0,
    }
    wrong = [dict(ROWS[0], rap_ace_flag=True), *ROWS[1:]]
    assert bench.ace_shares(wrong, 0.1)["raw_vs_stored_mismatches"] == 1
    assert bench.ace_shares(ROWS, math.exp(-1.5))["flagged_raw"] == 1


def test_mismatches_count_differences_and_rows_only_one_run_has():
    a = {"x": {"v": 1}, "y": {"v": 2}, "z": {"v": 3}}
    b = {"x": {"v": 1}, "y": {"v": 5}, "w": {"v": 3}}
    assert bench.mismatches(a, b, "v") == ["w", "y", "z"]
    assert bench.mismatches(a, a, "v") == []


def test_generation_totals_and_quantiles():
    rows = [
        {"pism_generations": 12, "cmab_generations": 4, "rap_generations": 9, "rap_img_reused": 1},
        {"pism_generations": 10, "cmab_generations": None, "rap_generations": 5, "rap_img_reused": 5},
    ]
    assert bench.generation_totals(rows) == {
        "pism_generations": 22,
        "cmab_generations": 4,
        "rap_generations": 14,
        "rap_img_reused": 6,
        "all_generations": 40,
    }
    assert bench.quantiles([]) is None
    assert bench.quantiles([1.0, 2.0, 3.0, 4.0, 5.0]) == {
        "min": 1.0,
        "q25": 2.0,
        "median": 3.0,
        "q75": 4.0,
        "max": 5.0,
    }
