"""A curriculum that learns during training: draw the prompts whose estimated pass rate is in a band.

Every row of the training set has a Beta posterior over its pass rate. The prior comes from the
curation (``extra_info[key]``, a PISM or CMAB bucket: ``prior_means`` maps a bucket to a prior pass
rate worth ``prior_strength`` responses). Every GRPO group the trainer generates is an observation:
:class:`rl.signal.buffer.SignalReplayBuffer` hands each finished group's pass metric to
:func:`observe`, which updates the row's posterior. Each draw picks, uniformly among the rows not yet
drawn this epoch, one whose posterior mean lies in ``band``; when none is left, the row nearest the
band. So prompts the policy has outgrown (or cannot yet solve) wait while others carry signal.

Hooked into verl's dataloader through ``data.sampler`` (:mod:`rl.sampler`)::

    +data.sampler.class_path=pkg://rl.signal.curriculum +data.sampler.class_name=PassRateCurriculum
    +data.sampler.band=[0.2,0.8] +data.sampler.key=pism_bucket

The posteriors, the epoch and the position within it are part of verl's dataloader checkpoint
(``data.pt``), so a resumed run continues with what it had learnt.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sized

import numpy as np
from torch.utils.data import Sampler

from curate.config import ConfigError
from rl.sampler import sampler_config

__all__ = ["PassRateCurriculum", "PassRateCurriculumConfig", "observe", "summaries"]

log = logging.getLogger(__name__)

_LIVE: "weakref.WeakSet[PassRateCurriculum]" = weakref.WeakSet()


@dataclass
class PassRateCurriculumConfig:
    """``data.sampler.*`` keys of :class:`PassRateCurriculum`."""

    # Draw rows whose estimated pass rate lies in [low, high] (GRPO learns from 0 < p < 1).
    band: list[float] = field(default_factory=lambda: [0.2, 0.8])
    # The extra_info key holding each row's curation bucket (the prior); cmab_bucket for CMAB's.
    key: str = "pism_bucket"
    # Prior pass rate per bucket; rows of other buckets (or none) get default_mean.
    prior_means: dict[str, float] = field(
        default_factory=lambda: {"easy": 0.9, "medium": 0.6, "hard": 0.3, "unsolved": 0.05}
    )
    default_mean: float = 0.5
    # How many responses the prior is worth: small = the rollouts overrule it quickly.
    prior_strength: float = 2.0
    # Prompts drawn per epoch (null: the dataset's length).
    num_samples: Optional[int] = None
    # null: data.seed (0 if that is null too).
    seed: Optional[int] = None

    def validate(self) -> "PassRateCurriculumConfig":
        if len(self.band) != 2 or not 0 <= self.band[0] <= self.band[1] <= 1:
            raise ConfigError(f"config key 'data.sampler.band': [low, high] within [0, 1], got {self.band}")
        means = [*self.prior_means.values(), self.default_mean]
        if any(not 0 <= m <= 1 for m in means):
            raise ConfigError("config key 'data.sampler.prior_means': pass rates must lie in [0, 1]")
        if self.prior_strength <= 0:
            raise ConfigError("config key 'data.sampler.prior_strength': must be positive")
        if self.num_samples is not None and self.num_samples <= 0:
            raise ConfigError("config key 'data.sampler.num_samples': must be positive or null")
        return self


def _row_keys(data_source: Any) -> tuple[list[Optional[dict]], list[Any]]:
    frame = getattr(data_source, "dataframe", None)
    if frame is None or "extra_info" not in getattr(frame, "column_names", ()):
        raise TypeError("PassRateCurriculum needs verl's RLHFDataset (or a subclass): rows with extra_info")
    infos = list(frame["extra_info"])
    return infos, [_identity(info) for info in infos]


def _identity(info: Optional[dict]) -> Any:
    """A row's identity in rollouts: ``extra_info.id`` (curate's writer), else ``extra_info.index``."""
    info = info or {}
    return info.get("id") if info.get("id") is not None else info.get("index")


class PassRateCurriculum(Sampler[int]):
    """Pass-rate band sampler over a verl RL dataset, updated from the trainer's rollouts."""

    def __init__(self, data_source: Sized, data_config: Any = None):
        self.config: PassRateCurriculumConfig = sampler_config(
            PassRateCurriculumConfig, data_config
        ).validate()
        infos, identities = _row_keys(data_source)
        self.row_of: dict[Any, int] = {}
        for row, identity in enumerate(identities):
            if identity is not None:
                self.row_of.setdefault(identity, row)
        prior = np.array(
            [
                self.config.prior_means.get(str((i or {}).get(self.config.key)), self.config.default_mean)
                for i in infos
            ],
            dtype=np.float64,
        )
        self.prior_passes = prior * self.config.prior_strength
        self.prior_fails = (1 - prior) * self.config.prior_strength
        self.passes = np.zeros(len(infos))
        self.fails = np.zeros(len(infos))
        self.next_epoch = 0
        self.unmatched = 0  # observations of rows this dataset does not hold
        workers = int((data_config or {}).get("dataloader_num_workers") or 0)
        if workers:
            log.warning(
                "PassRateCurriculum: data.dataloader_num_workers=%d prefetches %d batches, drawn from "
                "estimates that many steps old (rl train sets 0 unless told otherwise)",
                workers,
                2 * workers,
            )
        _LIVE.add(self)
        log.info(
            "PassRateCurriculum: %d rows, band %s, prior from extra_info.%s",
            len(infos),
            self.config.band,
            self.config.key,
        )

    def __len__(self) -> int:
        return self.config.num_samples or len(self.passes)

    def estimates(self) -> np.ndarray:
        """Each row's posterior mean pass rate."""
        a, b = self.prior_passes + self.passes, self.prior_fails + self.fails
        return a / (a + b)

    def observe(self, info: Optional[dict], passes: list[float]) -> bool:
        """Count one group's responses (pass metric in [0, 1] each) for its row; False if not ours."""
        row = self.row_of.get(_identity(info))
        if row is None:
            self.unmatched += 1
            return False
        clipped = np.clip(np.asarray(passes, dtype=np.float64), 0.0, 1.0)
        self.passes[row] += clipped.sum()
        self.fails[row] += len(clipped) - clipped.sum()
        return True

    def in_band(self, estimates: np.ndarray) -> np.ndarray:
        low, high = self.config.band
        return (estimates >= low) & (estimates <= high)

    def pick(self, available: np.ndarray, rng: np.random.Generator) -> int:
        """One row among ``available`` (bool mask): in the band if any, else nearest the band."""
        est = self.estimates()
        low, high = self.config.band
        distance = np.maximum(low - est, 0) + np.maximum(est - high, 0)
        distance[~available] = np.inf
        nearest = np.flatnonzero(distance == distance.min())
        return int(rng.choice(nearest))

    def summary(self) -> dict[str, float]:
        est = self.estimates()
        observed = (self.passes + self.fails) > 0
        return {
            "curriculum/pass_rate_mean": float(est.mean()),
            "curriculum/pass_rate_observed_mean": float(est[observed].mean())
            if observed.any()
            else float("nan"),
            "curriculum/in_band_share": float(self.in_band(est).mean()),
            "curriculum/observed_rows": int(observed.sum()),
            "curriculum/unmatched_groups": self.unmatched,
        }

    def __iter__(self) -> Iterator[int]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return _CurriculumEpoch(self, epoch)

    # torchdata's StatefulDataLoader saves these with the dataloader (verl's data.pt).
    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch, "passes": self.passes.tolist(), "fails": self.fails.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_epoch = int(state["next_epoch"])
        self.passes = np.asarray(state["passes"], dtype=np.float64)
        self.fails = np.asarray(state["fails"], dtype=np.float64)


class _CurriculumEpoch(Iterator[int]):
    """One epoch's draws, each made when verl asks for it (so it sees the latest estimates)."""

    def __init__(self, sampler: PassRateCurriculum, epoch: int):
        self.sampler, self.epoch = sampler, epoch
        seed = sampler.config.seed or 0
        self.rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch]))
        self.drawn: list[int] = []

    def __iter__(self) -> "_CurriculumEpoch":
        return self

    def __next__(self) -> int:
        rows = len(self.sampler.passes)
        if len(self.drawn) >= len(self.sampler):
            raise StopIteration
        available = np.ones(rows, dtype=bool)
        # Without replacement within an epoch (a num_samples above the row count starts over).
        available[self.drawn[len(self.drawn) - len(self.drawn) % rows :]] = False
        row = self.sampler.pick(available, self.rng)
        self.drawn.append(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "drawn": list(self.drawn), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.drawn = int(state["epoch"]), [int(i) for i in state["drawn"]]
        self.rng.bit_generator.state = state["rng"]
        self.sampler.next_epoch = self.epoch + 1


def observe(info: Optional[dict], passes: list[float]) -> None:
    """Hand one finished group to every live curriculum of this process (verl's trainer process)."""
    for curriculum in list(_LIVE):
        curriculum.observe(info, passes)


def summaries() -> dict[str, float]:
    """The live curricula's metrics (one curriculum per trainer; empty when none)."""
    out: dict[str, float] = {}
    for curriculum in list(_LIVE):
        out.update(curriculum.summary())
    return out
