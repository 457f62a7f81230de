"""Short free-text answers ("red", "the cat"): exact match after VQA-style normalisation.

Normalisation: Unicode NFKC, lower case, LaTeX ``\\text{…}`` unwrapped, number words as digits,
punctuation dropped, articles (a/an/the) dropped unless nothing else is left, whitespace
collapsed, and a leading "the answer is" / "answer:" removed, so "The answer is: Red." equals "red".
"""

from __future__ import annotations

import re
import unicodedata

from curate.grading.extract import MAX_ANSWER_CHARS, MAX_SHORT_ANSWER_CHARS, FinalAnswer, answer_text
from curate.grading.numbers import words_to_digits
from curate.grading.verdict import GradeContext, Verdict, exact

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_ANSWER_PREFIX = re.compile(r"^\s*(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?)", re.IGNORECASE)
_PUNCT = re.compile(r"[^\w\s]|_")
_ARTICLES = frozenset(("a", "an", "the"))


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _TEXT_WRAPPER.sub(r"\1", text)
    text = _ANSWER_PREFIX.sub("", text).lower()
    words = _PUNCT.sub(" ", words_to_digits(text)).split()
    # articles go, unless they are the whole answer (option "A")
    return " ".join([w for w in words if w not in _ARTICLES] or words)


def grade_short_answer(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    """Correct iff the normalised committed answer equals the normalised truth (empty never does)."""
    truth = normalize_text(answer_text(ground_truth)[:MAX_ANSWER_CHARS])
    if answer.text is None or len(answer.text) > MAX_SHORT_ANSWER_CHARS:
        return exact(False, None)
    said = normalize_text(answer.text)
    return exact(bool(truth) and said == truth, said or None)


def check_short_answer_truth(ground_truth: str) -> str | None:
    if not normalize_text(answer_text(ground_truth)[:MAX_ANSWER_CHARS]):
        return "short-answer ground truth is empty after normalisation"
    return None
