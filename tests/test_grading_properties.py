"""Property tests: graders are total (never raise), bounded, and agree with independent references."""

from __future__ import annotations

import contextlib
import itertools
import os
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_graders import TEXTS
from curate.grading import GRADERS, extract_answer, format_score, grade, mathexpr
from curate.grading.boxes import Box, judge_boxes, match
from curate.grading.numbers import iter_numbers

pytestmark = pytest.mark.timeout(int(os.environ.get("HARDMODE_FUZZ_TIMEOUT_S", "300")))

texts = TEXTS
# CI runs a few hundred examples per property; a nightly-style run takes more:
#   HARDMODE_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_grading_properties.py
FAST = settings(
    max_examples=int(os.environ.get("HARDMODE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@contextlib.contextmanager
def short_math_deadline(seconds: float = 0.2):
    """Random LaTeX can keep sympy busy until the deadline; a short one keeps the suite fast."""
    saved, mathexpr.MATH_TIMEOUT_S = mathexpr.MATH_TIMEOUT_S, seconds
    try:
        yield
    finally:
        mathexpr.MATH_TIMEOUT_S = saved


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


_PUNCTUATION = st.sampled_from([" ", ",", "!", "?", "'", "-", "  ", "\n"])


@FAST
@given(words=st.lists(st.text(alphabet="ABCDEFGHJKabcdefgh0123", min_size=1, max_size=8), min_size=1, max_size=4),
       noise=st.lists(_PUNCTUATION, min_size=4, max_size=4), upper=st.booleans())
def test_ocr_is_exact_up_to_case_whitespace_and_punctuation(words, noise, upper):
    truth = " ".join(words)
    said = "".join(w + n for w, n in zip(words, noise))
    said = said.upper() if upper else said.lower()
    assert grade("ocr", f"<answer>{said}</answer>", truth).correct


@FAST
@given(truth=st.text(alphabet="ABCDEFGH0123456789", min_size=1, max_size=29), at=st.integers(0, 28),
       char=st.sampled_from("XYZ789"))
def test_ocr_short_texts_take_no_typo(truth, at, char):
    at = at % len(truth)
    misread = truth[:at] + char + truth[at + 1 :]
    assume(misread.lower() != truth.lower())
    assert not grade("ocr", f"<answer>{misread}</answer>", truth).correct


coordinate = st.integers(0, 1000)
valid_box = st.tuples(coordinate, coordinate, st.integers(1, 500), st.integers(1, 500)).map(
    lambda t: Box(t[0], t[1], t[0] + t[2], t[1] + t[3])
)


def _most_pairs_reference(pred: list[Box], truth: list[Box], min_iou: float) -> int:
    """The largest one-to-one matching at IoU >= min_iou, by trying every assignment."""
    if len(pred) < len(truth):
        return _most_pairs_reference(truth, pred, min_iou)
    return max(
        (sum(p.iou(t) >= min_iou for p, t in zip(chosen, truth)) for chosen in itertools.permutations(pred, len(truth))),
        default=0,
    )


@FAST
@given(truth=st.lists(valid_box, min_size=1, max_size=4), pred=st.lists(valid_box, max_size=4))
def test_box_matching_finds_the_most_pairs(truth, pred):
    assert len(match(pred, truth, 0.5, False)) == _most_pairs_reference(pred, truth, 0.5)


@FAST
@given(
    truth=st.lists(valid_box, min_size=1, max_size=8),
    pred=st.lists(valid_box, max_size=8),
    scale=st.sampled_from([0.25, 2.0, 8.0]),
)
def test_box_judge_properties(truth, pred, scale):
    correct, partial = judge_boxes(pred, truth, 0.5, False)
    assert 0.0 <= partial <= 1.0
    assert judge_boxes(truth, truth, 0.5, False) == (True, pytest.approx(1.0))

    def scaled(boxes: list[Box]) -> list[Box]:
        return [Box(b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale) for b in boxes]

    again = judge_boxes(scaled(pred), scaled(truth), 0.5, False)
    assert again[0] == correct and again[1] == pytest.approx(partial)
    far = Box(5000, 5000, 5010, 5010)  # overlaps nothing: an extra box is wrong and only costs
    with_far = judge_boxes(pred + [far], truth, 0.5, False)
    assert not with_far[0] and with_far[1] <= partial + 1e-12
