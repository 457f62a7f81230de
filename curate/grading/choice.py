"""Closed-form answers: option letters (multiple choice) and yes/no.

A letter counts when the answer commits to exactly one option: "B", "(B)", "B.", "B. Oxygen",
"Option B", "The answer is (B)", ``\\boxed{B}``. Several options ("A or C", "B and D", a copied option
list), or a negated one ("not B", "B is wrong"), commit to nothing and are wrong — the released plugin
and the verl/EasyR1 graders took the first letter-like token, which these all pass. A truth with
several letters ("A, C") is a multi-select question: the answer must name the same set. The
article "A" and the pronoun "I" are words, not options ("A cat sits…"). Letters are read after NFKC
(fullwidth "Ｂ" is B); look-alikes from other scripts (Cyrillic "В") are not letters.

Yes/no: the answer's first word if it is yes or no ("Yes, it is."), else the one of the two it
contains; both ("yes and no"), or neither, is no answer.
"""

from __future__ import annotations

import re

from curate.grading.extract import (
    MAX_ANSWER_CHARS,
    MAX_SHORT_ANSWER_CHARS,
    FinalAnswer,
    answer_text,
    normalize_unicode,
)
from curate.grading.text import normalize_text
from curate.grading.verdict import GradeContext, Verdict, exact

_LONE_LETTER = re.compile(r"\(?\s*+([A-Za-z])\s*+\)?\s*+[.:)]?")
# A letter standing alone: "(B)", "B.", "B)", "B:", "B" between non-word characters.
_LETTER = re.compile(r"(?<![\w'’])(?:\(([A-Z])\)|([A-Z])(?![\w'’]))")
_INTRODUCED = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|would\s+be|should\s+be|:)?\s*[:\-]?\s*(?:\(([A-Z])\)|\b([A-Z])\b)"
)
_NEGATION_BEFORE = re.compile(
    r"(?i:\bnot|n't|\bnever|\bexcept|\bexcluding|\brather\s+than|\binstead\s+of|\bother\s+than|\bnor|\bneither|\beliminate|\brule\s+out)"
    r"\s*(?i:option|choice)?\s*$"
)
_NEGATION_AFTER = re.compile(
    r"^\s*(?i:is|are|seems|looks)\s+(?i:wrong|incorrect|false|not|invalid|ruled\s+out|eliminated)"
)
_WORD_AFTER = re.compile(r"\s+[a-z]")
_VERB_AFTER = re.compile(r"\s+(?:is|was|seems|appears|looks|would|should|must|fits|matches|or|and|nor|vs)\b")
_MULTI_TRUTH = re.compile(r"^\s*\(?[A-Z]\)?(?:\s*(?:,|and|&|/|;)?\s*\(?[A-Z]\)?)+\s*\.?\s*$")
_YES_NO = re.compile(r"\b(yes|no)\b")
# Yes or no opening a clause: "Yes (if …) / No (if …)" commits to both.
_CLAUSE_YES_NO = re.compile(r"(?:^|[.;/!?(]\s*|\bbut\s+|\bor\s+)(yes|no)\b", re.IGNORECASE)
_YES_NO_HEDGE = re.compile(r"\b(?:yes|no)\s*(?:and|or|/)?\s*(?:yes|no)\b|\b(?:maybe|possibly|perhaps|not sure|unclear)\b")


def _mentions(text: str) -> list[tuple[int, int, str]]:
    """Every option letter ``text`` names affirmatively: ``(start, end, letter)``."""
    out = []
    for m in _LETTER.finditer(text):
        letter = m.group(1) or m.group(2)
        if m.group(2) in ("A", "I") and _WORD_AFTER.match(text, m.end()) and not _VERB_AFTER.match(text, m.end()):
            continue  # the article "A", the pronoun "I"
        if _NEGATION_BEFORE.search(text, max(0, m.start() - 24), m.start()):
            continue
        if _NEGATION_AFTER.match(text[m.end() : m.end() + 40]):
            continue
        out.append((m.start(), m.end(), letter))
    return out


_STRONG_AFTER = re.compile(
    r"\s*+\)?\s*+(?:is|seems|looks)\s++(?:the\s++)?(?:correct|right|best|better|most\s+likely|answer|true)\b", re.IGNORECASE
)
_LEFT_OPEN = re.compile(
    r"\s*+\)?\s*+(?:is|are|could|might|may)\s++(?:also\s++)?(?:possible|plausible|be\s+(?:right|correct|possible))", re.I
)
_ALSO_NAMED = re.compile(r"\s*+\)?\s*+(?:or|and|/|,|&)\s*+(?:option\s++)?\(?[A-Z]\b")


def _committed_letter(text: str, mentions: list[tuple[int, int, str]]) -> str | None:
    """The one letter the text singles out, if it does: introduced ("the correct option is (A)
    because F = ma"), else declared ("A is better supported"), else the one the answer opens with
    ("D because A, B and C are renewable"); never one joined to another ("the answer is A or B") or
    beside one left open ("B, but D is also possible")."""
    if any(_LEFT_OPEN.match(text, end) for _, end, _ in mentions):
        return None
    introduced = {m.group(1) or m.group(2) for m in _INTRODUCED.finditer(text) if not _ALSO_NAMED.match(text, m.end())}
    declared = {letter for _, end, letter in mentions if _STRONG_AFTER.match(text, end)}
    opening = set()
    labels = {letter for _, end, letter in mentions if text[end : end + 1] in (".", ")", ":")}
    if len(labels) < 2 and mentions and not text[: mentions[0][0]].strip() and not _ALSO_NAMED.match(text, mentions[0][1]):
        opening = {mentions[0][2]}
    for strong in (introduced, declared, opening):
        if strong:
            return strong.pop() if len(strong) == 1 else None
    return None


_EMPHASIS_MARK = re.compile(r"\*\*|__|`")
_OPTION_INTRODUCER = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+|right\s+|best\s+)?(?:answer|option|choice)\s*(?:is|would\s+be|:)?\s*:?\s*(?=\(?[A-Z]\b)",
    re.IGNORECASE,
)
_OPTION_LABEL = re.compile(r"^\s*\(?[A-Z]\)?[.:)]\s*|^\s*\([A-Z]\)\s*")
_LATEX_LETTER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{\s*([A-Za-z])\s*\}|\\[()\[\]]")


def option_letters(text: str, committed: bool = True) -> set[str]:
    """The option letters ``text`` commits to (empty when none; several for a multi-select answer
    or a hedge, which the caller tells apart by the truth).

    ``committed``: the text is the answer alone. A response tail commits only through an introducing
    phrase ("the answer is B"), the last one.
    """
    text = _LATEX_LETTER.sub(lambda m: m.group(1) or " ", normalize_unicode(text))
    text = _EMPHASIS_MARK.sub("", text).strip()  # "option **C**"
    if m := _LONE_LETTER.fullmatch(text):
        return {m.group(1).upper()}
    if not committed:
        introduced = list(_INTRODUCED.finditer(text))
        if not introduced:
            return set()
        text = text[introduced[-1].start() :]
    mentions = _mentions(text)
    letters = {letter for _, _, letter in mentions}
    if len(letters) > 1 and (chosen := _committed_letter(text, mentions)) is not None:
        return {chosen}
    return letters


def option_text(text: str) -> str:
    """The option's text without its introducer and label: "The correct option is (C) triangle",
    "B. Oxygen" → "triangle", "oxygen" (normalised)."""
    text = _OPTION_INTRODUCER.sub("", _EMPHASIS_MARK.sub("", normalize_unicode(text)), count=1)
    return normalize_text(_OPTION_LABEL.sub("", text, count=1))


def grade_multiple_choice(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    """Correct iff the answer commits to the truth's option (its letter, or its text when the truth
    gives text)."""
    if answer.text is None or len(answer.text) > MAX_SHORT_ANSWER_CHARS:
        return exact(False, None)
    truth = normalize_unicode(answer_text(ground_truth))[:MAX_ANSWER_CHARS]
    truth_letters = option_letters(truth) if _MULTI_TRUTH.match(truth) or _LONE_LETTER.fullmatch(truth) else set()
    if not truth_letters and (m := re.match(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s+\S", truth)):
        truth_letters = {m.group(1) or m.group(2)}  # "B. Oxygen": letter and text
    truth_text = "" if _LONE_LETTER.fullmatch(truth) else option_text(truth)
    letters = option_letters(answer.text, answer.committed)
    if truth_letters and letters:
        return exact(letters == truth_letters, ",".join(sorted(letters)))
    if answer.committed and truth_text and (not letters or not truth_letters):
        said = option_text(answer.text)  # the option named by its text, with or without its label
        return exact(said == truth_text, said or None)
    return exact(False, ",".join(sorted(letters)) or None)


def check_multiple_choice_truth(ground_truth: str) -> str | None:
    truth = answer_text(ground_truth)[:MAX_ANSWER_CHARS]
    if not option_letters(truth) and not normalize_text(truth):
        return "multiple-choice ground truth is neither an option letter nor option text"
    return None


def yes_no(text: str, committed: bool = True) -> str | None:
    """ "yes" or "no" as the text commits to it, else None."""
    normalized = normalize_text(normalize_unicode(text))
    if _YES_NO_HEDGE.search(normalized) or len(set(_CLAUSE_YES_NO.findall(text))) > 1:
        return None
    words = _YES_NO.findall(normalized)
    if not words:
        return None
    first = normalized.split(" ", 1)[0]
    if first in ("yes", "no"):
        return first
    if not committed:
        return words[-1]
    return words[0] if len(set(words)) == 1 else None


def grade_yes_no(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    if answer.text is None or len(answer.text) > MAX_SHORT_ANSWER_CHARS:
        return exact(False, None)
    truth = yes_no(answer_text(ground_truth)[:MAX_ANSWER_CHARS])
    said = yes_no(answer.text, answer.committed)
    return exact(truth is not None and said == truth, said)


def check_yes_no_truth(ground_truth: str) -> str | None:
    if yes_no(answer_text(ground_truth)[:MAX_ANSWER_CHARS]) is None:
        return "yes/no ground truth contains neither 'yes' nor 'no'"
    return None
