"""The study's statistics: means with Student-t intervals over seeds, and arm-vs-control differences.

Seeds are the unit of replication: a seed changes the random subset, the data order and the rollouts,
so the spread over seeds is the noise a conclusion must beat. Arms run the same seeds, and seed ``s``
of every arm shares its evaluation set and its random-number streams' labels, so an arm is compared
with the control seed by seed (a paired t interval on the differences), which is tighter than
comparing two independent means when seeds move both arms alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

__all__ = ["Comparison", "Interval", "compare", "interval", "verdict_sentence"]


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a two-sided ``level`` Student-t interval (``half`` = its half-width)."""

    mean: float
    half: Optional[float]  # None with a single value: no spread to measure
    n: int
    level: float = 0.95

    @property
    def low(self) -> Optional[float]:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> Optional[float]:
        return None if self.half is None else self.mean + self.half

    def to_dict(self) -> dict:
        return {**asdict(self), "low": self.low, "high": self.high}

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        if self.half is None:
            return f"{self.mean * scale:.{digits}f} (n={self.n})"
        return f"{self.mean * scale:.{digits}f} ± {self.half * scale:.{digits}f}"


def interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · s / √n (s: the sample standard deviation, n - 1 denominator)."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, None, 1, level)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, float(t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n), n, level)


@dataclass(frozen=True)
class Comparison:
    """An arm minus the control, paired by seed."""

    arm: str
    control: str
    difference: Interval
    seeds: tuple[int, ...]

    @property
    def verdict(self) -> str:
        """better / worse: the interval excludes 0; within noise: it does not; unknown: one seed."""
        d = self.difference
        if d.half is None:
            return "unknown"
        if d.low > 0:
            return "better"
        if d.high < 0:
            return "worse"
        return "within noise"

    def to_dict(self) -> dict:
        return {"arm": self.arm, "control": self.control, "difference": self.difference.to_dict(),
                "seeds": list(self.seeds), "verdict": self.verdict}


def compare(arm: str, control: str, by_seed: Mapping[str, Mapping[int, float]],
            level: float = 0.95) -> Optional[Comparison]:
    """``arm`` − ``control`` over the seeds both have results for (None when they share none)."""
    seeds = tuple(sorted(set(by_seed.get(arm, {})) & set(by_seed.get(control, {}))))
    if not seeds:
        return None
    diffs = [by_seed[arm][s] - by_seed[control][s] for s in seeds]
    return Comparison(arm, control, interval(diffs, level), seeds)


def verdict_sentence(c: Comparison, what: str = "held-out accuracy") -> str:
    d = c.difference
    span = (f"{d.mean * 100:+.1f} points, 95% interval [{d.low * 100:+.1f}, {d.high * 100:+.1f}] over "
            f"{d.n} paired seeds" if d.half is not None else f"{d.mean * 100:+.1f} points on one seed")
    words = {
        "better": f"beats {c.control}: the difference is larger than the seed noise",
        "worse": f"is worse than {c.control}: the difference is larger than the seed noise",
        "within noise": f"does not differ from {c.control} beyond the seed noise",
        "unknown": f"cannot be compared with {c.control} on one seed (no noise estimate)",
    }
    return f"**{c.arm}** {words[c.verdict]} ({what} {span})."
