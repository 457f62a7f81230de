"""Math answers: normalised text, then symbolic equivalence with math-verify, then plain numbers.

Checks, first success wins:
1. the answer is the truth up to blanks, ``$`` and a final full stop;
2. math-verify parses both (LaTeX, then plain expressions) and compares them symbolically and
   numerically: ``\\frac{1}{2}`` = ``0.5``, ``x = 3`` = ``3``, ``5\\text{ cm}`` = ``5``. A percentage
   equals both its number and its fraction (``50\\%`` = ``50`` = ``0.5``); two percentages compare as
   numbers. If both sides parse, math-verify's verdict is final;
3. if one side does not parse (or sympy was skipped, below): the single number each side states,
   exactly (``1,000`` = ``1000.0``; without answer tags, the response's last number).
A truth made only of words or letters ("red", "north east", "B") is compared as normalised text
alone ("(B)" = "B", "Red." = "red"): sympy reads words as products of symbols, which commute ("red"
would equal "der").

Bounded time. Graders run in verl's reward threads and Ray actor threads, where math-verify's own
``signal.alarm`` timeouts cannot work (math-verify 0.9.0 raises ``ValueError`` off the main thread
unless they are disabled). So: only the extracted answer, or without tags the response's last
``MAX_MATH_CHARS`` characters, ever reaches sympy, and answers longer than that skip it; inputs that
would make sympy build astronomically large integers in one uninterruptible C call (``9^{9^{9}}``,
``2^{10^{9}}``, ``100000!``) skip it (:func:`sympy_safe`); and all sympy work of one grade runs under
a ``MATH_TIMEOUT_S`` deadline that interrupts it in whatever thread it runs (``deadline.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import unicodedata
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from curate.grading.deadline import run_with_deadline
from curate.grading.extract import answer_region, answer_text
from curate.grading.logs import warn_once
from curate.grading.numbers import iter_numbers
from curate.grading.text import normalize_text

logger = logging.getLogger(__name__)

MAX_MATH_CHARS = 1000
MATH_TIMEOUT_S = 2.0
# Sympy is skipped when the integers an expression spells could have more digits than this.
MAX_INTEGER_DIGITS = 100_000
MAX_FACTORIAL = 1000

_WORDS_ONLY = re.compile(r"[A-Za-z]+(?:[\s'-]+[A-Za-z]+)*")
_PERCENT = re.compile(r"\\?%")
_DIGIT_RUN = re.compile(r"\d+")
_POWER = re.compile(r"\^|\*\*")
_TOKEN = re.compile(r"[\w.]*")
_FACTORIAL = re.compile(r"(?<!\\)!")
_FACTORIAL_OPERAND = re.compile(r"(?<!\d)(\d{1,4})\s*$")


def _exponent(text: str, i: int) -> str:
    """The exponent that starts at ``text[i]``: a ``{…}`` or ``(…)`` group, else one token."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] in "{(":
        opening, closing, depth = text[i], "}" if text[i] == "{" else ")", 0
        for j in range(i, len(text)):
            depth += (text[j] == opening) - (text[j] == closing)
            if depth == 0:
                return text[i + 1 : j]
        return text[i + 1 :]
    return _TOKEN.match(text, i).group()


def sympy_safe(text: str) -> bool:
    """False when parsing ``text`` could make sympy compute an astronomically large integer.

    Sympy evaluates integer powers and factorials eagerly, in single C calls that no timeout can
    interrupt. The check is conservative: the digits of the result are bounded by (longest digit
    run) × Π over all exponents of (product of the integers in the exponent); a tower (an exponent
    containing a power) is refused, and so is a factorial of anything but an integer ≤ 1000.
    """
    bound = max((len(d) for d in _DIGIT_RUN.findall(text)), default=1)
    for m in _POWER.finditer(text):
        exponent = _exponent(text, m.end())
        if _POWER.search(exponent) or _FACTORIAL.search(exponent):
            return False
        for literal in _DIGIT_RUN.findall(exponent):
            if len(literal) > 9:
                return False
            bound *= max(1, int(literal))
            if bound > MAX_INTEGER_DIGITS:
                return False
    for m in _FACTORIAL.finditer(text):
        operand = _FACTORIAL_OPERAND.search(text, max(0, m.start() - 16), m.start())
        if operand is None or int(operand.group(1)) > MAX_FACTORIAL:
            return False
    return True


class _QuietTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeouts are off; they are, on purpose (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


_quiet = _QuietTimeoutWarning()
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_quiet)


@functools.cache
def _math_verify() -> tuple[Callable[..., list[Any]], Callable[..., bool]]:
    """math-verify's ``parse`` and ``verify``, imported and warmed up outside any deadline.

    Sympy imports modules lazily on first use of a feature; an import interrupted by the deadline
    would leave it half-initialised, so the common paths (numbers, fractions, equations, sets,
    intervals, percent) run once here first.
    """
    from math_verify import parse, verify

    warm_up = (("$\\frac{1}{2}$", "0.5"), ("$x=3$", "$3$"), ("$\\{1,2\\}$", "$(1,2]$"), ("$50\\%$", "$x^2$"))
    for gold, answer in warm_up:
        verify(parse(gold, parsing_timeout=None), parse(answer, parsing_timeout=None), timeout_seconds=None)
    return parse, verify


def _parse(text: str, tagged: bool) -> list[Any]:
    """math-verify's readings of ``text``. An extracted answer is read as one LaTeX formula first."""
    parse, _ = _math_verify()
    if tagged and "$" not in text and "\\boxed" not in text:
        found = parse(f"${text}$", parsing_timeout=None)
        if found:
            return found
    return parse(text, parsing_timeout=None)


def _with_fraction(values: list[Any]) -> list[Any]:
    """A percentage's readings plus the same readings divided by 100."""
    from sympy import Basic, Integer

    out = list(values)
    for v in values:
        if isinstance(v, Basic):
            with contextlib.suppress(Exception):  # sets, relations: no percentage of those
                out.append(v / Integer(100))
    return out


def _symbolic_equal(gold: str, answer: str, tagged: bool) -> tuple[bool | None, str | None]:
    """``(verdict, what was read from the answer)``; verdict None when a side does not parse."""
    _, verify = _math_verify()
    gold_pct, answer_pct = bool(_PERCENT.search(gold)), bool(_PERCENT.search(answer))
    gold_values = _parse(_PERCENT.sub("", gold), True)
    answer_values = _parse(_PERCENT.sub("", answer), tagged)
    read = next((v for v in reversed(answer_values) if isinstance(v, str)), None)
    if not gold_values or not answer_values:
        return None, read
    if gold_pct and not answer_pct:
        gold_values = _with_fraction(gold_values)
    elif answer_pct and not gold_pct:
        answer_values = _with_fraction(answer_values)
    return bool(verify(gold_values, answer_values, timeout_seconds=None)), read


def _single_number(text: str, last: bool) -> Fraction | None:
    values = [v for _, v in iter_numbers(text)]
    if last:
        return values[-1] if values else None
    return values[0] if len(values) == 1 else None


def _numbers_equal(gold: str, answer: str, tagged: bool) -> tuple[bool, str | None]:
    expected, value = _single_number(gold, last=False), _single_number(answer, last=not tagged)
    if expected is None or value is None:
        return False, None
    gold_pct, answer_pct = bool(_PERCENT.search(gold)), bool(_PERCENT.search(answer))
    expected_readings = {expected, expected / 100} if gold_pct and not answer_pct else {expected}
    answer_readings = {value, value / 100} if answer_pct and not gold_pct else {value}
    return bool(expected_readings & answer_readings), _fmt(value)


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def _canonical(text: str) -> str:
    """Spelling-only differences removed: blanks, ``$`` delimiters, a final full stop."""
    return "".join(unicodedata.normalize("NFKC", text).replace("$", "").split()).rstrip(".")


def grade_math(response: str, ground_truth: str) -> tuple[float, str | None]:
    gold = answer_text(ground_truth)[:MAX_MATH_CHARS]
    region, tagged = answer_region(response)
    if not region or not gold:
        return 0.0, None
    if len(region) > MAX_MATH_CHARS:  # an answer this long is not a formula; the tail may hold one
        if tagged:
            return 0.0, None
        region = region[-MAX_MATH_CHARS:]
    extracted = region if tagged else None
    if _WORDS_ONLY.fullmatch(gold):
        answer = normalize_text(region)
        return float(answer == normalize_text(gold)), answer
    if _canonical(region) == _canonical(gold):
        return 1.0, region
    verdict = None
    if sympy_safe(gold) and sympy_safe(region):
        _math_verify()
        try:
            verdict, read = run_with_deadline(lambda: _symbolic_equal(gold, region, tagged), MATH_TIMEOUT_S)
            extracted = extracted or read
        except TimeoutError:
            warn_once(
                logger,
                "math-timeout",
                "math grading gave up after %g s; comparing numbers instead"
                " (further timeouts are logged at DEBUG)",
                MATH_TIMEOUT_S,
            )
    if verdict is not None:
        return float(verdict), extracted
    same, number = _numbers_equal(gold, region, tagged)
    return float(same), extracted or number


def check_math_truth(ground_truth: str) -> str | None:
    if not answer_text(ground_truth).strip():
        return "math ground truth is empty"
    return None
