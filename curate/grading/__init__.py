"""Grading: the single definition of a correct answer in hardmode.

PISM and CMAB call :func:`grade` to decide whether a sampled answer is correct (δ), and the verl
GRPO reward (``rl/reward.py``) rewards its ``score``, so what counts as correct when measuring
difficulty is exactly what training rewards.

    >>> grade("counting", "<think>…</think><answer>3</answer>", "3")
    GradeResult(score=1.0, correct=True, grader='counting', extracted='3')

Contract:
- ``score`` in [0, 1] is the accuracy reward: continuous for OCR (similarity ratio) and boxes
  (area-weighted IoU), 0/1 for the other graders.
- ``correct`` is δ: ``score == 1`` for binary graders, ``score >= threshold`` for continuous ones
  (``registry.OCR_CORRECT_RATIO``, ``registry.BOX_CORRECT_SCORE``).
- ``grade`` never raises for any response or ground truth (any string in, bounded time, nothing
  evaluated); it raises :class:`UnknownTaskError` only for a task/verifier no grader serves, which
  is a data or configuration error. Readers call :func:`resolve_grader` (and
  :func:`check_ground_truth`) up front to turn such rows into ``status=error`` rows.
- Time: every grader looks at a bounded part of the response (the extracted answer, capped, or the
  last ``extract.TAIL_CHARS`` characters), so a 1 MB response costs what a short one does: micro- to
  milliseconds. Math spends at most ``mathexpr.MATH_TIMEOUT_S`` (2 s) in sympy, in any thread;
  only pathological LaTeX (deeply nested brackets) gets near it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from curate.grading.extract import extract_answer
from curate.grading.format import format_score
from curate.grading.logs import warn_once
from curate.grading.registry import GRADERS, UnknownTaskError, resolve_grader

__all__ = [
    "GRADERS",
    "GradeResult",
    "UnknownTaskError",
    "check_ground_truth",
    "extract_answer",
    "format_score",
    "grade",
    "resolve_grader",
]

logger = logging.getLogger(__name__)

# `extracted` is for audits and logs; longer readings are cut.
MAX_EXTRACTED_CHARS = 1000


@dataclass(frozen=True)
class GradeResult:
    score: float
    """accuracy reward in [0, 1]"""
    correct: bool
    """δ for PISM/CMAB"""
    grader: str
    """canonical grader name"""
    extracted: str | None
    """what the grader read from the response (None: no answer found)"""


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


def grade(task: str, response: str, ground_truth: str, verifier: str | None = None) -> GradeResult:
    """Grade ``response`` against ``ground_truth`` with the grader for ``task``/``verifier``."""
    name = resolve_grader(task, verifier)
    grader = GRADERS[name]
    try:
        score, extracted = grader.score(_as_text(response), _as_text(ground_truth))
        score = float(score)
    except Exception as exc:  # a grader bug must not stop a training run: score 0, say so once
        key = f"grader-error:{name}:{type(exc).__name__}"
        warn_once(logger, key, "grader %s failed (%r); scoring 0", name, exc)
        score, extracted = 0.0, None
    score = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
    if extracted is not None and len(extracted) > MAX_EXTRACTED_CHARS:
        extracted = extracted[:MAX_EXTRACTED_CHARS] + "…"
    return GradeResult(score=score, correct=score >= grader.correct_at, grader=name, extracted=extracted)


def check_ground_truth(task: str, ground_truth: str, verifier: str | None = None) -> str | None:
    """Why the grader for ``task`` cannot use ``ground_truth`` (e.g. a counting truth with no
    integer), or None if it can. Raises ``UnknownTaskError`` like :func:`resolve_grader`."""
    return GRADERS[resolve_grader(task, verifier)].check_truth(_as_text(ground_truth))
