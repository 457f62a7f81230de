"""Numbers in free text: digits ("1,024", "-3.5") and English number words ("twenty-five").

No dependency (word2number, used by the released plugin, raises on odd input): the small grammar
below reads cardinals up to the billions, which is what counting and OCR answers contain. Values are
exact ``Fraction``s, so ``3.0`` equals ``3``. Callers pass bounded text; everything here is linear.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from fractions import Fraction

# Digit runs longer than this are not numbers an answer means (and int() refuses > 4300 digits).
MAX_DIGITS = 64

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_NUMBER_WORDS = {**_UNITS, **_TENS, "hundred": 100, **_SCALES}

_FRACTION = rf"\.\d{{1,{MAX_DIGITS}}}"
# Signed decimal, optional thousands separators. Bounded repetitions keep matching linear, and a
# number never starts inside another one ("2-3" is 2 and 3, "1.5" is not 1 and 5).
_NUMBER = re.compile(
    rf"(?<![\d.,])[-+]?(?:(?:\d{{1,3}}(?:,\d{{3}}){{1,21}}(?![,]?\d)|\d{{1,{MAX_DIGITS}}})(?:{_FRACTION})?|{_FRACTION})"
    r"(?!\d)"
)
_WORD = re.compile(r"[A-Za-z]+")
_WORD_GAP = re.compile(r"[ \t-]{1,3}")  # what may separate the words of one number


def _read_run(run: list[tuple[int, int, str]]) -> Iterator[tuple[int, int, int]]:
    """Split number words that follow each other into the numbers they spell, as
    ``(start, end, value)``: "twenty five" is 25, "one two" is 1 and 2, "one hundred and five" 105."""
    start = end = -1
    total = current = 0
    last: str | None = None
    for s, e, w in run:
        if w == "and":
            continue
        kind = "unit" if w in _UNITS else "tens" if w in _TENS else "hundred" if w == "hundred" else "scale"
        follows = last is not None and (
            (kind in ("unit", "tens") and last in ("hundred", "scale"))
            or (kind == "unit" and last == "tens" and _UNITS[w] < 10)
            or (kind == "hundred" and last in ("unit", "tens") and current < 100)
            or (kind == "scale" and last != "scale")
        )
        if last is not None and not follows:
            yield start, end, total + current
            total = current = 0
        if last is None or not follows:
            start = s
        if kind in ("unit", "tens"):
            current += _NUMBER_WORDS[w]
        elif kind == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * _SCALES[w]
            current = 0
        last, end = kind, e
    if last is not None:
        yield start, end, total + current


def spelled_numbers(text: str) -> Iterator[tuple[int, int, int]]:
    """``(start, end, value)`` of every spelled-out number in ``text``."""
    run: list[tuple[int, int, str]] = []
    for m in _WORD.finditer(text):
        word = m.group().lower()
        joined = bool(run) and _WORD_GAP.fullmatch(text, run[-1][1], m.start()) is not None
        if word in _NUMBER_WORDS or (word == "and" and joined and run[-1][2] != "and"):
            if run and not joined:
                yield from _read_run(run)
                run = []
            run.append((m.start(), m.end(), word))
        elif run:
            yield from _read_run(run)
            run = []
    if run:
        yield from _read_run(run)


def _digit_numbers(text: str) -> Iterator[tuple[int, int, Fraction]]:
    for m in _NUMBER.finditer(text):
        yield m.start(), m.end(), Fraction(m.group().replace(",", ""))


def iter_numbers(text: str) -> Iterator[tuple[int, Fraction]]:
    """``(position, value)`` of every number in ``text`` in reading order, digits and words alike."""
    spelled = ((s, e, Fraction(v)) for s, e, v in spelled_numbers(text))
    for start, _, value in heapq.merge(_digit_numbers(text), spelled, key=lambda t: t[0]):
        yield start, value


def first_number(text: str) -> Fraction | None:
    return next((v for _, v in iter_numbers(text)), None)


def last_number(text: str) -> Fraction | None:
    last = None
    for _, last in iter_numbers(text):  # noqa: B007 (the loop runs for its last value)
        pass
    return last


def words_to_digits(text: str) -> str:
    """``text`` with spelled-out numbers written in digits ("Route sixty-six" → "Route 66")."""
    parts, prev = [], 0
    for start, end, value in spelled_numbers(text):
        parts += [text[prev:start], str(value)]
        prev = end
    parts.append(text[prev:])
    return "".join(parts)
