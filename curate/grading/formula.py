"""The formula a sentence states: "So the result is \\frac{1}{\\frac{1}{2}}" states ``\\frac{1}{\\frac{1}{2}}``.

math-verify, given a whole sentence, extracts LaTeX fragments by pattern and can return an inner
part of a nested formula (the ``\\frac{1}{2}`` of ``\\frac{1}{\\frac{1}{2}}``), and number scanners
read a formula's digits one by one; either way a nested fraction or a negation is misread. So the math
grader hands sympy only the formula the sentence ends on: the last ``$…$`` / ``\\(…\\)`` / ``\\[…\\]``
span, else the longest run of formula characters (LaTeX commands with their brace groups, digits,
operators, single-letter variables) at the end of the sentence. Linear in the text.
"""

from __future__ import annotations

import re

_DELIMITED = re.compile(r"\$\$([^$]{1,1000}?)\$\$|\$([^$]{1,1000}?)\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,1000}?)\\\]", re.DOTALL)
_FORMULA_CHARS = frozenset("0123456789.+-*/^_=()[]|!,<>' \t\u2212\u00b7\u00d7\u221a\u03c0")
_SENTENCE_END = ".!?;: \t\n"
_LEADING = " \t,.:="
_PROSE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}")
# What only a formula has: a LaTeX command, a power, a fraction, a root, a product, a factorial, a
# sign applied to a group or to a sign. Not "16 (48 - 32)": a value and how it was found.
_STRUCTURE = re.compile(r"\\[A-Za-z]+|[\^/√]|\w\s*\*\s*\w|[\d)}]!|[-+]\s*\(|-\s*-")
_EMPHASIS = "*_"


def _group_start(text: str, close: int) -> int | None:
    """Where the brace group ending at ``text[close] == "}"`` opens, or None if it does not."""
    depth = 0
    for i in range(close, -1, -1):
        if text[i] == "}":
            depth += 1
        elif text[i] == "{":
            depth -= 1
            if depth == 0:
                return i
    return None


def _trailing_run(text: str) -> int:
    """Where the run of formula tokens ``text`` ends on starts (brace groups whole, LaTeX commands,
    single letters)."""
    i = len(text)
    while i > 0:
        c = text[i - 1]
        if c == "}":
            start = _group_start(text, i - 1)
            if start is None:
                break
            i = start
        elif c.isalpha() and c.isascii():
            j = i - 1
            while j > 0 and text[j - 1].isalpha() and text[j - 1].isascii():
                j -= 1
            if j > 0 and text[j - 1] == "\\":
                i = j - 1  # a LaTeX command
            elif i - j == 1:
                i = j  # a variable
            else:
                break  # a word: the sentence before the formula
        elif c in _FORMULA_CHARS or c == "\\":
            i -= 1
        else:
            break
    return i


def stated_formula(text: str) -> str | None:
    """The formula ``text`` (a sentence) states, when it is written around one with words; None when
    ``text`` has no words (it is the formula itself), states no formula, or states a number outside
    it ("1.45 units after computing √2.106", "24 cm^2": the number is the answer, not the formula)."""
    text = text.rstrip().rstrip(_SENTENCE_END).strip(_EMPHASIS)
    if _PROSE.search(text) is None:
        return None
    spans = list(_DELIMITED.finditer(text))
    if spans:
        last = spans[-1]
        start, formula = last.start(), next(g for g in last.groups() if g is not None)
    else:
        start = _trailing_run(text)
        formula = text[start:]
    formula = formula.strip().lstrip(_LEADING).strip(_EMPHASIS).strip()
    if any(c.isdigit() for c in text[:start]):
        return None
    return formula if any(c.isdigit() or c == "\\" for c in formula) else None


def structured(formula: str) -> bool:
    """Whether ``formula`` needs a computer algebra reading (a fraction, root, power, or a sign applied
    to a group), not just its numbers."""
    return _STRUCTURE.search(formula) is not None
