"""Closed-form answers: an option letter (multiple choice) or yes/no.

Letters are read from the forms models actually write: "B", "(B)", "B.", "B) text", "Option B",
"The answer is (B)", ``\\boxed{B}``. A letter is only taken from running text when a phrase such as
"answer is" introduces it, so the article "A" in "A cat sits..." is never read as option A.
"""

from __future__ import annotations

import re

from curate.grading.extract import MAX_ANSWER_CHARS, answer_region, answer_text
from curate.grading.text import normalize_text

_LONE_LETTER = re.compile(r"\(?\s*([A-Za-z])\s*\)?\s*[.:)]?")
_LEADING_LETTER = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.:)])(?:\s|$)")
_INTRODUCED_LETTER = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|:)?\s*[:\-]?\s*(?:\(([A-Z])\)|\b([A-Z])\b)"
)
_STANDALONE_LETTER = re.compile(r"(?<![\w'])([A-Z])(?![\w'])")
_YES_NO = re.compile(r"\b(yes|no)\b")


def option_letter(text: str, tagged: bool = True) -> str | None:
    """The option letter ``text`` commits to, else None.

    ``tagged`` says the text is the answer alone (from answer tags or ``\\boxed{}``): then a single
    upper-case letter that stands alone is taken even without an introducing phrase.
    """
    text = text.strip()
    if m := _LONE_LETTER.fullmatch(text):
        return m.group(1).upper()
    if m := _LEADING_LETTER.match(text):
        return m.group(1) or m.group(2)
    introduced = [m.group(1) or m.group(2) for m in _INTRODUCED_LETTER.finditer(text)]
    if introduced:
        return introduced[-1]
    if tagged:
        letters = {m.group(1) for m in _STANDALONE_LETTER.finditer(text)}
        if len(letters) == 1:
            return letters.pop()
    return None


def grade_multiple_choice(response: str, ground_truth: str) -> tuple[float, str | None]:
    """1.0 iff the chosen option letter is the truth's; a truth that is option text rather than a
    letter is compared as a normalised short answer."""
    region, tagged = answer_region(response)
    if len(region) > MAX_ANSWER_CHARS:
        return 0.0, None
    truth = answer_text(ground_truth)[:MAX_ANSWER_CHARS]
    truth_letter = option_letter(truth)
    if truth_letter is None:
        answer = normalize_text(region)
        return float(bool(answer) and answer == normalize_text(truth)), answer
    letter = option_letter(region, tagged)
    return float(letter == truth_letter), letter


def check_multiple_choice_truth(ground_truth: str) -> str | None:
    truth = answer_text(ground_truth)[:MAX_ANSWER_CHARS]
    if option_letter(truth) is None and not normalize_text(truth):
        return "multiple-choice ground truth is neither an option letter nor option text"
    return None


def yes_no(text: str) -> str | None:
    """ "yes" or "no": the first word if it is one, else the last standalone yes/no in the text."""
    normalized = normalize_text(text)
    words = _YES_NO.findall(normalized)
    if not words:
        return None
    first = normalized.split(" ", 1)[0]
    return first if first in ("yes", "no") else words[-1]


def grade_yes_no(response: str, ground_truth: str) -> tuple[float, str | None]:
    region, _ = answer_region(response)
    if len(region) > MAX_ANSWER_CHARS:
        return 0.0, None
    truth = yes_no(answer_text(ground_truth)[:MAX_ANSWER_CHARS])
    answer = yes_no(region)
    return float(truth is not None and answer == truth), answer


def check_yes_no_truth(ground_truth: str) -> str | None:
    if yes_no(answer_text(ground_truth)[:MAX_ANSWER_CHARS]) is None:
        return "yes/no ground truth contains neither 'yes' nor 'no'"
    return None
