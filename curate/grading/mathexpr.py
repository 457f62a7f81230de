"""Math and the reasoning tasks (MathVista, chart, science, puzzle): judged by the truth's shape.

The truth decides how the answer is read:
- an option letter ("B", "(B)", "B. Oxygen") or yes/no: the closed-form graders (``choice.py``), so
  "Option B", "B. Oxygen" and "Yes, it is." are right and "A or B" is not;
- a quantity ("12", "5 cm", "$3.50", "45%", "1.2 million"): the answer must state one quantity with
  the same value, units converted where both sides have one (``quantity.py``): "5 dollars",
  "15 m/s", "3e8", "x = 7", "twelve", "1,234" are read as numbers even where math-verify misreads
  them, and "12 cm" is not "12 m". An answer that is not a plain quantity ("\\frac{1}{2}",
  "2\\sqrt{2}") goes to math-verify, unless it joins different values as alternatives ("3 or 4");
- words ("north east", "Oxygen"): normalised text, the option's label ignored ("B. Oxygen" names
  "Oxygen"); sympy reads words as products of symbols, which commute ("red" would equal "der");
- anything else (an expression, an interval, a set): the text up to blanks and ``$``, then
  math-verify's symbolic and numeric equivalence; where a side does not parse, the single numbers
  each side states.

Bounded time. Graders run in verl's reward threads and Ray actor threads, where math-verify's own
``signal.alarm`` timeouts cannot work (math-verify 0.9.0 raises ``ValueError`` off the main thread
unless they are disabled). So: only the committed answer, or without tags the response's last
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, TypeVar

from curate.grading.choice import grade_multiple_choice, grade_yes_no, option_text
from curate.grading.conclusion import any_hedged, concluded
from curate.grading.deadline import run_with_deadline, time_left
from curate.grading.extract import (
    MAX_SHORT_ANSWER_CHARS,
    FinalAnswer,
    answer_text,
    last_sentence,
    normalize_unicode,
)
from curate.grading.formula import stated_formula, structured
from curate.grading.logs import warn_once
from curate.grading.quantity import (
    Quantity,
    clean_latex,
    quantities,
    rounds_to,
    same_quantity,
    single_quantity,
    unit_after,
)
from curate.grading.text import normalize_text, text_verdict
from curate.grading.verdict import GradeContext, Verdict, exact

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MATH_CHARS = 1000
# Sympy's share of a grade's time limit (curate.grading.GRADE_TIME_LIMIT_S): at most this, and never
# more than what is left of the limit less DEADLINE_MARGIN_S (for the deadline to land in the guarded
# thread, which waits for the GIL and a CPU, and for the fallback comparison after it).
MATH_TIMEOUT_S = 1.5
DEADLINE_MARGIN_S = 0.3
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


def warm_up() -> None:
    _math_verify()


def _parse(text: str, tagged: bool) -> list[Any]:
    """math-verify's readings of ``text``. An extracted answer is read as one LaTeX formula first."""
    parse, _ = _math_verify()
    prose = _WORD.search(_LATEX_COMMAND.sub(" ", text)) is not None
    if tagged and not prose and not any(d in text for d in ("$", "\\boxed", "\\(", "\\[")):
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


def _symbolic_equal(gold: str, answer: str, tagged: bool) -> bool | None:
    """math-verify's verdict; None when a side does not parse."""
    _, verify = _math_verify()
    gold_pct, answer_pct = bool(_PERCENT.search(gold)), bool(_PERCENT.search(answer))
    gold_values = _parse(_PERCENT.sub("", gold), True)
    answer_values = _parse(_PERCENT.sub("", answer), tagged)
    if not gold_values or not answer_values:
        return None
    if gold_pct and not answer_pct:
        gold_values = _with_fraction(gold_values)
    elif answer_pct and not gold_pct:
        answer_values = _with_fraction(answer_values)
    return bool(verify(gold_values, answer_values, timeout_seconds=None))


def _canonical(text: str) -> str:
    """Spelling-only differences removed: blanks, ``$`` delimiters, a final full stop."""
    return "".join(unicodedata.normalize("NFKC", text).replace("$", "").split()).rstrip(".")


_LETTER_TRUTH = re.compile(r"^\s*(?:\(?[A-Z]\)?\.?|\(?[A-Z]\)?[.:)]\s+\S.*|\([A-Z]\)\s+\S.*)$", re.DOTALL)
_YES_NO_TRUTH = re.compile(r"^\s*(?:yes|no)\s*\.?\s*$", re.IGNORECASE)
_ALTERNATIVES = re.compile(r"\b(?:or|to|and|between|either)\b|,|;|\\pm|±|\\cup|∪|\\lor", re.IGNORECASE)
# What only a formula has: LaTeX commands, fractions, powers, roots, operators.
_EXPRESSION = re.compile(r"\\[A-Za-z]+|[/^*+√π=()!|]|\bsqrt\b|\bpi\b|\d\s*-\s*\d")
_WORD = re.compile(r"[A-Za-z]{3,}")
_WORD_OF_TWO = re.compile(r"[A-Za-z]{2,}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WITH_DERIVATION = re.compile(r"^\s*+([^()]*\d[^()]*?)\s+\(([^()]*+)\)\s*+\.?\s*+$")
_NEGATED = re.compile(r",?\s*+\b(?:not|rather\s++than|instead\s++of)\s++[^\s,;]++", re.IGNORECASE)
_RHS = re.compile(r"(?:=|≈|\\approx)([^=≈]*)$")


def _rounds_to_truth(gold: str, gold_q: Quantity | None, answer: str, committed: bool) -> bool:
    """An exact answer whose value rounds to a decimal truth ("\\frac{1}{3}" for "0.33", "2\\pi" for
    "6.28"): the truth is a rounded value."""
    if gold_q is None or "." not in gold:
        return False
    return any(rounds_to(value, gold_q.value, gold) for value in _real_values(answer, committed))


def _real_values(text: str, tagged: bool) -> Iterator[Fraction]:
    """The real numbers among math-verify's readings of ``text`` (sympy work: call under the deadline)."""
    from sympy import Basic

    for value in _parse(text, tagged):
        if isinstance(value, Basic) and value.is_number and value.is_real:
            yield Fraction(float(value.evalf(30)))


def _symbolic(gold: str, region: str, committed: bool, gold_q: Quantity | None = None) -> bool | None:
    """math-verify's verdict under the deadline; None when a side does not parse or time ran out."""
    if not (sympy_safe(gold) and sympy_safe(region)):
        return None

    def judge() -> bool | None:
        verdict = _symbolic_equal(gold, region, committed)
        return verdict or _rounds_to_truth(gold, gold_q, region, committed) if verdict is not None else None

    return _under_deadline(judge)


def _formula_value(formula: str) -> Fraction | None:
    """The real number ``formula`` denotes, by sympy under the deadline; None if it denotes none."""
    if not sympy_safe(formula):
        return None

    return _under_deadline(lambda: next(_real_values(formula, True), None))


def _under_deadline(fn: Callable[[], T]) -> T | None:
    """``fn()`` (sympy work) under the math deadline; None when time ran out."""
    _math_verify()
    seconds = min(MATH_TIMEOUT_S, time_left() - DEADLINE_MARGIN_S)
    if seconds <= 0:
        return None
    try:
        return run_with_deadline(fn, seconds)
    except TimeoutError:
        warn_once(
            logger,
            "math-timeout",
            "math grading gave up after %.2g s; comparing numbers instead (further timeouts are logged at DEBUG)",
            seconds,
        )
        return None


def _quantity_verdict(gold: str, gold_q: Quantity, region: str, answer: FinalAnswer) -> bool | None:
    """The verdict for a quantity truth, or None to ask math-verify (the answer is a formula)."""
    stated = stated_formula(_NEGATED.sub("", region))
    if stated is not None and structured(stated) and single_quantity(stated) is None:
        # "So the result is \\frac{1}{\\frac{1}{2}}": the formula's value, unless others are offered
        if answer.committed and _offers_alternatives(region):
            return False
        return _formula_quantity_verdict(gold, gold_q, region, stated)
    if not answer.committed:
        found = quantities(clean_latex(region))
        return bool(found) and same_quantity(gold_q, found[-1], gold)
    region = _NEGATED.sub("", region)  # "42, not 41": 41 is ruled out, not offered
    said = single_quantity(region)
    if said is not None:
        return same_quantity(gold_q, said, gold)
    cleaned = clean_latex(region)
    found = quantities(cleaned)
    formula = bool(_EXPRESSION.search(region))
    if _WORD.search(_LATEX_COMMAND.sub(" ", cleaned)) or not formula:
        # a sentence ("The median of 3, 5, 7 is 5", "2, 4, 8, 16 continues with 32"): its conclusion
        chosen = concluded(cleaned, found, copulas=True)
        if chosen is not None and same_quantity(gold_q, chosen, gold):
            return True
        if formula:  # "The average is \\(\\frac{100}{3}\\)": sympy reads it, unless it offers alternatives
            alternatives = _offers_alternatives(region) or any_hedged(cleaned, found)
            return False if alternatives else None
        return False
    if (m := _WITH_DERIVATION.match(cleaned)) and (said := single_quantity(m.group(1))) is not None:
        if _OFFERS_ALTERNATIVES.search(m.group(2)):
            return False  # "3 (or 4)"
        return same_quantity(gold_q, said, gold)  # "16 (48 - 32)": the value, then how it was found
    if len({q.value for q in found}) > 1 and _ALTERNATIVES.search(region):
        return False  # "x=2 or x=3", "3, 4": a hedge on a single value
    if rhs := _RHS.search(region):  # "3 + 4 = 7": the value it ends on
        said = single_quantity(rhs.group(1))
        if said is not None:
            return same_quantity(gold_q, said, gold)
    return None


def _formula_quantity_verdict(gold: str, gold_q: Quantity, region: str, formula: str) -> bool | None:
    """A formula stated with a unit ("$\\frac{1}{2}$ km") against a truth with one: its value in that
    unit; None (math-verify compares the values) when either side has no unit."""
    after = region[region.rfind(formula) + len(formula) :].lstrip("$)]} \\")
    unit = unit_after(clean_latex(after), 0)[0]
    if gold_q.unit is None or unit is None:
        return None
    value = _formula_value(formula)
    return None if value is None else same_quantity(gold_q, Quantity(value, unit, 0, 0), gold)


def _offers_alternatives(region: str) -> bool:
    """The answer offers other values in words ("or", "maybe", ...), LaTeX command names aside."""
    return _OFFERS_ALTERNATIVES.search(_LATEX_COMMAND.sub(" ", region)) is not None


_OFFERS_ALTERNATIVES = re.compile(r"\b(?:or|maybe|perhaps|possibly|either)\b", re.IGNORECASE)
_LIST_SPLIT = re.compile(r"\s*+(?:,|;|\band\b)\s*+")


def value_list(gold: str) -> list[Fraction] | None:
    """The values of a truth that lists several ("2, 3", "1; 4 and 9"), else None."""
    gold = gold.strip()
    if gold[:1] in "([" or gold.startswith("\\left"):  # a tuple or an interval: order matters
        return None
    parts = [p for p in _LIST_SPLIT.split(gold.strip("{}").replace("\\{", "").replace("\\}", "").strip()) if p]
    if len(parts) < 2:
        return None
    values = [single_quantity(p) for p in parts]
    return [q.value for q in values] if all(q is not None for q in values) else None


@dataclass(frozen=True)
class _Truth:
    shape: str
    """ "letter", "yes_no", "quantity", "values" (a list), "words" or "expression" """
    quantity: Quantity | None = None
    values: list[Fraction] | None = None


def _read_truth(gold: str) -> _Truth:
    if _LETTER_TRUTH.match(gold):
        return _Truth("letter")
    if _YES_NO_TRUTH.match(gold):
        return _Truth("yes_no")
    if (quantity := single_quantity(gold)) is not None:
        return _Truth("quantity", quantity=quantity)
    if (values := value_list(gold)) is not None:
        return _Truth("values", values=values)
    if _WORDS_ONLY.fullmatch(gold.strip().rstrip(".")) and _WORD_OF_TWO.search(gold):  # "x" is a variable
        return _Truth("words")
    return _Truth("expression")


def truth_shape(gold: str) -> str:
    """How a truth is read: "letter", "yes_no", "quantity", "values" (a list), "words" or "expression"."""
    return _read_truth(normalize_unicode(gold)[:MAX_MATH_CHARS]).shape


def grade_math(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    gold = normalize_unicode(answer_text(ground_truth))[:MAX_MATH_CHARS]
    if answer.text is None or not answer.text.strip() or not gold:
        return exact(False, None)
    truth = _read_truth(gold)
    shape = truth.shape
    if shape == "letter":
        return replace(grade_multiple_choice(answer, ground_truth, ctx), grader="multiple_choice")
    if shape == "yes_no":
        return replace(grade_yes_no(answer, ground_truth, ctx), grader="yes_no")
    region = normalize_unicode(answer.text)
    if answer.committed and len(region) > MAX_SHORT_ANSWER_CHARS:
        return exact(False, None)
    if len(region) > MAX_MATH_CHARS:  # an answer this long is not a formula; the tail may hold one
        if answer.committed:
            return exact(False, None)
        region = region[-MAX_MATH_CHARS:]
    gold_q = truth.quantity
    if truth.values is not None and answer.committed:
        gold_values = truth.values
        said_values = [q.value for q in quantities(clean_latex(_NEGATED.sub("", region)))]
        if _WORD.search(_LATEX_COMMAND.sub(" ", region)) or sorted(said_values) == sorted(gold_values):
            return exact(sorted(said_values) == sorted(gold_values), region)  # "x = 3 and x = 2" for "2, 3"
    if gold_q is not None:
        verdict = _quantity_verdict(gold, gold_q, region, answer)
        if verdict is not None:
            return exact(verdict, region if answer.committed else None)
    elif shape == "words":
        option = option_text(region)  # "B. Oxygen" names "Oxygen"
        if option and option == normalize_text(gold):
            return exact(True, option, "short_answer")
        correct, said = text_verdict(region if answer.committed else last_sentence(region), gold)
        return exact(correct, said, "short_answer")
    if _canonical(region) == _canonical(gold):
        return exact(True, region)
    committed = answer.committed
    if committed:
        region = _NEGATED.sub("", region) or region  # "\\frac{1}{2}, not \\frac{1}{3}": one is ruled out
    if (stated := stated_formula(region)) is not None:
        if committed and _offers_alternatives(region):
            return exact(False, region)  # "It is $(1, 2]$ or maybe $(1, 3]$"
        region, committed = stated, True  # the formula alone
    verdict = _symbolic(gold, region, committed, gold_q)
    if verdict is None and gold_q is not None and answer.committed:
        said = single_quantity(region)
        verdict = said is not None and same_quantity(gold_q, said, gold)
    return exact(bool(verdict), region if answer.committed else None)


def check_math_truth(ground_truth: str) -> str | None:
    if not answer_text(ground_truth).strip():
        return "math ground truth is empty"
    return None
