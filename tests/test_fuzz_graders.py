"""Fuzzed grades (benchmarks/fuzz_graders.py) at the real time limit: every grader is total, in [0, 1],
and returns within curate.grading.GRADE_TIME_LIMIT_S, math deadline included."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_graders import GRADER_NAMES, RESPONSES, TRUTHS, check_grade

pytestmark = pytest.mark.timeout(int(os.environ.get("HARDMODE_FUZZ_TIMEOUT_S", "300")))


# The nastiest inputs fuzzing found, kept as regression cases.
@example(grader="math", response="<answer>\\frac{\\frac{1}{2}}{\\frac{3}{", truth="-\\frac{1}{2}")
@example(grader="counting", response="<answer>one one one</answer>", truth="one")
@example(grader="ocr", response="<answer>'</answer>", truth="\"")
@example(grader="multiple_choice", response="<answer>(A) or (\u0410)</answer>", truth="A")
@example(grader="grounding", response="<answer>[1e400, 0, 1, 1]</answer>", truth="[[0, 0, 1, 1]]")
@example(grader="math", response="<answer>5 m/s/s/s</answer>", truth="5 km/h")
# Runs that made backtracking patterns take seconds (answer lines, hedges, option letters, bare boxes).
@example(grader="counting", response="x = " + "\n" * 1500, truth="3, 4")
@example(grader="short_answer", response="The answer is " + "\n" * 1500, truth="5")
@example(grader="multiple_choice", response="A" + " " * 3000 + "#", truth="A")
@example(grader="grounding", response="\n" * 3000 + "#", truth="[[0, 0, 1, 1]]")
@example(grader="math", response="<answer>" + "\\frac{1}{" * 40 + "2" + "}" * 40 + "</answer>", truth="\\frac{1}{2}")
@settings(max_examples=int(os.environ.get("HARDMODE_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(grader=st.sampled_from(GRADER_NAMES), response=RESPONSES, truth=TRUTHS)
def test_graders_are_total_and_within_their_time_limit(grader, response, truth):
    check_grade(grader, response, truth)
