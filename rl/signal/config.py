"""``hardmode.signal``: the recipe keys of GRPO signal keeping (defaults here, documented in
configs/rl/toy_signal.yaml). Group filtering itself stays verl's: ``algorithm.filter_groups.enable``,
``.metric`` and ``.max_num_gen_batches``; these keys narrow and extend it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from curate.config import ConfigError

__all__ = ["ReplayConfig", "SignalConfig"]


@dataclass
class ReplayConfig:
    """Selective sample replay (R1V2's SSB, VL-Rethinker's SSR)."""

    enable: bool = False
    # Groups kept; the oldest are dropped first.
    capacity: int = 64
    # At most this share of a batch's groups is replayed (the rest is fresh).
    max_share: float = 0.25
    # Steps a group may wait for replay; older groups are dropped (their policy has moved on).
    max_age: int = 8


@dataclass
class SignalConfig:
    """What :class:`rl.signal.buffer.SignalReplayBuffer` does beyond verl's own replay buffer."""

    # [low, high]: with algorithm.filter_groups.enable, keep only groups whose mean filter metric lies
    # in the band (besides differing within the group); null: DAPO's rule alone (0 < #correct < n).
    band: Optional[list[float]] = None
    # Per-response score the curriculum counts as passing: a key of the reward's extra info
    # (rl.reward gives acc, format, score) or "reward" for the reward itself.
    pass_metric: str = "acc"
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def validate(self) -> "SignalConfig":
        if self.band is not None:
            if len(self.band) != 2 or not self.band[0] <= self.band[1]:
                raise ConfigError(
                    f"config key 'hardmode.signal.band': [low, high] with low <= high, got {self.band}"
                )
        replay = self.replay
        if replay.capacity < 1:
            raise ConfigError("config key 'hardmode.signal.replay.capacity': must be at least 1")
        if not 0 < replay.max_share <= 1:
            raise ConfigError("config key 'hardmode.signal.replay.max_share': must be in (0, 1]")
        if replay.max_age < 1:
            raise ConfigError("config key 'hardmode.signal.replay.max_age': must be at least 1 step")
        return self
