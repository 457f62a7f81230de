"""The replay store: groups that carried a learning signal, kept to refill batches that lose theirs.

Skywork R1V2's Selective Sample Buffer and VL-Rethinker's Selective Sample Replay keep rollouts with
non-zero advantages and put them back into batches whose fresh groups carry none, drawn with
probability proportional to |advantage|. This is the bookkeeping only (which groups, how old, which
to draw); the trajectories themselves stay in TransferQueue (:mod:`rl.signal.buffer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ReplayItem", "ReplayStore"]


@dataclass
class ReplayItem:
    """One stored group: its trajectory keys and tags, its replay weight and the step it was made at."""

    uid: str
    keys: list[str]
    tags: list[dict[str, Any]]
    weight: float  # mean |advantage| of the group
    step: int  # the global step its responses were generated for
    replays: int = 0

    def age(self, step: int) -> int:
        return step - self.step


@dataclass
class ReplayStore:
    """At most ``capacity`` groups no older than ``max_age`` steps; draws ∝ weight, seeded."""

    capacity: int
    max_age: int
    seed: int = 0
    items: dict[str, ReplayItem] = field(default_factory=dict)  # uid -> item, oldest first

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: ReplayItem) -> list[ReplayItem]:
        """Store ``item``; returns the items pushed out (oldest first) to stay within ``capacity``."""
        self.items.pop(item.uid, None)
        self.items[item.uid] = item
        dropped = []
        while len(self.items) > self.capacity:
            dropped.append(self.items.pop(next(iter(self.items))))
        return dropped

    def expire(self, step: int) -> list[ReplayItem]:
        """Remove and return the items older than ``max_age`` at ``step``."""
        old = [item for item in self.items.values() if item.age(step) > self.max_age]
        for item in old:
            del self.items[item.uid]
        return old

    def draw(self, count: int, exclude: Sequence[str] = ()) -> list[ReplayItem]:
        """Up to ``count`` distinct items, each drawn with probability ∝ its weight (no replacement)."""
        pool = [item for uid, item in self.items.items() if uid not in set(exclude) and item.weight > 0]
        count = min(count, len(pool))
        if count <= 0:
            return []
        weights = np.array([item.weight for item in pool], dtype=np.float64)
        chosen = self.rng.choice(len(pool), size=count, replace=False, p=weights / weights.sum())
        drawn = [pool[i] for i in sorted(chosen)]
        for item in drawn:
            item.replays += 1
        return drawn
