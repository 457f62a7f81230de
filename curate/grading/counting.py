"""Counting: the first number in the answer equals the true count (the released plugin's rule).

Number words count ("three" is 3). Without answer tags or ``\\boxed{}`` the LAST number of the
response tail is taken instead: in free text the count is stated at the end ("1, 2, 3... so 3").
A non-integer ("3.5") never equals a count; "3.0" does.
"""

from __future__ import annotations

from curate.grading.extract import MAX_ANSWER_CHARS, answer_region, answer_text
from curate.grading.numbers import first_number, last_number


def true_count(ground_truth: str) -> int | None:
    value = first_number(answer_text(ground_truth)[:MAX_ANSWER_CHARS])
    return int(value) if value is not None and value.denominator == 1 else None


def grade_counting(response: str, ground_truth: str) -> tuple[float, str | None]:
    truth = true_count(ground_truth)
    region, tagged = answer_region(response)
    region = region[:MAX_ANSWER_CHARS]
    value = first_number(region) if tagged else last_number(region)
    if value is None:
        return 0.0, None
    extracted = str(value.numerator) if value.denominator == 1 else str(float(value))
    return float(truth is not None and value == truth), extracted


def check_counting_truth(ground_truth: str) -> str | None:
    if true_count(ground_truth) is None:
        return "counting ground truth has no integer"
    return None
