"""Numbers in free text, as a reader means them: "1,024", "-3.5", "3e8", "3 × 10^8", "1.2 million",
"2.5k", "twenty-five", "a dozen", "none".

No dependency (word2number, used by the released plugin, raises on odd input): the small grammar
below reads cardinals up to the billions, which is what counting, chart and OCR answers contain.
Values are exact ``Fraction``s, so ``3.0`` equals ``3``. "one" used as a pronoun ("the one on the
left", "each one") is not a number. Callers pass bounded text; everything here is linear.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

# Digit runs longer than this are not numbers an answer means (and int() refuses > 4300 digits).
MAX_DIGITS = 64
# Powers of ten beyond this are not quantities a VLM answer states (and would build huge integers).
MAX_EXPONENT = 30

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_UNITS["none"] = 0
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMBER_WORDS = {**_UNITS, **_TENS, "hundred": 100, "dozen": 12, **_SCALES}
# "one" after these is a pronoun ("the one on the left"), not a count.
_PRONOUN_ONE_AFTER = frozenset("the this that which each every any no another other some someone".split())

_FRACTION = rf"\.\d{{1,{MAX_DIGITS}}}"
# Unsigned decimal (signs: :func:`_signed`), optional thousands separators, optional exponent. Bounded
# repetitions keep matching linear, and a number never starts inside another one ("1.5" is not 1 and 5).
_NUMBER = re.compile(
    rf"(?<![\d.,])(?:(?:\d{{1,3}}(?:,\d{{3}}){{1,21}}(?![,]?\d)|\d{{1,{MAX_DIGITS}}})"
    rf"(?:{_FRACTION})?|{_FRACTION})(?:[eE](?P<exp>[-+]?\d{{1,3}}))?(?![\d.]\d)(?!\d)"
)
# After a number: "× 10^8", "x10^{-3}", "\times 10^{8}", "* 10 ** 8", "·10^8".
_TIMES_TEN = re.compile(r"\s{0,2}(?:\\times|\\cdot|[x×*·])\s{0,2}10\s{0,2}(?:\^|\*\*)\s{0,2}\{?\s{0,2}([-+]?\d{1,3})\s{0,2}\}?")
# After a number: a scale word ("1.2 million") or an attached abbreviation ("2.5k", "3M", "$4bn").
_SCALE_AFTER = re.compile(
    r"\s{1,3}(thousand|million|billion|trillion|dozen)\b|\s?(bn|mn|mln|bln)\b|(k|K|M|B)(?![A-Za-z0-9])"
)
_ABBREVIATED = {"k": 10**3, "K": 10**3, "M": 10**6, "mn": 10**6, "mln": 10**6, "bn": 10**9, "bln": 10**9, "B": 10**9}
_WORD = re.compile(r"[A-Za-z]+")
_SIGNS = "-+\u2212"
_BLANKS = " \t"
# What a binary minus follows ("3 - 5", "x - 1", "(a) - 2", "\\pi - 3"): an operand.
_OPERAND_END = ")]}%'"
# Two or more "- item" lines: a list, whose dashes are bullets, not signs.
_BULLETS = re.compile(r"(?m)^[ \t]{0,8}[-*\u2022][ \t]+\S")
_WORD_GAP = re.compile(r"[ \t-]{1,3}")  # what may separate the words of one number


@dataclass(frozen=True)
class Number:
    start: int
    end: int
    value: Fraction
    spelled: bool = False
    """written in words ("twelve")"""


def _read_run(run: list[tuple[int, int, str]]) -> Iterator[tuple[int, int, int]]:
    """Split number words that follow each other into the numbers they spell, as
    ``(start, end, value)``: "twenty five" is 25, "one two" is 1 and 2, "one hundred and five" 105,
    "two dozen" 24."""
    start = end = -1
    total = current = 0
    last: str | None = None
    for s, e, w in run:
        if w == "and":
            continue
        kind = (
            "unit"
            if w in _UNITS
            else "tens"
            if w in _TENS
            else "hundred"
            if w in ("hundred", "dozen")
            else "scale"
        )
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
            current = max(current, 1) * _NUMBER_WORDS[w]
        else:
            total += max(current, 1) * _SCALES[w]
            current = 0
        last, end = kind, e
    if last is not None:
        yield start, end, total + current


def spelled_numbers(text: str) -> Iterator[tuple[int, int, int]]:
    """``(start, end, value)`` of every spelled-out number in ``text``."""
    run: list[tuple[int, int, str]] = []
    previous = ""
    for m in _WORD.finditer(text):
        word = m.group().lower()
        joined = bool(run) and _WORD_GAP.fullmatch(text, run[-1][1], m.start()) is not None
        pronoun = word == "one" and previous in _PRONOUN_ONE_AFTER and not run
        if word in _NUMBER_WORDS and not pronoun or (word == "and" and joined and run[-1][2] != "and"):
            if run and not joined:
                yield from _read_run(run)
                run = []
            run.append((m.start(), m.end(), word))
        elif run:
            yield from _read_run(run)
            run = []
        previous = word
    if run:
        yield from _read_run(run)


def _operand_before(text: str, i: int) -> bool:
    """Whether ``text[:i]`` ends (after blanks) with an operand, making a sign at ``i`` binary."""
    while i > 0 and text[i - 1] in _BLANKS:
        i -= 1
    if i == 0:
        return False
    c = text[i - 1]
    if c.isdigit() or c in _OPERAND_END:
        return True
    if not c.isalpha():
        return False
    j = i - 1
    while j > 0 and text[j - 1].isalpha():
        j -= 1
    return i - j == 1 or (j > 0 and text[j - 1] == "\\")  # "x - 1", "\\pi - 3"; a word is not an operand


def _signed(text: str, start: int, bullets: bool) -> tuple[int, int]:
    """``(sign, start)`` of the number whose digits start at ``text[start]``: the unary signs before it,
    blanks allowed ("-5", "- 5", "= -5", "--5" is 5), never a hyphen ("COVID-19", "2-3" is 2 and 3)
    or a binary minus ("3 - 5", "x - 1"), nor a bullet of a list ("- 5 apples" over several lines)."""
    sign, i = 1, start
    while True:
        j = i
        while j > 0 and text[j - 1] in _BLANKS:
            j -= 1
        if j == 0 or text[j - 1] not in _SIGNS:
            return sign, i
        k = j - 1  # the sign
        if k > 0 and text[k - 1].isalnum() or _operand_before(text, k):
            return sign, i
        if bullets and j < i and (k == 0 or text[k - 1] == "\n"):
            return sign, i
        sign, i = (-sign if text[k] != "+" else sign), k


def _digit_numbers(text: str) -> Iterator[Number]:
    bullets = len(_BULLETS.findall(text, 0, 20_000)) > 1
    for m in _NUMBER.finditer(text):
        mantissa = m.group()[: m.start("exp") - m.start() - 1] if m.group("exp") else m.group()
        sign, start = _signed(text, m.start(), bullets)
        value = sign * Fraction(mantissa.replace(",", ""))
        exponent = int(m.group("exp") or 0)
        end = m.end()
        if tail := _TIMES_TEN.match(text, end):
            exponent += int(tail.group(1))
            end = tail.end()
        if scale := _SCALE_AFTER.match(text, end):
            abbreviation = scale.group(2) or scale.group(3)
            value *= _ABBREVIATED[abbreviation] if abbreviation else _NUMBER_WORDS[scale.group(1)]
            end = scale.end()
        if abs(exponent) > MAX_EXPONENT:
            continue
        yield Number(start, end, value * Fraction(10) ** exponent)


def numbers(text: str) -> list[Number]:
    """Every number in ``text`` in reading order, digits and words alike ("1.2 million" is one)."""
    spelled = (Number(s, e, Fraction(v), True) for s, e, v in spelled_numbers(text))
    out: list[Number] = []
    for n in heapq.merge(_digit_numbers(text), spelled, key=lambda n: n.start):
        if out and n.start < out[-1].end:  # "1.2 million": the scale word was read with the digits
            continue
        out.append(n)
    return out


def iter_numbers(text: str) -> Iterator[tuple[int, Fraction]]:
    """``(position, value)`` of every number in ``text`` in reading order."""
    for n in numbers(text):
        yield n.start, n.value


def first_number(text: str) -> Fraction | None:
    return next((v for _, v in iter_numbers(text)), None)


def last_number(text: str) -> Fraction | None:
    found = numbers(text)
    return found[-1].value if found else None


def words_to_digits(text: str) -> str:
    """``text`` with spelled-out numbers written in digits ("Route sixty-six" → "Route 66")."""
    parts, prev = [], 0
    for start, end, value in spelled_numbers(text):
        parts += [text[prev:start], str(value)]
        prev = end
    parts.append(text[prev:])
    return "".join(parts)
