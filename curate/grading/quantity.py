"""Quantities: a number with an optional unit, currency or percent sign, and when two are the same.

"5 cm", "$12.50", "15 m/s", "1.2 km", "30°", "45%", "5\\text{ cm}", "x = 7", "twelve apples". A strict
judge accepts the same value with or without a unit ("5" = "5 cm"), converted units ("1.2 km" =
"1200 m"), and refuses different units ("12 m" ≠ "12 cm") or different dimensions ("5 kg" ≠ "5 m").

Units are a closed lexicon of what VLM answers write, not an open unit registry: an open registry
reads "a" as a year and "in" as an inch, and an answer's trailing noun ("5 apples") must stay a
noun. Units the lexicon does not know are nouns, so "5 widgets" = "5". Temperatures are compared
only within one scale (no affine conversion).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from curate.grading.numbers import numbers

# dimension, factor to the dimension's base unit
_L, _M, _T, _Y = "length", "mass", "time", "calendar"
_LEXICON: dict[str, tuple[str, float]] = {}


def _add(dimension: str, factor: float, *spellings: str) -> None:
    for s in spellings:
        _LEXICON[s] = (dimension, factor)


_add(_L, 1e-9, "nm", "nanometer", "nanometers", "nanometre", "nanometres")
_add(_L, 1e-6, "μm", "µm", "um", "micrometer", "micrometers", "micron", "microns")
_add(_L, 1e-3, "mm", "millimeter", "millimeters", "millimetre", "millimetres")
_add(_L, 1e-2, "cm", "centimeter", "centimeters", "centimetre", "centimetres")
_add(_L, 1e-1, "dm", "decimeter", "decimeters")
_add(_L, 1.0, "m", "meter", "meters", "metre", "metres")
_add(_L, 1e3, "km", "kilometer", "kilometers", "kilometre", "kilometres")
_add(_L, 0.0254, "in", "inch", "inches", '"')
_add(_L, 0.3048, "ft", "foot", "feet", "'")
_add(_L, 0.9144, "yd", "yard", "yards")
_add(_L, 1609.344, "mi", "mile", "miles")
for _unit, _f in (("mm", 1e-3), ("cm", 1e-2), ("m", 1.0), ("km", 1e3), ("ft", 0.3048), ("in", 0.0254)):
    _add("area", _f**2, f"{_unit}^2", f"{_unit}2", f"sq {_unit}", f"sq. {_unit}")
    _add("volume", _f**3, f"{_unit}^3", f"{_unit}3", f"cu {_unit}")
for _word, _f in (("millimeter", 1e-3), ("centimeter", 1e-2), ("meter", 1.0), ("kilometer", 1e3), ("foot", 0.3048), ("feet", 0.3048), ("inch", 0.0254), ("mile", 1609.344)):
    for _s in ("", "s", "es"):
        _add("area", _f**2, f"square {_word}{_s}")
        _add("volume", _f**3, f"cubic {_word}{_s}")
_add("area", 1e4, "hectare", "hectares", "ha")
_add("volume", 1e-6, "ml", "mL", "milliliter", "milliliters", "millilitre", "millilitres", "cc")
_add("volume", 1e-3, "l", "L", "liter", "liters", "litre", "litres")
_add(_M, 1e-6, "mg", "milligram", "milligrams")
_add(_M, 1e-3, "g", "gram", "grams")
_add(_M, 1.0, "kg", "kilogram", "kilograms", "kilo", "kilos")
_add(_M, 1e3, "tonne", "tonnes", "metric ton", "metric tons")
_add(_M, 0.45359237, "lb", "lbs", "pound", "pounds")
_add(_M, 0.028349523125, "oz", "ounce", "ounces")
_add(_T, 1e-3, "ms", "millisecond", "milliseconds")
_add(_T, 1.0, "s", "sec", "secs", "second", "seconds")
_add(_T, 60.0, "min", "mins", "minute", "minutes")
_add(_T, 3600.0, "h", "hr", "hrs", "hour", "hours")
_add(_T, 86400.0, "d", "day", "days")
_add(_T, 604800.0, "week", "weeks", "wk", "wks")
_add(_Y, 1 / 12, "month", "months")
_add(_Y, 1.0, "year", "years", "yr", "yrs")
_add(_Y, 10.0, "decade", "decades")
_add(_Y, 100.0, "century", "centuries")
# "a/b" is read from its parts ("km/min", "g/cm^3"); these are the spellings without a slash.
_SPEED = f"{_L}/{_T}"
_add(_SPEED, 1.0, "mps", "meters per second", "metres per second", "meter per second")
_add(_SPEED, 1 / 3.6, "kmh", "kph", "kmph", "kilometers per hour", "kilometres per hour")
_add(_SPEED, 0.44704, "mph", "miles per hour")
_add(_SPEED, 0.3048, "feet per second")
_add(f"{_L}/{_T}^2", 1.0, "m/s^2", "m/s2", "m s^-2")
_add("angle", math.pi / 180, "°", "deg", "degree", "degrees")
_add("angle", 1.0, "rad", "rads", "radian", "radians")
_add("celsius", 1.0, "°C", "℃", "degrees celsius", "degree celsius", "celsius", "degrees C")
_add("fahrenheit", 1.0, "°F", "℉", "degrees fahrenheit", "fahrenheit", "degrees F")
_add("kelvin", 1.0, "K", "kelvin", "kelvins")
_add("force", 1.0, "N", "newton", "newtons")
_add("force", 1e3, "kN", "kilonewton", "kilonewtons")
_add("energy", 1.0, "J", "joule", "joules")
_add("energy", 1e3, "kJ", "kilojoule", "kilojoules")
_add("energy", 4.184, "cal", "calorie", "calories")
_add("energy", 4184.0, "kcal", "kilocalorie", "kilocalories")
_add("energy", 3.6e6, "kWh", "kilowatt hour", "kilowatt hours")
_add("power", 1.0, "W", "watt", "watts")
_add("power", 1e3, "kW", "kilowatt", "kilowatts")
_add("power", 1e6, "MW", "megawatt", "megawatts")
_add("voltage", 1.0, "V", "volt", "volts")
_add("current", 1.0, "A", "amp", "amps", "ampere", "amperes")
_add("current", 1e-3, "mA", "milliamp", "milliamps")
_add("resistance", 1.0, "Ω", "ohm", "ohms")
_add("pressure", 1.0, "Pa", "pascal", "pascals")
_add("pressure", 1e3, "kPa", "kilopascal", "kilopascals")
_add("pressure", 101325.0, "atm", "atmosphere", "atmospheres")
_add("frequency", 1.0, "Hz", "hertz")
_add("frequency", 1e3, "kHz", "kilohertz")
_add("frequency", 1e6, "MHz", "megahertz")
_add("amount", 1.0, "mol", "mole", "moles")
_add("data", 1.0, "B", "byte", "bytes")
_add("data", 1e3, "KB", "kB", "kilobyte", "kilobytes")
_add("data", 1e6, "MB", "megabyte", "megabytes")
_add("data", 1e9, "GB", "gigabyte", "gigabytes")
_add("data", 1e12, "TB", "terabyte", "terabytes")
_add("pixel", 1.0, "px", "pixel", "pixels")
_add("usd", 1.0, "$", "usd", "us$", "dollar", "dollars", "us dollars", "bucks")
_add("usd", 0.01, "¢", "cent", "cents")
_add("eur", 1.0, "€", "eur", "euro", "euros")
_add("gbp", 1.0, "£", "gbp", "pound sterling", "pounds sterling")
_add("jpy", 1.0, "yen", "jpy")
_add("cny", 1.0, "yuan", "rmb", "cny", "renminbi")
_add("inr", 1.0, "₹", "inr", "rupee", "rupees", "rs")
_add("percent", 1.0, "%", "percent", "per cent", "pct", "percentage points")

# Symbols whose case carries meaning (m vs M, K vs k) are looked up as written; words in lower case.
_CASE_SENSITIVE = {s for s in _LEXICON if len(s) <= 3 and s.lower() != s.upper() and not s.islower()}
_MAX_UNIT_WORDS = 3
_CURRENCY_PREFIX = re.compile(r"(US\$|\$|€|£|¥|₹)\s?$")
_PREFIX_UNITS = {"US$": "usd", "$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_STYLE = re.compile(r"\\(?:color|textcolor|colorbox)\s*\{[^{}]*\}|\\(?:phantom|hphantom|vphantom)\b")
_LATEX_SPACE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\left|\\right")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|\\circ")
_SUPERSCRIPT = re.compile(r"\^\s*\{\s*([-\d]+)\s*\}")
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|≈|\\approx)\s*")
_APPROX = re.compile(r"^\s*(?:≈|~|\\approx|approximately|approx\.?|about|around|roughly|nearly)\s*", re.IGNORECASE)
_UNIT_TOKEN = re.compile(r"\s*(°\s?[CF]?|℃|℉|[%$€£¥₹¢Ω'\"]|[A-Za-zμµ]+(?:\s*/\s*[A-Za-z]+)?(?:\^-?\d|[23²³])?)")
# Units that are also English words ("5 in the box", "3 d ago"): units only at the end of a phrase.
_NEEDS_END = frozenset(("in", "ha", "d", "'", '"', "A", "B", "K", "N", "W", "V", "l", "L"))
_WORD_FOLLOWS = re.compile(r"\s+[A-Za-z]")
_SEPARATOR = re.compile(r"\s*+(?:/|per)\s*+", re.IGNORECASE)


@dataclass(frozen=True)
class Quantity:
    value: Fraction
    unit: str | None
    """the unit as the lexicon spells it, or None"""
    start: int
    end: int

    @property
    def dimension(self) -> str | None:
        return _LEXICON[self.unit][0] if self.unit else None


def clean_latex(text: str) -> str:
    """LaTeX that only dresses a quantity: ``\\text{cm}``, ``\\,``, ``^\\circ``, ``^{2}``, ``$…$``.
    Styling that hides text (``{\\color{white}12}``) keeps its content, which then counts."""
    text = _LATEX_STYLE.sub(" ", text)
    text = _LATEX_WRAPPER.sub(r" \1", text)
    text = _LATEX_WRAPPER.sub(r" \1", text)  # one level of nesting
    text = _DEGREE.sub("°", text)
    text = _SUPERSCRIPT.sub(r"^\1", text).replace("²", "^2").replace("³", "^3")
    text = _LATEX_SPACE.sub(" ", text).replace("\\%", "%").replace("\\$", "$")
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == "$" and stripped[-1] == "$" and stripped.count("$") == 2:
        text = stripped[1:-1]  # math delimiters, not a currency sign
    return text.replace("$$", "")


def _lookup(spelling: str) -> str | None:
    spelling = " ".join(spelling.split())
    if spelling in _LEXICON:
        return spelling
    lower = spelling.lower()
    if lower in _LEXICON and spelling not in _CASE_SENSITIVE and lower not in _CASE_SENSITIVE:
        return lower
    top, slash, bottom = spelling.partition("/")
    if slash and "/" not in bottom:  # a ratio of two known units: "km/min", "g/cm^3", "$/kg"
        top_unit, bottom_unit = _lookup(top.strip()), _lookup(bottom.strip())
        if top_unit and bottom_unit and _LEXICON[top_unit][0] != "percent":
            (top_dim, top_f), (bottom_dim, bottom_f) = _LEXICON[top_unit], _LEXICON[bottom_unit]
            unit = f"{top_unit}/{bottom_unit}"
            _LEXICON[unit] = (f"{top_dim}/{bottom_dim}", top_f / bottom_f)
            return unit
    return None


def unit_after(text: str, i: int) -> tuple[str | None, int]:
    """The longest lexicon unit starting at ``text[i]`` (after blanks): ``(unit, end)``."""
    best: tuple[str | None, int] = (None, i)
    j, words = i, []
    for _ in range(_MAX_UNIT_WORDS):
        m = _UNIT_TOKEN.match(text, j)
        if m is None:
            break
        words.append(m.group(1))
        j = m.end()
        unit = _lookup(" ".join(words))
        if unit is None and ("/" in words[-1] or "per" in words):  # "km/min", "km per hour"
            unit = _lookup(_SEPARATOR.sub("/", " ".join(words)))
        if unit is not None and not (unit in _NEEDS_END and _WORD_FOLLOWS.match(text, j)):
            best = (unit, j)
    return best


def quantities(text: str) -> list[Quantity]:
    """Every number in ``text`` with the unit or currency written with it."""
    out: list[Quantity] = []
    for n in numbers(text):
        if out and n.start < out[-1].end:  # the 2 of "m^2"
            continue
        unit, end = unit_after(text, n.end)
        if unit is None and (prefix := _CURRENCY_PREFIX.search(text, max(0, n.start - 4), n.start)):
            unit = _lookup(_PREFIX_UNITS[prefix.group(1)])
        out.append(Quantity(n.value, unit, n.start, end))
    return out


def single_quantity(text: str) -> Quantity | None:
    """The one quantity ``text`` states ("x = 7", "$12.50", "about 15 m/s.", "twelve apples"), else
    None: no number, or several different values."""
    text = _ASSIGNMENT.sub("", clean_latex(text), count=1)
    text = _APPROX.sub("", text, count=1).strip().rstrip(".").strip()
    found = quantities(text)
    if not found:
        return None
    if len(found) > 1 and (combined := _compound(text, found)) is not None:
        return combined
    first = found[0]
    if any(q.value != first.value for q in found[1:]):
        return None
    rest = text[: first.start] + text[first.end :]
    if _has_operator(rest):  # "2 + 3", "3/4 of", "x - 1": an expression, not a quantity
        return None
    return first


_COMPOUND_JOINT = re.compile(r"^\s*+(?:,|and)?\s*+$")
_BASE_UNITS = {_L: "m", _M: "kg", _T: "s"}


def _compound(text: str, found: list[Quantity]) -> Quantity | None:
    """ "1 hour 30 minutes", "5 ft 3 in": consecutive parts of one length, mass or duration, as one."""
    dimension = found[0].dimension
    if dimension not in _BASE_UNITS or any(q.dimension != dimension for q in found):
        return None
    if any(not _COMPOUND_JOINT.match(text[a.end : b.start]) for a, b in zip(found, found[1:])):
        return None
    if text[: found[0].start].strip() or text[found[-1].end :].strip():
        return None
    total = sum(Fraction(_value_in_base(q)).limit_denominator(10**9) for q in found)
    return Quantity(total, _BASE_UNITS[dimension], found[0].start, found[-1].end)


_OPERATOR = re.compile(r"[+*/^=<>\\{}()\[\]|!]|(?<![A-Za-z])-(?![A-Za-z])")


def _has_operator(rest: str) -> bool:
    rest = _CURRENCY_PREFIX.sub("", rest.strip())
    return bool(_OPERATOR.search(rest.replace("$", "")))


def _value_in_base(q: Quantity) -> float:
    return float(q.value) * _LEXICON[q.unit][1] if q.unit else float(q.value)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def rounds_to(answer: Fraction, gold: Fraction, gold_text: str) -> bool:
    """``answer`` rounded to the decimals ``gold`` is written with equals ``gold`` ("3.1416" or 2π vs
    "6.28"): a truth with decimals is a rounded value. Integers are exact ("3.2" is not 3)."""
    m = re.search(r"\.(\d{1,12})(?!\d)", gold_text)
    if m is None or answer == gold:
        return answer == gold
    places = len(m.group(1))
    answer_places = len(str(float(answer)).split(".")[-1])
    scaled = answer * 10**places
    rounded = Fraction(math.floor(scaled + Fraction(1, 2)), 10**places)
    return answer_places > places and rounded == gold


def same_quantity(gold: Quantity, answer: Quantity, gold_text: str = "") -> bool:
    """Whether ``answer`` states ``gold``'s value: units compared when both sides have one (converted
    within a dimension), a percentage equals its number and its fraction ("50%" = 50 = 0.5)."""
    g_pct, a_pct = gold.dimension == "percent", answer.dimension == "percent"
    if gold.unit and answer.unit and not (g_pct or a_pct):
        if gold.dimension != answer.dimension:
            return False
        if gold.unit == answer.unit:
            return gold.value == answer.value or rounds_to(answer.value, gold.value, gold_text)
        return _close(_value_in_base(gold), _value_in_base(answer))
    golds = {gold.value}
    answers = {answer.value}
    if g_pct and not a_pct:
        golds.add(gold.value / 100)
    elif a_pct and not g_pct:
        answers.add(answer.value / 100)
    if golds & answers:
        return True
    return any(rounds_to(a, g, gold_text) for a in answers for g in golds)
