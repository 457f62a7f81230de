"""Counting: the count the answer commits to equals the true count.

The released plugin took the first number of the answer, so "3 or 4", "3-4" and "1, 2, 3, 4, 5" all
passed, and "3 rows of 4, so 12" was judged by the 3. Here:
- number words count ("twelve", "a dozen", "none"; "no apples" is 0); "one" as a pronoun does not;
- a conclusion decides: the number after the last "so" / "total" / "=" / "answer is", or the number
  just before a closing "in total" / "altogether" / "in all";
- otherwise the answer must state one count: two different counts joined by "or", "to", "-", "/",
  "and", "between", or a list of counts, is a hedge and wrong; without any such joint the first
  count is the answer ("12 apples in 3 rows");
- a response without tags or a box is read at its conclusion (the last number of its tail).
A non-integer ("3.5") never equals a count; "3.0" does.
"""

from __future__ import annotations

import re
from fractions import Fraction

from curate.grading.extract import MAX_ANSWER_CHARS, MAX_SHORT_ANSWER_CHARS, FinalAnswer, answer_text, normalize_unicode
from curate.grading.numbers import Number, numbers
from curate.grading.verdict import GradeContext, Verdict, exact

_LEADING = re.compile(
    r"\b(?:so|thus|therefore|hence|leaves|leaving|remain|remains|remaining|makes|making|gives|giving|yields|"
    r"equals|comes\s+to|adds\s+up\s+to|total\s+(?:of|is|count(?:\s+is)?)|count\s+is|answer\s+is|there\s+(?:are|is)\s+(?:a\s+total\s+of\s+)?)\b|=",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"\b(?:in\s+total|total|altogether|in\s+all|overall)\b", re.IGNORECASE)
_HEDGE_JOINT = re.compile(
    r"^[\s(,;/~-]*(?:or|to|and|maybe|perhaps|possibly|probably|or\s+(?:maybe|possibly|perhaps|so)|up\s+to)?[\s(,;/~-]*$",
    re.IGNORECASE,
)
# A bound or an estimate is not a count: "more than 15", "at least 3", "about 20", "15+".
_BOUND = re.compile(
    r"\b(?:more|fewer|less|greater|over|under|at\s+least|at\s+most|nearly|almost|about|around|approximately|"
    r"roughly|approx|upwards\s+of|up\s+to|several|many|some)\s*(?:than\s*)?$",
    re.IGNORECASE,
)
_BETWEEN = re.compile(r"\b(?:between|from|either)\s*$", re.IGNORECASE)
_NO_NOUN = re.compile(r"\b(?:no|zero)\s+(?!more\b|one\b|doubt\b|other\b)[a-z]+", re.IGNORECASE)


def _counts(text: str) -> list[Number]:
    found = numbers(text)
    for m in _NO_NOUN.finditer(text):  # "there are no apples": a count of 0
        if not any(n.start <= m.start() < n.end for n in found):
            found.append(Number(m.start(), m.end(), Fraction(0), True))
    return sorted(found, key=lambda n: n.start)


def _hedged(text: str, found: list[Number]) -> bool:
    """Two different counts joined as alternatives or a range, or a list of counts."""
    for a, b in zip(found, found[1:]):
        if a.value != b.value and (_HEDGE_JOINT.match(text[a.end : b.start]) or _BETWEEN.search(text[: a.start])):
            return True
    return False


def _bounded(text: str, n: Number) -> bool:
    """``n`` is stated as a bound or an estimate ("more than 15", "15+"), not as the count."""
    return bool(_BOUND.search(text, max(0, n.start - 24), n.start)) or text[n.end : n.end + 1] == "+"


def committed_count(text: str) -> Fraction | None:
    """The count a committed answer states, or None (none stated, or a hedge)."""
    found = _counts(text)
    if not found:
        return None
    markers = sorted(
        [(m.start(), m.end(), True) for m in _LEADING.finditer(text)]
        + [(m.start(), m.end(), False) for m in _TRAILING.finditer(text)]
    )
    if markers:
        start, end, leading = markers[-1]
        after = [n for n in found if n.start >= end]
        earlier = markers[-2][1] if len(markers) > 1 else 0
        before = [n for n in found if earlier <= n.start and n.end <= start]
        if not leading and before:
            region, value = text[earlier:start], before[-1].value
        elif after:
            region, value = text[end:], after[0].value
        else:
            region, value = text, None
        if value is not None:
            chosen = next(n for n in found if n.value == value and (n in after or n in before))
            return None if _hedged(region, _counts(region)) or _bounded(text, chosen) else value
    if _hedged(text, found) or _bounded(text, found[0]):
        return None
    return found[0].value


def true_count(ground_truth: str) -> int | None:
    value = committed_count(normalize_unicode(answer_text(ground_truth))[:MAX_ANSWER_CHARS])
    return int(value) if value is not None and value.denominator == 1 and value >= 0 else None


def grade_counting(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    if answer.text is None or (answer.committed and len(answer.text) > MAX_SHORT_ANSWER_CHARS):
        return exact(False, None)
    text = normalize_unicode(answer.text)[:MAX_ANSWER_CHARS]
    if answer.committed:
        value = committed_count(text)
    else:
        found = _counts(text)
        value = found[-1].value if found else None
    if value is None:
        return exact(False, None)
    extracted = str(value.numerator) if value.denominator == 1 else str(float(value))
    truth = true_count(ground_truth)
    return exact(truth is not None and value == truth, extracted)


def check_counting_truth(ground_truth: str) -> str | None:
    if true_count(ground_truth) is None:
        return "counting ground truth has no single non-negative integer"
    return None
