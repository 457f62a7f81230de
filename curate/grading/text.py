"""Short free-text answers ("red", "the cat"): exact match after VQA-style normalisation.

Normalisation: Unicode NFKC, lower case, LaTeX ``\\text{…}`` unwrapped, number words as digits,
punctuation dropped, articles (a/an/the) dropped unless nothing else is left, whitespace
collapsed, and a leading "the answer is" / "answer:" removed, so "The answer is: Red." equals "red".
"""

from __future__ import annotations

import re
import unicodedata

from curate.grading.extract import (
    MAX_ANSWER_CHARS,
    MAX_SHORT_ANSWER_CHARS,
    FinalAnswer,
    answer_text,
    last_sentence,
    readings,
)
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


# What makes a sentence: a verb, the only place a stated phrase may follow.
_VERBS = frozenset(
    "is are was were be been has have had show shows showing appear appears appeared look looks seem seems "
    "contain contains hold holds holding wear wears wearing read reads say says become becomes remain remains "
    "should would could will can must depict depicts depicting represent represents".split()
)
# A sentence that negates or offers alternatives states no single phrase; one that lists (commas,
# line breaks) only in its last clause ("If the snakes are removed, the frogs will increase").
_NOT_ONE_STATEMENT = re.compile(r"\b(?:or|and|nor|not|no|never|neither|either|none)\b|n't|[/\n]", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,;:]")
MAX_SENTENCE_WORDS = 25


def _is_verb(word: str) -> bool:
    return word in _VERBS or (len(word) > 4 and word.endswith("ing"))


def states(sentence: str, truth: str) -> bool:
    """A one-sentence answer that states ``truth`` as its complement ("The man is holding a tennis
    racket", "The rock shown is a sedimentary rock") or its subject ("Germany has the highest
    value"), without negation, lists or alternatives."""
    if _NOT_ONE_STATEMENT.search(sentence):
        return False
    sentence = _CLAUSE_BREAK.split(sentence.strip().rstrip(".!"))[-1]
    words, phrase = normalize_text(sentence).split(), normalize_text(truth).split()
    if not phrase or len(words) > MAX_SENTENCE_WORDS:
        return False
    n = len(phrase)
    if words[:n] == phrase and len(words) > n and _is_verb(words[n]):
        return True
    verb = next((i for i, w in enumerate(words) if _is_verb(w)), None)
    return verb is not None and any(words[i : i + n] == phrase for i in range(verb + 1, len(words) - n + 1))


_ITEMS = re.compile(r"\s*+(?:,|;|\band\b|&)\s*+", re.IGNORECASE)


def _items(text: str) -> list[str]:
    return sorted(filter(None, (normalize_text(item) for item in _ITEMS.split(text.strip().rstrip(".")))))


def text_verdict(text: str, truth: str) -> tuple[bool, str | None]:
    """``(correct, what was read)`` for a text answer: a reading of it (itself, after a lead-in such
    as "The capital is", its one quoted span) equals the truth after normalisation, or the sentence
    :func:`states` it; a truth that lists items ("cat, dog") is matched by the same items in any
    order ("A dog and a cat.")."""
    if len(truth_items := _items(truth)) > 1:
        said = _items(text)
        return said == truth_items, ", ".join(said) or None
    expected = normalize_text(truth)
    said = [normalize_text(r) for r in readings(text)]
    hit = next((r for r in said if r and r == expected), None)
    if hit is None and expected and states(text, truth):
        hit = expected
    return hit is not None, hit or said[0] or None


def grade_short_answer(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    """Correct iff the committed answer reads as the truth (:func:`text_verdict`)."""
    truth = answer_text(ground_truth)[:MAX_ANSWER_CHARS]
    if answer.text is None or len(answer.text) > MAX_SHORT_ANSWER_CHARS:
        return exact(False, None)
    if not normalize_text(truth):
        return exact(False, None)
    correct, said = text_verdict(answer.text if answer.committed else last_sentence(answer.text), truth)
    return exact(correct, said)


def check_short_answer_truth(ground_truth: str) -> str | None:
    if not normalize_text(answer_text(ground_truth)[:MAX_ANSWER_CHARS]):
        return "short-answer ground truth is empty after normalisation"
    return None
