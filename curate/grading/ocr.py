"""OCR: similarity of the read text to the true text, after normalisation.

Score = 2·LCS(answer, truth) / (len(answer) + len(truth)) on the normalised texts (LCS: longest
common subsequence of characters), continuous so GRPO gets credit for partly right readings;
``correct`` needs ≥ 0.5, the released plugin's fuzzy threshold (``registry.OCR_CORRECT_RATIO``).
Normalisation: NFKC, lower case, number words as digits, whitespace collapsed, surrounding quotes
and final punctuation dropped.

Deviations from the released plugin, on purpose:
- it used difflib's ``SequenceMatcher.ratio()``, a heuristic approximation of the ratio above (its
  greedy matching never finds more than the LCS; the two agree on typical OCR strings). That
  heuristic takes cubic time on repetitive input (two seconds for 1000 characters), which an
  adversarial generation can trigger in a reward worker; the LCS here is exact and bit-parallel,
  O(len·len/64): milliseconds for ``OCR_MAX_CHARS`` characters;
- it also gave full credit whenever one text contained the other, so "a" scored 1.0 against any
  text containing an "a"; here containment earns only its ratio;
- it binarised the ratio; here ``score`` is the ratio and ``correct`` the thresholded value.
"""

from __future__ import annotations

import unicodedata

from curate.grading.extract import answer_region, answer_text
from curate.grading.numbers import words_to_digits

# Texts are compared on their first OCR_MAX_CHARS normalised characters.
OCR_MAX_CHARS = 10_000
# Raw text is cut to this before normalising, so normalising is bounded too.
_RAW_LIMIT = 4 * OCR_MAX_CHARS


def normalize_ocr(text: str) -> str:
    text = unicodedata.normalize("NFKC", text[:_RAW_LIMIT]).lower()
    text = " ".join(words_to_digits(text).split())
    return text.strip("\"'`“”‘’").rstrip(".!?;:,").strip()[:OCR_MAX_CHARS]


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence (Hyyrö's bit-vector algorithm, Python ints as
    bit vectors over the positions of ``a``)."""
    if len(a) < len(b):
        a, b = b, a
    positions: dict[str, int] = {}
    for i, ch in enumerate(a):
        positions[ch] = positions.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & positions.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def similarity(a: str, b: str) -> float:
    """2·LCS / total length, in [0, 1]; 1.0 iff equal (two empty texts are not similar)."""
    if not a or not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def grade_ocr(response: str, ground_truth: str) -> tuple[float, str | None]:
    region, _ = answer_region(response)
    answer = normalize_ocr(region)
    return similarity(answer, normalize_ocr(answer_text(ground_truth))), answer or None


def check_ocr_truth(ground_truth: str) -> str | None:
    if not normalize_ocr(answer_text(ground_truth)):
        return "OCR ground truth is empty"
    return None
