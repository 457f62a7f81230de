"""Counting: the count the answer commits to equals the true count.

The released plugin took the first number of the answer, so "3 or 4", "3-4" and "1, 2, 3, 4, 5" all
passed, and "3 rows of 4, so 12" was judged by the 3. Here:
- number words count ("twelve", "a dozen", "none"; "no apples", "no one", "nobody" are 0); "one" as
  a pronoun does not;
- the count is the answer's conclusion, and hedges, ranges, lists and bounds are wrong
  (``conclusion.py``);
- a response without tags or a box is read at its conclusion (the last number of its tail).
A non-integer ("3.5") never equals a count; "3.0" does.
"""

from __future__ import annotations

import re
from fractions import Fraction

from curate.grading.conclusion import concluded
from curate.grading.extract import (
    MAX_ANSWER_CHARS,
    MAX_SHORT_ANSWER_CHARS,
    FinalAnswer,
    answer_text,
    normalize_unicode,
)
from curate.grading.numbers import Number, numbers
from curate.grading.verdict import GradeContext, Verdict, exact

_NO_NOUN = re.compile(
    r"\b(?:(?:no|zero)\s+(?!more\b|doubt\b|other\b|longer\b|matter\b)[a-z]+|nobody|nothing)\b", re.IGNORECASE
)


_SLASHED = re.compile(r"\d\s*/\s*\d")


def _counts(text: str) -> list[Number]:
    found = numbers(text)
    for m in _NO_NOUN.finditer(text):  # "there are no apples": a count of 0
        if not any(n.start <= m.start() < n.end for n in found):
            found.append(Number(m.start(), m.end(), Fraction(0), True))
    return sorted(found, key=lambda n: n.start)


def committed_count(text: str) -> Fraction | None:
    """The count a committed answer states, or None (none stated, or a hedge)."""
    if _SLASHED.search(text):  # "4/5": two candidates, or a fraction; a count is neither
        return None
    chosen = concluded(text, _counts(text))
    return chosen.value if chosen is not None else None


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
