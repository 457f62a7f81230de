"""Grading: the single definition of a correct answer in hardmode.

PISM and CMAB call :func:`grade` to decide whether a sampled answer is correct (δ), and the verl
GRPO reward (``rl/reward.py``) rewards its ``score``, so what counts as correct when measuring
difficulty is exactly what training rewards.

    >>> grade("counting", "<think>…</think><answer>3</answer>", "3").correct
    True

Contract:
- ``correct`` is a strict, fair judge's verdict on the final committed answer (``extract.py``):
  equivalent values with or without units, wrong units wrong, hedges and several answers wrong,
  OCR exact up to case/whitespace/punctuation, boxes matched one to one at IoU >= 0.5.
- ``score`` is ``float(correct)``: the accuracy reward. ``partial`` in [0, 1] is the continuous
  measure beside it (OCR similarity, mean IoU; ``float(correct)`` for exact graders), a reward option
  of its own (``rl/reward.py``'s ``partial_credit``), never ``correct``.
- ``grader`` names the grader that decided and ``route`` why it was chosen (the task type wins
  over a dataset's verifier hint; reasoning tasks go by the truth's shape).
- ``grade`` never raises for any response or ground truth (any string in, bounded time, nothing
  evaluated); it raises :class:`UnknownTaskError` only for a task/verifier no grader serves, which
  is a data or configuration error. Readers call :func:`resolve_grader` (and
  :func:`check_ground_truth`) up front to turn such rows into ``status=error`` rows.
- Time: a grade returns within ``GRADE_TIME_LIMIT_S``, in any thread. Every grader looks at a
  bounded part of the response (the committed answer, capped, or the last ``extract.TAIL_CHARS``
  characters) with patterns linear in it, so a 1 MB response costs what a short one does: micro- to
  milliseconds. Math gives sympy what is left of the limit, at most ``mathexpr.MATH_TIMEOUT_S``
  (``deadline.py`` interrupts it in whatever thread it runs), then compares numbers. The first math
  grade of a process also imports sympy, inside the limit (``warm_up`` does it ahead).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from curate.grading.deadline import time_limit
from curate.grading.extract import extract_answer, final_answer
from curate.grading.format import format_score
from curate.grading.logs import warn_once
from curate.grading.registry import GRADERS, UnknownTaskError, resolve_grader, route
from curate.grading.verdict import GradeContext, GradingOptions

__all__ = [
    "GRADE_TIME_LIMIT_S",
    "GRADERS",
    "GradeResult",
    "GradingOptions",
    "UnknownTaskError",
    "check_ground_truth",
    "describe_grader",
    "extract_answer",
    "format_score",
    "grade",
    "resolve_grader",
    "warm_up",
]

logger = logging.getLogger(__name__)

# `extracted` is for audits and logs; longer readings are cut.
MAX_EXTRACTED_CHARS = 1000
# The most one grade takes, wall clock, in any thread (see the contract above).
GRADE_TIME_LIMIT_S = 2.0


@dataclass(frozen=True)
class GradeResult:
    score: float
    """accuracy reward: 1.0 if correct else 0.0"""
    correct: bool
    """δ for PISM/CMAB"""
    grader: str
    """the grader that decided"""
    extracted: str | None
    """what the grader read from the response (None: no answer found)"""
    partial: float = 0.0
    """partial credit in [0, 1] (OCR similarity, mean IoU, each measured as such: a correct box at
    IoU 0.6 has 0.6); equals ``score`` for exact graders"""
    route: str = ""
    """why this grader: the task, or the verifier when the task names none"""


_DEFAULT_CONTEXT = GradeContext()


def _as_text(value: object) -> str:
    """Ground truths arrive as str, numbers, lists of boxes or numpy arrays (verl): all as text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        value = value.tolist()
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def grade(
    task: str,
    response: str,
    ground_truth: str,
    verifier: str | None = None,
    *,
    options: GradingOptions | None = None,
    image_size: tuple[int, int] | None = None,
) -> GradeResult:
    """Grade ``response`` against ``ground_truth`` with the grader for ``task``/``verifier``.

    ``options`` tune the strict judge (OCR typo budget, box IoU and coordinate conventions);
    ``image_size`` (width, height) lets boxes in different conventions be compared.
    """
    chosen = route(task, verifier)
    ctx = _DEFAULT_CONTEXT if options is None and image_size is None else GradeContext(options or GradingOptions(), image_size)
    try:
        with time_limit(GRADE_TIME_LIMIT_S):
            answer = final_answer(_as_text(response))
            verdict = GRADERS[chosen.grader].judge(answer, _as_text(ground_truth), ctx)
        correct, partial, extracted = bool(verdict.correct), float(verdict.partial), verdict.extracted
        grader = verdict.grader or chosen.grader
    except Exception as exc:  # a grader bug must not stop a training run: score 0, say so once
        key = f"grader-error:{chosen.grader}:{type(exc).__name__}"
        warn_once(logger, key, "grader %s failed (%r); scoring 0", chosen.grader, exc)
        correct, partial, extracted, grader = False, 0.0, None, chosen.grader
    partial = min(1.0, max(0.0, partial)) if math.isfinite(partial) else 0.0
    if extracted is not None and len(extracted) > MAX_EXTRACTED_CHARS:
        extracted = extracted[:MAX_EXTRACTED_CHARS] + "…"
    return GradeResult(float(correct), correct, grader, extracted, partial, chosen.why)


def warm_up() -> None:
    """Import and exercise sympy and math-verify now (about a second), so that the first math grade
    of a worker does not spend its time limit on imports."""
    from curate.grading.mathexpr import warm_up as warm_up_math

    warm_up_math()


def describe_grader(task: str, ground_truth: object, verifier: str | None = None) -> str:
    """Which grader judges this row's answers and why, for the run's output ("math, by the truth's
    shape: quantity; task 'chart'"). Raises ``UnknownTaskError`` like :func:`resolve_grader`."""
    chosen = route(task, verifier)
    if chosen.grader != "math":
        return f"{chosen.grader}; {chosen.why}"
    from curate.grading.extract import answer_text
    from curate.grading.mathexpr import truth_shape

    return f"math, by the truth's shape: {truth_shape(answer_text(_as_text(ground_truth)))}; {chosen.why}"


def check_ground_truth(task: str, ground_truth: str, verifier: str | None = None) -> str | None:
    """Why the grader for ``task`` cannot use ``ground_truth`` (e.g. a counting truth with no
    integer), or None if it can. Raises ``UnknownTaskError`` like :func:`resolve_grader`."""
    return GRADERS[resolve_grader(task, verifier)].check_truth(_as_text(ground_truth))
