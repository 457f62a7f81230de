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
"""

from __future__ import annotations

import logging
import math
from typing import Any

from curate.grading import GradeResult, UnknownTaskError, format_score, grade, resolve_grader
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
    **kwargs: Any,
) -> dict[str, float]:
    """``{"score", "acc", "format"}`` for one response; verl logs every key and rewards ``score``.

    Never raises for any data: an unknown task scores 0 (with one warning per task), and so does a
    failure anywhere in grading. ``kwargs`` takes what verl adds (``reward_router_address``, ...).
    """
    acc_weight, format_weight = _weight("acc_weight", acc_weight), _weight("format_weight", format_weight)
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
        result: GradeResult = grade(route[0], solution_str, ground_truth, route[1])
        return {"score": acc_weight * result.score + format_weight * fmt, "acc": result.score, "format": fmt}
    except Exception as exc:  # the training job outlives any single bad sample
        warn_once(logger, f"reward-error:{type(exc).__name__}", "reward failed (%r): reward 0", exc)
        return {"score": 0.0, "acc": 0.0, "format": 0.0}
