"""Which value a short answer commits to when it states several: its conclusion, never a hedge.

Shared by counting and by the quantity answers of math and the reasoning tasks (chart, science,
puzzle), which write sentences such as "3 rows of 4, so 12 in total", "The difference is 16
(48 - 32)" or "2, 4, 8, 16 continues with 32". The rules:
- a conclusion decides: the value right after the last "so" / "therefore" / "=" / "answer is" /
  "leaves" / "continues with" …, or right before a closing "in total" / "altogether" / "in all";
- without one, the first value is the answer ("12 apples in 3 rows");
- two different values joined as alternatives ("3 or 4", "3-4", "3/4 maybe", "between 3 and 5") or
  listed ("1, 2, 3", "12 13 14") are a hedge: no value;
- a bound or an estimate ("more than 15", "about 20", "15+") is not a value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

_LEADING = re.compile(
    r"\b(?:so|thus|therefore|hence|leaves|leaving|remain|remains|remaining|makes|making|gives|giving|yields|"
    r"equals|comes\s+to|adds\s+up\s+to|continues\s+with|followed\s+by|next\s+(?:number|term|value)\s+is|"
    r"total\s+(?:of|is|count(?:\s+is)?)|count\s+is|answer\s+is|"
    r"(?:total|number|count|sum)(?:\s+[a-z]+){1,4}?\s+(?:is|are|was|were|equals|comes\s+to)|there\s+(?:are|is)\s+(?:a\s+total\s+of\s+)?)\b|=",
    re.IGNORECASE,
)
# In a sentence that states a value: "The median of 3, 5, 7 is 5", "Revenue in 2021 was $3.5bn".
_COPULA = re.compile(
    r"\b(?:is|was|are|were|equals|reached|reaches|totals|totaled|totalled|amounts\s+to|stood\s+at|stands\s+at)\b",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"\b(?:in\s+total|total|altogether|in\s+all|overall)\b", re.IGNORECASE)
# What joins two alternatives: a list or range mark, or a hedging word (possibly in parentheses).
_HEDGE_JOINT = re.compile(
    r"^[\s{}\[\]]*+(?:[,;~–-]|\(?\s*+,?\s*+(?:or|to|and|maybe|perhaps|possibly|probably|or\s+(?:maybe|possibly|perhaps|so)|up\s+to)\b)?"
    r"[\s,;~–{}\[\]-]*+$",
    re.IGNORECASE,
)
_BOUND = re.compile(
    r"\b(?:more|fewer|less|greater|over|under|at\s+least|at\s+most|nearly|almost|about|around|approximately|"
    r"roughly|approx|upwards\s+of|up\s+to|several|many|some)\s*(?:than\s*)?$"
    r"|(?:\\geq?|\\leq?|\\gtrsim|\\lesssim|\\approx|≥|≤|≈|>=|<=|>|<|~)\s*$",
    re.IGNORECASE,
)
# A second value offered in the same sentence: "7 birds — maybe 8 if …", "12, or possibly 13".
_ALTERNATIVE_WORD = re.compile(
    r"\b(?:or|maybe|perhaps|possibly|probably|if|unless|otherwise|depending)\b", re.IGNORECASE
)
# A restatement that changes the value is two answers, even across sentences: "15. In other words, 16."
_RESTATEMENT = re.compile(
    r"\b(?:in\s+other\s+words|i\.e\.|that\s+is(?:\s+to\s+say)?|namely|equivalently|rather|actually|alternatively)\b",
    re.IGNORECASE,
)
_SENTENCE_BREAK = re.compile(r"[.!?;\n](?:\s|$)")
_ITEM_SPLIT = re.compile(r"[,;]")
_ITEM_END = re.compile(r"[,;]\s*$")
_ITEM_START = re.compile(r"^\s*[,;]")
_BETWEEN = re.compile(r"\b(?:between|from|either)\s*$", re.IGNORECASE)


class Spanned(Protocol):
    start: int
    end: int

    @property
    def value(self) -> object: ...


S = TypeVar("S", bound=Spanned)


def hedged(text: str, found: Sequence[Spanned], chosen: Spanned) -> bool:
    """``chosen`` is offered beside a different value, as an alternative, a range or in a list:
    "3 or 4", "3-4", "9 (maybe 10)", "1, 2, 3", "between 3 and 5". A derivation is no hedge:
    "16 (48 - 32)" joins 48 and 32, not 16."""
    at = next(i for i, n in enumerate(found) if n is chosen)
    if _BETWEEN.search(text[: chosen.start]):
        return any(n.value != chosen.value for n in found[at + 1 : at + 2])
    neighbours = [(found[at - 1], chosen)] if at > 0 else []
    neighbours += [(chosen, found[at + 1])] if at + 1 < len(found) else []
    for a, b in neighbours:
        joint = text[a.end : b.start]
        if a.value != b.value and joint.strip() != "}{" and (  # "}{": the arguments of \frac, not a list
            _HEDGE_JOINT.match(joint)
            or (_ALTERNATIVE_WORD.search(joint) and not _SENTENCE_BREAK.search(joint))
            or _RESTATEMENT.search(joint)
        ):
            return True
    return _listed(text, chosen)


def _listed(text: str, chosen: Spanned) -> bool:
    """``chosen`` is one item of a list of short answers ("Yes, No, 17.6, Brazil, 2014")."""
    before, after = text[: chosen.start], text[chosen.end :]
    if before.strip() and not _ITEM_END.search(before) or after.strip() and not _ITEM_START.match(after):
        return False
    items = [item.split() for item in _ITEM_SPLIT.split(before + " " + after)]
    return sum(0 < len(words) <= 2 for words in items) >= 1


def any_hedged(text: str, found: Sequence[Spanned]) -> bool:
    """Some value of ``found`` is offered beside a different one (see :func:`hedged`)."""
    return any(hedged(text, found, item) for item in found)


def bounded(text: str, item: Spanned) -> bool:
    """``item`` is stated as a bound or an estimate ("more than 15", "15+"), not as a value."""
    return bool(_BOUND.search(text, max(0, item.start - 24), item.start)) or text[item.end : item.end + 1] == "+"


def concluded(text: str, found: Sequence[S], copulas: bool = False) -> S | None:
    """The item of ``found`` (values found in ``text``, in reading order) the text commits to.
    ``copulas``: "is" / "was" / "reached" … also introduce the value (a sentence stating a quantity;
    not for counts, where "one is white" follows the count)."""
    if not found:
        return None
    leading = [*_LEADING.finditer(text), *(_COPULA.finditer(text) if copulas else ())]
    markers = sorted(
        [(m.start(), m.end(), True) for m in leading] + [(m.start(), m.end(), False) for m in _TRAILING.finditer(text)]
    )
    chosen = found[0]
    if markers:
        start, end, leading = markers[-1]
        earlier = markers[-2][1] if len(markers) > 1 else 0
        before = [n for n in found if earlier <= n.start and n.end <= start]
        after = [n for n in found if n.start >= end]
        if not leading and before:
            chosen = before[-1]
        elif after:
            chosen = after[0]
    if hedged(text, found, chosen) or bounded(text, chosen):
        return None
    return chosen
