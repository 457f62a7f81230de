"""Which grader scores which task: canonical graders, task aliases, Orsta verifier names.

Routing (``resolve_grader``): a known ``verifier`` overrides the task, as in Orsta where every
sample names its verifier; Orsta's verifiers are coarse (``detection`` scores grounding too), so a
task that names a grader of the verifier's family refines it. An unknown verifier is ignored (with
a warning) and the task decides; when neither is known, ``UnknownTaskError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from curate.grading import boxes, choice, counting, mathexpr, ocr, text
from curate.grading.logs import warn_once

logger = logging.getLogger(__name__)

# The `correct` thresholds of the continuous graders, in one place. `correct` is δ for PISM/CMAB.
OCR_CORRECT_RATIO = 0.5  # the released plugin's fuzzy-match threshold
BOX_CORRECT_SCORE = 0.5  # the usual IoU >= 0.5 criterion (AP50; Orsta's IoU threshold)


@dataclass(frozen=True)
class Grader:
    name: str
    score: Callable[[str, str], tuple[float, str | None]]
    """``(response, ground_truth) -> (score in [0, 1], what was read from the response)``"""
    check_truth: Callable[[str], str | None]
    """``ground_truth -> problem`` (None when the grader can use it)"""
    correct_at: float = 1.0
    """smallest score that counts as correct; 1.0 for binary graders"""


GRADERS: dict[str, Grader] = {
    g.name: g
    for g in (
        Grader("math", mathexpr.grade_math, mathexpr.check_math_truth),
        Grader("multiple_choice", choice.grade_multiple_choice, choice.check_multiple_choice_truth),
        Grader("yes_no", choice.grade_yes_no, choice.check_yes_no_truth),
        Grader("counting", counting.grade_counting, counting.check_counting_truth),
        Grader("short_answer", text.grade_short_answer, text.check_short_answer_truth),
        Grader("ocr", ocr.grade_ocr, ocr.check_ocr_truth, OCR_CORRECT_RATIO),
        Grader("grounding", boxes.grade_grounding, boxes.check_boxes_truth, BOX_CORRECT_SCORE),
        Grader("detection", boxes.grade_detection, boxes.check_boxes_truth, BOX_CORRECT_SCORE),
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
    # Orsta's reasoning tasks: answers are numbers, formulas, option letters or words, which the
    # math grader compares in that order (detection, grounding, counting, ocr as is)
    "puzzle": "math",
    "science": "math",
    "chart": "math",
    # common spellings
    "count": "counting",
    "multiple_choice_question": "multiple_choice",
    "multichoice": "multiple_choice",
    "mcq": "multiple_choice",
    "choice": "multiple_choice",
    "yesno": "yes_no",
    "yes/no": "yes_no",
    "vqa": "short_answer",
    "rec": "grounding",
}

# Orsta's `reward_model.verifier` names (the registry of its reward server) -> graders of the
# verifier's family, its default first.
VERIFIER_FAMILIES: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in GRADERS},
    "mathverify": ("math",),
    "math_verify": ("math",),
    "detection": ("detection", "grounding"),
}


class UnknownTaskError(ValueError):
    """No grader for this task (and verifier): a data or configuration error, not a model error."""


def _key(name: object) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_") if name is not None else ""


def resolve_grader(task: str, verifier: str | None = None) -> str:
    """The canonical grader name for ``task`` (and ``verifier``); raises ``UnknownTaskError``."""
    task_grader = TASK_ALIASES.get(_key(task))
    if verifier is not None and _key(verifier):
        family = VERIFIER_FAMILIES.get(_key(verifier))
        if family is not None:
            return task_grader if task_grader in family else family[0]
        warn_once(logger, f"verifier:{verifier}", "unknown verifier %r: grading by task %r", verifier, task)
    if task_grader is None:
        raise UnknownTaskError(
            f"no grader for task {task!r}"
            + (f" with verifier {verifier!r}" if verifier else "")
            + f"; known tasks: {sorted(TASK_ALIASES)}; known verifiers: {sorted(VERIFIER_FAMILIES)}"
        )
    return task_grader
