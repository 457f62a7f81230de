"""OCR: the text read must be the text in the image, up to case, whitespace and punctuation.

``correct`` is exact equality of the normalised texts: a misread year, plate, price or word is
wrong (the released plugin counted a similarity ratio >= 0.5 as correct, so "1989" passed for
"1998"). Long lines (``GradingOptions.ocr_typo_min_chars``, 30 by default) tolerate one edit per
``ocr_typo_per_chars`` characters (Levenshtein distance, rapidfuzz), since one slip in a sentence
is still a reading. Character order always matters ("G4B-7HX" is not "B4G-7XH").

Normalisation: NFKC, lower case, a lead-in ("The text reads", "It says:") and surrounding quotes
dropped, punctuation dropped except a decimal point or time colon between digits ("12.50" stays
distinct from "1250"), whitespace removed.

``partial`` is the similarity ratio 2·LCS / (len(a) + len(b)) of the normalised texts (rapidfuzz's
Indel similarity, linear-time bit-parallel), a separate reward option for GRPO, never ``correct``.
"""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz.distance import Indel, Levenshtein

from curate.grading.extract import LATEX_TEXT, FinalAnswer, answer_text, last_sentence, readings
from curate.grading.verdict import GradeContext, Verdict

# Texts are compared on their first OCR_MAX_CHARS normalised characters.
OCR_MAX_CHARS = 10_000
# Raw text is cut to this before normalising, so normalising is bounded too.
_RAW_LIMIT = 4 * OCR_MAX_CHARS
# Dropped: every non-word character but a decimal point or time colon between two digits.
_DROP = re.compile(r"(?:(?<!\d)[.:]|[.:](?!\d)|[^\w.:]|_)+")


def normalize_ocr(text: str) -> str:
    """The text as compared for ``correct`` (no whitespace, no punctuation but in numbers)."""
    text = unicodedata.normalize("NFKC", text[:_RAW_LIMIT]).strip()
    return _DROP.sub("", text.lower())[:OCR_MAX_CHARS]


def _spaced(text: str) -> str:
    """The text as compared for ``partial``: case and blanks normalised only."""
    return " ".join(unicodedata.normalize("NFKC", text[:_RAW_LIMIT]).lower().split())[:OCR_MAX_CHARS]


def grade_ocr(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    if answer.text is None:
        return Verdict(False, 0.0, None)
    text = answer.text if answer.committed else last_sentence(answer.text)
    truth_raw = LATEX_TEXT.sub(r"\1", answer_text(ground_truth))
    truth = normalize_ocr(truth_raw)
    said = [r for r in (normalize_ocr(r) for r in readings(text)) if r]
    if not said or not truth:
        return Verdict(False, 0.0, said[-1] if said else None)
    options = ctx.options
    budget = len(truth) // options.ocr_typo_per_chars if len(truth) >= options.ocr_typo_min_chars else 0
    for reading in said:
        if reading == truth or (budget and Levenshtein.distance(reading, truth, score_cutoff=budget) <= budget):
            return Verdict(True, 1.0, reading)
    partial = Indel.normalized_similarity(_spaced(text), _spaced(truth_raw))
    return Verdict(False, partial, said[-1])


def check_ocr_truth(ground_truth: str) -> str | None:
    if not normalize_ocr(answer_text(ground_truth)):
        return "OCR ground truth is empty"
    return None
