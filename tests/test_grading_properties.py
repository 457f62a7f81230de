"""Property tests: graders are total (never raise), bounded, and agree with independent references."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from curate.grading import GRADERS, extract_answer, format_score, grade, mathexpr
from curate.grading.boxes import Box, box_score
from curate.grading.numbers import iter_numbers
from curate.grading.ocr import lcs_length, similarity

pytestmark = pytest.mark.timeout(300)

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
texts = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def short_math_deadline(seconds: float = 0.2):
    """Random LaTeX can keep sympy busy until the deadline; a short one keeps the suite fast."""
    saved, mathexpr.MATH_TIMEOUT_S = mathexpr.MATH_TIMEOUT_S, seconds
    try:
        yield
    finally:
        mathexpr.MATH_TIMEOUT_S = saved


@FAST
@given(grader=st.sampled_from(sorted(GRADERS)), response=texts, truth=texts)
def test_graders_are_total_and_bounded(grader, response, truth):
    with short_math_deadline():
        result = grade(grader, response, truth)
    assert 0.0 <= result.score <= 1.0
    assert result.correct == (result.score >= GRADERS[grader].correct_at)
    assert result.grader == grader
    assert result.extracted is None or isinstance(result.extracted, str)


@FAST
@given(grader=st.sampled_from(sorted(GRADERS)), truth=texts)
def test_an_empty_response_is_never_correct(grader, truth):
    assume(grader not in ("grounding", "detection"))  # "no boxes" is right for an empty truth
    with short_math_deadline():
        assert not grade(grader, "", truth).correct


@FAST
@given(prefix=texts, answer=texts)
def test_last_answer_tag_is_extracted(prefix, answer):
    assume("<answer>" not in answer and "</answer>" not in answer)
    assert extract_answer(f"{prefix}<answer>{answer}</answer>") == answer.strip()
    assert extract_answer(f"{prefix}<answer>{answer}") == answer.strip()  # truncated output


@FAST
@given(prefix=texts, content=st.text(alphabet=st.characters(blacklist_characters="{}\\<"), max_size=50))
def test_boxed_content_is_extracted(prefix, content):
    assume("<answer>" not in prefix)
    assert extract_answer(f"{prefix} \\boxed{{{content}}}") == content.strip()
    assert extract_answer(f"{prefix} \\boxed{{{{{content}}} + 1}}") == f"{{{content}}} + 1".strip()


_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@FAST
@given(
    text=st.lists(
        st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "1"]), max_size=12
    ).map("".join)
)
def test_format_score_is_the_regex_with_each_tag_once(text):
    once = all(text.count(tag) == 1 for tag in _TAGS)
    assert format_score(text) == float(once and _FORMAT.fullmatch(text) is not None)


@FAST
@given(think=st.text(max_size=50), answer=st.text(max_size=50), gap=st.sampled_from(["", " ", "\n\n", "\t"]))
def test_well_formed_responses_get_format_reward(think, answer, gap):
    assume(not any(tag in think or tag in answer for tag in _TAGS))
    assert format_score(f"<think>{think}</think>{gap}<answer>{answer}</answer>") == 1.0


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split()
)
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(n: int, hyphen: bool) -> str:
    """Independent reference speller (recursive, unlike the parser under test)."""
    for scale, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= scale:
            rest = n % scale
            return f"{spell(n // scale, hyphen)} {word}" + (f" {spell(rest, hyphen)}" if rest else "")
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + (("-" if hyphen else " ") + _ONES[n % 10] if n % 10 else "")


@FAST
@given(n=st.integers(0, 999_999_999_999), hyphen=st.booleans())
def test_spelled_numbers_are_read(n, hyphen):
    assert [int(v) for _, v in iter_numbers(f"There are {spell(n, hyphen)} items.")] == [n]


def _lcs_reference(a: str, b: str) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@FAST
@given(a=st.text(alphabet="abcd ", max_size=40), b=st.text(alphabet="abcd ", max_size=40))
def test_lcs_and_similarity(a, b):
    assert lcs_length(a, b) == _lcs_reference(a, b)
    assert similarity(a, b) == similarity(b, a)
    assert 0.0 <= similarity(a, b) <= 1.0
    assert (similarity(a, b) == 1.0) == (a == b and a != "")


coordinate = st.integers(0, 1000)
valid_box = st.tuples(coordinate, coordinate, st.integers(1, 500), st.integers(1, 500)).map(
    lambda t: Box(t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@FAST
@given(
    truth=st.lists(valid_box, min_size=1, max_size=8),
    pred=st.lists(valid_box, max_size=8),
    scale=st.sampled_from([0.25, 2.0, 8.0]),
)
def test_box_score_properties(truth, pred, scale):
    score = box_score(pred, truth)
    assert 0.0 <= score <= 1.0
    assert box_score(truth, truth) == pytest.approx(1.0)

    def scaled(boxes: list[Box]) -> list[Box]:
        return [Box(b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale) for b in boxes]

    assert box_score(scaled(pred), scaled(truth)) == pytest.approx(score)
    far = Box(5000, 5000, 5010, 5010)  # overlaps nothing: an extra box can only cost
    assert box_score(pred + [far], truth) <= score + 1e-12
