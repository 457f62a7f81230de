"""Fuzzing the graders: any response and truth in, a verdict in [0, 1] out, within the time limit.

Responses and truths are drawn from all of Unicode (lone surrogates included), from the syntax every
parser looks for (answer tags, boxes, LaTeX, box lists, option letters, number words) and from long
runs of one piece (a thousand newlines, blanks or braces: what makes a backtracking pattern take
seconds). Each grade must return a ``GradeResult`` with score and partial in [0, 1], score equal to
``float(correct)``, a grader the task may hand over to, and take at most
``curate.grading.GRADE_TIME_LIMIT_S`` of wall-clock time, the real math deadline included.

``python -m benchmarks.fuzz graders --examples 10000`` runs it at length (``benchmarks/fuzz.py``);
``tests/test_fuzz_graders.py`` runs a few hundred examples in CI.
"""

from __future__ import annotations

import time

from hypothesis import strategies as st

from curate.grading import GRADE_TIME_LIMIT_S, GRADERS, grade

# Pieces of the syntax every parser looks for, so random strings exercise its branches.
FRAGMENTS = [
    "<answer>",
    "</answer>",
    "<think>",
    "</think>",
    "\\boxed{",
    "\\fbox{",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    " ",
    "\n",
    "0",
    "1",
    "3",
    "42",
    "-",
    ".",
    "0.5",
    "1e400",
    "nan",
    "inf",
    "%",
    "\\%",
    "^",
    "**",
    "!",
    "\\frac",
    "\\sqrt",
    "$",
    "x",
    "=",
    "bbox_2d",
    "'bbox_2d'",
    '"bbox_2d"',
    ":",
    "'label'",
    "'dog'",
    "yes",
    "no",
    "(B)",
    "B.",
    "A",
    "the answer is",
    "twenty",
    "one",
    "hundred",
    "and",
    "__import__('os')",
    "\\text{cm}",
    "\x00",
    "é",
    "\U0001d7d8",
    "\ud800",
]
TEXTS = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
# A long run of one or two pieces, up to the characters a grader looks at (and past them).
RUNS = st.builds(
    lambda pieces, n, wrap: wrap.format("".join(pieces) * n),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=2),
    st.integers(200, 4000),
    st.sampled_from(["{}", "<answer>{}</answer>", "The answer is {}", "\\boxed{{{}}}", "x = {}", "{}5"]),
)
RESPONSES = st.one_of(TEXTS, RUNS)
TRUTHS = st.one_of(TEXTS, st.sampled_from(["5", "-3", "\\frac{1}{2}", "0.75", "12 cm", "x^2+1", "(1,2]", "3, 4",
                                           "B", "yes", "red car", "[[10, 10, 50, 50]]", "STOP"]))
GRADER_NAMES = sorted(GRADERS)
# What each grader may hand a case to (the math grader reads the answer by the truth's shape).
HANDOFFS = {"math": {"math", "multiple_choice", "yes_no", "short_answer"}}


def check_grade(grader: str, response: str, truth: str, limit_s: float = GRADE_TIME_LIMIT_S) -> float:
    """Grade one case; assert the contract (see the module doc). Returns the seconds it took."""
    start = time.perf_counter()
    result = grade(grader, response, truth)
    seconds = time.perf_counter() - start
    assert seconds <= limit_s, f"{grader} took {seconds:.2f} s > {limit_s:g} s"
    assert 0.0 <= result.score <= 1.0 and 0.0 <= result.partial <= 1.0, result
    assert result.score == float(result.correct), result
    assert result.grader in HANDOFFS.get(grader, {grader}), result
    assert result.extracted is None or isinstance(result.extracted, str), result
    return seconds
