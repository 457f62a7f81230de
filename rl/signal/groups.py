"""What one finished GRPO group tells us: does it carry a learning signal, and how much.

GRPO's advantage of response ``i`` is ``(r_i - mean(r)) / (std(r) + eps)`` within its prompt's group
(verl ``compute_grpo_outcome_advantage``): a group whose rewards are all equal contributes zero
advantage, so nothing to the policy gradient. Everything in :mod:`rl.signal` decides from
:class:`GroupOutcome`: the group filter (DAPO's rule and its band-pass form), the replay weights
(∝ mean |advantage|, Skywork R1V2's Selective Sample Buffer, VL-Rethinker's SSR) and the curriculum's
pass-rate observations. Pure functions: the verl glue lives in :mod:`rl.signal.buffer`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["GroupOutcome", "FilterVerdicts", "effective_ratio", "keeps"]

# verl's GRPO epsilon in the advantage's denominator.
GRPO_EPS = 1e-6


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class GroupOutcome:
    """The scored responses of one prompt (one GRPO group)."""

    uid: str
    step: int  # the global step the prompt was drawn for
    rewards: tuple[float, ...]  # each response's reward (verl's rm_scores): what the advantage uses
    metric: tuple[float, ...]  # each response's filter metric (algorithm.filter_groups.metric)
    passes: tuple[float, ...]  # each response's pass metric (e.g. acc): the curriculum's observation
    index: Optional[int] = None  # the prompt's dataset row (extra_info.index)

    @property
    def has_signal(self) -> bool:
        """Any two rewards differ: some response gets a non-zero advantage."""
        return len(set(self.rewards)) > 1

    def mean_abs_advantage(self, norm_by_std: bool = True) -> float:
        """Mean |advantage| over the group's responses, computed as verl's GRPO does."""
        n = len(self.rewards)
        mean = _mean(self.rewards)
        if n < 2:  # verl: a group of one has mean 0 and std 1
            return abs(self.rewards[0]) if n else 0.0
        std = math.sqrt(sum((r - mean) ** 2 for r in self.rewards) / (n - 1))  # torch.std: unbiased
        scale = std + GRPO_EPS if norm_by_std else 1.0
        return _mean([abs(r - mean) / scale for r in self.rewards])

    @property
    def pass_rate(self) -> float:
        return _mean(self.passes) if self.passes else 0.0


def keeps(group: GroupOutcome, band: Optional[Sequence[float]] = None) -> bool:
    """DAPO's rule: the filter metric differs within the group; with a band ``[low, high]``, its mean
    must also lie in the band (a band-pass on the group's difficulty)."""
    if len(set(group.metric)) < 2:
        return False
    if band is None:
        return True
    low, high = band
    return low <= _mean(group.metric) <= high


@dataclass
class FilterVerdicts:
    """Why groups were dropped: the numbers a "cannot fill the batch" error reports."""

    kept: int = 0
    identical: Counter = field(default_factory=Counter)  # shared metric value -> groups
    below_band: int = 0
    above_band: int = 0

    @classmethod
    def of(cls, groups: Iterable[GroupOutcome], band: Optional[Sequence[float]]) -> "FilterVerdicts":
        verdicts = cls()
        for group in groups:
            if keeps(group, band):
                verdicts.kept += 1
            elif len(set(group.metric)) < 2:
                verdicts.identical[group.metric[0] if group.metric else math.nan] += 1
            elif _mean(group.metric) < band[0]:  # type: ignore[index]
                verdicts.below_band += 1
            else:
                verdicts.above_band += 1
        return verdicts

    def describe(self, metric: str) -> str:
        """e.g. ``3 kept; 9 with every response at acc=1.0, 2 at acc=0.0; 1 below the band``."""
        parts = [f"{self.kept} kept"]
        parts += [f"{n} with every response at {metric}={v:g}" for v, n in sorted(self.identical.items())]
        if self.below_band:
            parts.append(f"{self.below_band} below the band")
        if self.above_band:
            parts.append(f"{self.above_band} above the band")
        return "; ".join(parts)


def effective_ratio(groups: Sequence[GroupOutcome]) -> float:
    """Share of groups with a non-zero advantage (Skywork R1V2's effective samples); nan if none."""
    return sum(g.has_signal for g in groups) / len(groups) if groups else math.nan
