"""verl reward hook: the GRPO reward from the project's graders (``curate.grading``).

Configure (verl 0.9.1 loads it with ``load_extern_object`` and calls it in a reward-loop thread)::

    reward.custom_reward_function.path=pkg://rl.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.format_weight=0.0   # optional, see below

Accuracy is ``curate.grading.grade(...).score``, the same grader whose ``correct`` decided PISM/CMAB
difficulty, so training rewards exactly what difficulty was measured against.

Default weights: ``score = 1.0 · acc + 1.0 · format``. The paper trains GRPO with an accuracy reward
plus a format reward for the ``<think>…</think><answer>…</answer>`` template its system prompt asks
for; ms-swift, which the paper's runs used, sums reward functions with weight 1 each unless told
otherwise. Other set-ups in one override: the released scripts' accuracy-only reward is
``format_weight=0``; Orsta's is ``acc_weight=1/1.1, format_weight=0.1/1.1``. GRPO normalises
advantages within each group, so only the ratio of the weights matters.

Accuracy is the strict judge's 0/1 by default. ``partial_credit=true`` rewards OCR similarity and
mean box IoU instead (``GradeResult.partial``; still 1.0 exactly when correct), the released
plugin's shaping, as a named option. The curation config's ``grading`` keys (``box_iou``,
``answer_box_format``, ``ocr_typo_min_chars``, …) are accepted here too, so a recipe can judge
training exactly as it judged difficulty; ``extra_info["image_size"]`` ([width, height]) lets boxes
in different coordinate conventions be compared.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

from curate.grading import GradeResult, GradingOptions, UnknownTaskError, format_score, grade, resolve_grader
from curate.grading.logs import warn_once

logger = logging.getLogger(__name__)

DEFAULT_ACC_WEIGHT = 1.0
DEFAULT_FORMAT_WEIGHT = 1.0


def _weight(name: str, value: Any) -> float:
    """A reward weight from ``reward_kwargs``: a config mistake fails the first step, naming the key."""
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight):
        key = f"reward.custom_reward_function.reward_kwargs.{name}"
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return weight


_OPTION_KEYS = frozenset(f.name for f in dataclasses.fields(GradingOptions))


@functools.lru_cache(maxsize=64)
def _options(items: tuple[tuple[str, Any], ...]) -> GradingOptions:
    """The grading options from ``reward_kwargs``; a mistake fails the first step, naming the key."""
    try:
        return GradingOptions(**dict(items))
    except (TypeError, ValueError) as err:
        raise ValueError(f"reward.custom_reward_function.reward_kwargs: {err}") from None


def _image_size(extra_info: dict[str, Any]) -> tuple[int, int] | None:
    size = extra_info.get("image_size")
    try:
        width, height = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def grader_route(data_source: Any, extra_info: dict[str, Any]) -> tuple[str, str | None] | None:
    """``(task, verifier)`` for the grader: the task our verl writer stores in ``extra_info["task"]``,
    else verl's ``ability``, else ``data_source``; ``extra_info["verifier"]`` routes like Orsta's
    ``reward_model.verifier``."""
    verifier = extra_info.get("verifier") or None
    for task in (extra_info.get("task"), extra_info.get("ability"), data_source):
        if task:
            try:
                resolve_grader(task, verifier)
                return task, verifier
            except UnknownTaskError:
                continue
    return None


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    acc_weight: float = DEFAULT_ACC_WEIGHT,
    format_weight: float = DEFAULT_FORMAT_WEIGHT,
    partial_credit: bool = False,
    **kwargs: Any,
) -> dict[str, float]:
    """``{"score", "acc", "format"}`` for one response; verl logs every key and rewards ``score``.

    Never raises for any data: an unknown task scores 0 (with one warning per task), and so does a
    failure anywhere in grading. ``kwargs`` takes the grading options and what verl adds
    (``reward_router_address``, ...).
    """
    acc_weight, format_weight = _weight("acc_weight", acc_weight), _weight("format_weight", format_weight)
    if not isinstance(partial_credit, bool):
        raise ValueError(f"reward.custom_reward_function.reward_kwargs.partial_credit must be true or false, "
                         f"got {partial_credit!r}")
    options = _options(tuple(sorted((k, v) for k, v in kwargs.items() if k in _OPTION_KEYS)))
    try:
        fmt = format_score(solution_str)
        info = extra_info if isinstance(extra_info, dict) else {}
        route = grader_route(data_source, info)
        if route is None:
            warn_once(
                logger,
                f"reward-unknown-task:{info.get('task')}:{info.get('ability')}:{data_source}",
                "no grader for data_source=%r task=%r ability=%r verifier=%r: reward 0 for these samples",
                data_source,
                info.get("task"),
                info.get("ability"),
                info.get("verifier"),
            )
            return {"score": 0.0, "acc": 0.0, "format": fmt}
        result: GradeResult = grade(route[0], solution_str, ground_truth, route[1], options=options,
                                    image_size=_image_size(info))
        acc = result.partial if partial_credit else result.score
        return {"score": acc_weight * acc + format_weight * fmt, "acc": acc, "format": fmt}
    except Exception as exc:  # the training job outlives any single bad sample
        warn_once(logger, f"reward-error:{type(exc).__name__}", "reward failed (%r): reward 0", exc)
        return {"score": 0.0, "acc": 0.0, "format": 0.0}
