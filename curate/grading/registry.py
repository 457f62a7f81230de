"""Which grader scores which task: canonical graders, task aliases, Orsta verifier names.

Routing (:func:`route`): the task decides. A dataset's verifier hint (Orsta names one per sample)
is used only when the task names no grader: Orsta marks counting and OCR samples
``verifier=mathverify``, and a symbolic math checker lets letters commute ("G4B-7HX" would equal
"B4G-7XH") and reads "3 or 4" as 3. Where task and verifier disagree the task wins and the choice
is logged (once per pair) and returned with every grade. The reasoning tasks (math, chart,
science, puzzle) go to the math grader, which reads the answer by the truth's shape (letter,
yes/no, quantity, words, expression). Neither known: ``UnknownTaskError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from curate.grading import boxes, choice, counting, mathexpr, ocr, text
from curate.grading.extract import FinalAnswer
from curate.grading.logs import warn_once
from curate.grading.verdict import GradeContext, Verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grader:
    name: str
    judge: Callable[[FinalAnswer, str, GradeContext], Verdict]
    """``(final answer, ground truth, context) -> Verdict``"""
    check_truth: Callable[[str], str | None]
    """``ground_truth -> problem`` (None when the grader can use it)"""
    structured_truth: bool = False
    """whether a source's ground truth may be a list/dict (boxes) rather than text or a number"""


GRADERS: dict[str, Grader] = {
    g.name: g
    for g in (
        Grader("math", mathexpr.grade_math, mathexpr.check_math_truth),
        Grader("multiple_choice", choice.grade_multiple_choice, choice.check_multiple_choice_truth),
        Grader("yes_no", choice.grade_yes_no, choice.check_yes_no_truth),
        Grader("counting", counting.grade_counting, counting.check_counting_truth),
        Grader("short_answer", text.grade_short_answer, text.check_short_answer_truth),
        Grader("ocr", ocr.grade_ocr, ocr.check_ocr_truth),
        Grader("grounding", boxes.grade_grounding, boxes.check_boxes_truth, structured_truth=True),
        Grader("detection", boxes.grade_detection, boxes.check_boxes_truth, structured_truth=True),
    )
}

# task name -> grader. Keys are normalised by `_key` (lower case, "-" and " " as "_").
TASK_ALIASES: dict[str, str] = {
    **{name: name for name in GRADERS},
    # the toy corpus
    "color": "short_answer",
    "colour": "short_answer",
    "arithmetic": "math",
    # DifficultySampling abilities (math, ocr, counting as is)
    "cv_detection": "detection",
    "cv_grounding": "grounding",
    # Orsta's reasoning tasks and the benchmarks' styles: the math grader reads them by the truth's
    # shape (detection, grounding, counting, ocr as is)
    "puzzle": "math",
    "science": "math",
    "chart": "math",
    "chartqa": "math",
    "mathvista": "math",
    "geometry": "math",
    # common spellings
    "count": "counting",
    "countbench": "counting",
    "ocrbench": "ocr",
    "multiple_choice_question": "multiple_choice",
    "multichoice": "multiple_choice",
    "mcq": "multiple_choice",
    "choice": "multiple_choice",
    "yesno": "yes_no",
    "yes/no": "yes_no",
    "vqa": "short_answer",
    "rec": "grounding",
    "refcoco": "grounding",
}

# Orsta's `reward_model.verifier` names (the registry of its reward server) -> the grader used when
# the task names none.
VERIFIERS: dict[str, str] = {
    **{name: name for name in GRADERS},
    "mathverify": "math",
    "math_verify": "math",
}


class UnknownTaskError(ValueError):
    """No grader for this task (and verifier): a data or configuration error, not a model error."""


@dataclass(frozen=True)
class Route:
    grader: str
    why: str
    """e.g. "task 'counting' (verifier 'mathverify' overruled)": kept with every grade"""


def _key(name: object) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_") if name is not None else ""


def route(task: str, verifier: str | None = None) -> Route:
    """The grader for ``task`` (and ``verifier``) and why; raises ``UnknownTaskError``."""
    task_grader = TASK_ALIASES.get(_key(task))
    verifier_grader = VERIFIERS.get(_key(verifier)) if verifier is not None and _key(verifier) else None
    if task_grader is not None:
        if verifier_grader is not None and verifier_grader != task_grader:
            warn_once(
                logger,
                f"verifier-overruled:{task}:{verifier}",
                "task %r is graded by %s, not by its verifier %r (the task type wins)",
                task,
                task_grader,
                verifier,
            )
            return Route(task_grader, f"task {task!r} (verifier {verifier!r} overruled)")
        return Route(task_grader, f"task {task!r}")
    if verifier_grader is not None:
        return Route(verifier_grader, f"verifier {verifier!r} (task {task!r} unknown)")
    if verifier is not None and _key(verifier):
        warn_once(logger, f"verifier:{verifier}", "unknown verifier %r for task %r", verifier, task)
    raise UnknownTaskError(
        f"no grader for task {task!r}"
        + (f" with verifier {verifier!r}" if verifier else "")
        + f"; known tasks: {sorted(TASK_ALIASES)}; known verifiers: {sorted(VERIFIERS)}"
    )


def resolve_grader(task: str, verifier: str | None = None) -> str:
    """The canonical grader name for ``task`` (and ``verifier``); raises ``UnknownTaskError``."""
    return route(task, verifier).grader
