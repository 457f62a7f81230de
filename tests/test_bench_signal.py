"""The signal benchmark's per-run reduction of verl's metrics, against a hand count."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_signal import run_summary  # noqa: E402


def _step(ratio, generated_ratio, responses, seconds, replayed=0.0, age=math.nan, in_band=None):
    step = {
        "signal/effective_ratio": ratio,
        "signal/effective_ratio_generated": generated_ratio,
        "signal/responses_generated": responses,
        "signal/replay/groups": replayed,
        "signal/replay/age_mean": age,
        "signal/replay/age_max": age,
        "critic/score/mean": 1.0,
        "timing_s/step": seconds,
    }
    if in_band is not None:
        step["curriculum/in_band_share"] = in_band
        step["curriculum/pass_rate_observed_mean"] = 0.5
    return step


def test_run_summary_by_hand():
    # batch 8: step 1 trains 4 signal groups from 64 responses; step 2 trains 8 (2 replayed, age 1)
    # from 128 responses (a filter drew 16 prompts); step 3 trains 6 from 64, 1 replayed at age 3
    steps = [
        _step(0.5, 0.5, 64, 30.0, in_band=0.25),
        _step(1.0, 0.375, 128, 10.0, replayed=2, age=1.0, in_band=0.5),
        _step(0.75, 0.625, 64, 12.0, replayed=1, age=3.0, in_band=0.75),
    ]
    got = run_summary(steps, batch=8, accuracy=0.4)
    assert got["effective_ratio"] == pytest.approx((0.5 + 1.0 + 0.75) / 3)
    assert got["effective_ratio_generated"] == pytest.approx(0.5)
    assert got["responses_per_step"] == pytest.approx(256 / 3)
    assert got["responses_per_signal_group"] == pytest.approx(256 / (4 + 8 + 6))
    assert got["replayed_per_step"] == pytest.approx(1.0)
    assert (
        got["replay_age_mean"] == pytest.approx(2.0) and got["replay_age_max"] == 3.0
    )  # steps that replayed
    assert (got["in_band_first"], got["in_band_last"]) == (0.25, 0.75)
    assert got["step_seconds"] == pytest.approx(11.0)  # the first step (warm-up) left out
    assert got["heldout_accuracy"] == 0.4


def test_run_summary_without_replay_or_curriculum():
    got = run_summary([_step(0.5, 0.5, 64, 9.0), _step(0.25, 0.25, 64, 11.0)], batch=8, accuracy=None)
    assert math.isnan(got["replay_age_mean"]) and got["replayed_per_step"] == 0
    assert math.isnan(got["in_band_first"]) and math.isnan(got["heldout_accuracy"])
    assert got["responses_per_signal_group"] == pytest.approx(128 / 6)
