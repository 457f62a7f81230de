"""Difficulty-aware prompt order for verl's GRPO dataloader, read from each row's ``extra_info``.

``python -m curate select`` writes the difficulty of every exported sample into verl's ``extra_info``
(``pism_bucket``, ``cmab_bucket``, ``pism_lambda_star``, ``cmab_rho``). :class:`DifficultySampler`
turns that into the order in which verl draws prompts:

- ``mode=curriculum``: every epoch visits every prompt once, buckets in ``order`` (easy first by
  default), shuffled within a bucket; prompts whose bucket is not listed come last.
- ``mode=weighted``: every epoch draws ``num_samples`` prompts with replacement, each with probability
  proportional to its bucket's weight (a fixed bucket mix; weight 0 leaves a bucket out).

Both are reproducible: epoch ``e`` is a pure function of (seed, e), and the sampler's position is part
of verl's dataloader checkpoint (``data.pt``), so a resumed run continues the same sequence.

Hooking it into verl 0.9.1
--------------------------
verl 0.9.1 dropped the ``data.sampler.class_path`` / ``class_name`` keys of verl 0.4–0.8
(``verl.trainer.ppo.utils.create_rl_sampler`` only builds a random or sequential sampler, and no trainer
calls a curriculum sampler's ``update``). Imported through verl's external-module hook, this module
restores those keys: ``create_rl_sampler`` then builds ``class_name`` from ``class_path`` with the old
constructor signature ``(data_source, data_config)`` and falls back to verl's own otherwise::

    VERL_USE_EXTERNAL_MODULES=rl.sampler            # with rl.cpu.plugin on CPU: comma-separated
    +data.sampler.class_path=pkg://rl.sampler +data.sampler.class_name=DifficultySampler
    +data.sampler.mode=curriculum +data.sampler.key=pism_bucket

The variable must reach verl's TaskRunner, a Ray actor, which builds the dataloader: ``python -m rl
train`` sets it there (with the modules every run needs) whenever ``data.sampler.class_path`` is given;
``tests/test_signal_grpo.py`` runs it (verl's first batch is the sampler's). The sampler's
own keys sit beside ``class_path`` under ``data.sampler`` (:class:`DifficultySamplerConfig`); the seed
defaults to ``data.seed``. ``data.shuffle`` is ignored when a sampler is given.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sized

import numpy as np
from torch.utils.data import Sampler

from curate.config import ConfigError

__all__ = ["DifficultySampler", "DifficultySamplerConfig", "install", "sampler_config"]

log = logging.getLogger(__name__)

# data.sampler keys that belong to the hook, not to the sampler's own config.
_HOOK_KEYS = ("class_path", "class_name")
# Modules of verl 0.9.1 that bind create_rl_sampler by name when imported.
_CALLERS = ("verl.trainer.ppo.v1.trainer_base", "verl.trainer.main_ppo_v0", "verl.trainer.ppo.ray_trainer")
# Seed words per mode, so the two modes never share a random stream.
_MODE_WORD = {
    m: int.from_bytes(hashlib.blake2b(m.encode(), digest_size=4).digest(), "little")
    for m in ("curriculum", "weighted")
}


@dataclass
class DifficultySamplerConfig:
    """``data.sampler.*`` keys of :class:`DifficultySampler`."""

    # curriculum | weighted
    mode: str = "curriculum"
    # The extra_info key holding each row's bucket (cmab_bucket for CMAB's).
    key: str = "pism_bucket"
    # curriculum: buckets in visiting order; rows of other buckets (or none) come last.
    order: list[str] = field(default_factory=lambda: ["easy", "medium", "hard", "unsolved"])
    # weighted: relative weight per bucket, e.g. {hard: 2, medium: 2, easy: 1, unsolved: 0}; rows of
    # buckets not listed (or without a bucket) get default_weight.
    weights: dict[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    # weighted: prompts drawn per epoch (null: the dataset's length).
    num_samples: Optional[int] = None
    # null: data.seed (0 if that is null too).
    seed: Optional[int] = None

    def validate(self) -> "DifficultySamplerConfig":
        if self.mode not in ("curriculum", "weighted"):
            raise ConfigError(
                f"config key 'data.sampler.mode': {self.mode!r} is not one of ['curriculum', 'weighted']"
            )
        if any(w < 0 for w in self.weights.values()) or self.default_weight < 0:
            raise ConfigError("config key 'data.sampler.weights': weights must be >= 0")
        if self.num_samples is not None and self.num_samples <= 0:
            raise ConfigError("config key 'data.sampler.num_samples': must be positive or null")
        return self


def sampler_config(schema: type, data_config: Any) -> Any:
    """``data.sampler.*`` (less the hook's own keys) typed by ``schema``, a dataclass with a ``seed``
    key; an unset seed becomes ``data.seed``. A mistake fails naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw = data_config.get("sampler") if data_config is not None else None
    given = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw or {})
    given = {k: v for k, v in given.items() if k not in _HOOK_KEYS}
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), given))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"config key 'data.sampler.{key}': {str(err).splitlines()[0]}") from None
    if cfg.seed is None:
        cfg.seed = int(data_config.get("seed") or 0) if data_config is not None else 0
    return cfg


def bucket_labels(data_source: Any, key: str) -> list[Optional[str]]:
    """Each row's ``extra_info[key]`` (None where absent), read without decoding images.

    verl's ``RLHFDataset`` keeps its rows (after the overlong-prompt filter) in ``dataframe``, a
    ``datasets.Dataset``; sampler index ``i`` is its row ``i``.
    """
    frame = getattr(data_source, "dataframe", None)
    if frame is None or "extra_info" not in getattr(frame, "column_names", ()):
        raise TypeError("DifficultySampler needs verl's RLHFDataset (or a subclass): rows with extra_info")
    labels = [(info or {}).get(key) for info in frame["extra_info"]]
    if labels and all(v is None for v in labels):
        raise ConfigError(
            f"config key 'data.sampler.key': no row has extra_info[{key!r}] "
            "(export with python -m curate select to carry the buckets)"
        )
    return [None if v is None else str(v) for v in labels]


class DifficultySampler(Sampler[int]):
    """Curriculum order or bucket-weighted draws over a verl RL dataset (see the module docstring).

    The constructor signature is verl's sampler contract (``AbstractSampler`` of verl 0.4–0.8).
    """

    def __init__(self, data_source: Sized, data_config: Any = None):
        self.data_source = data_source
        self.config = sampler_config(DifficultySamplerConfig, data_config).validate()
        self.labels = bucket_labels(data_source, self.config.key)
        self.next_epoch = 0
        counts = {b: self.labels.count(b) for b in sorted(set(self.labels), key=str)}
        if self.config.mode == "weighted":
            w = np.array(
                [
                    self.config.weights.get(b, self.config.default_weight)
                    if b is not None
                    else self.config.default_weight
                    for b in self.labels
                ],
                dtype=np.float64,
            )
            if not len(w) or w.sum() <= 0:
                raise ConfigError("config key 'data.sampler.weights': every row has weight 0")
            self.probabilities = w / w.sum()
        log.info(
            "DifficultySampler(%s on extra_info.%s): rows per bucket %s",
            self.config.mode,
            self.config.key,
            counts,
        )

    def __len__(self) -> int:
        if self.config.mode == "weighted" and self.config.num_samples is not None:
            return self.config.num_samples
        return len(self.labels)

    def epoch_order(self, epoch: int) -> list[int]:
        """The indices of epoch ``epoch``: a pure function of (seed, epoch, buckets)."""
        words = [self.config.seed & 0xFFFFFFFF, epoch, _MODE_WORD[self.config.mode]]
        rng = np.random.default_rng(np.random.SeedSequence(words))
        if self.config.mode == "weighted":
            return rng.choice(len(self.labels), size=len(self), replace=True, p=self.probabilities).tolist()
        rank = {b: i for i, b in enumerate(self.config.order)}
        last = len(rank)
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            groups.setdefault(rank.get(label, last), []).append(i)
        return [i for r in sorted(groups) for i in rng.permutation(groups[r]).tolist()]

    def __iter__(self) -> Iterator[int]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return _EpochIterator(self, epoch)

    # torchdata's StatefulDataLoader saves these with the dataloader (verl's data.pt).
    def state_dict(self) -> dict[str, int]:
        return {"next_epoch": self.next_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.next_epoch = int(state["next_epoch"])


class _EpochIterator(Iterator[int]):
    """One epoch's indices; its state (epoch, position) restores the exact remainder of the epoch."""

    def __init__(self, sampler: DifficultySampler, epoch: int):
        self.sampler, self.epoch = sampler, epoch
        self.order = sampler.epoch_order(epoch)
        self.position = 0

    def __iter__(self) -> "_EpochIterator":
        return self

    def __next__(self) -> int:
        if self.position >= len(self.order):
            raise StopIteration
        self.position += 1
        return self.order[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = self.sampler.epoch_order(self.epoch)
        self.sampler.next_epoch = self.epoch + 1


# ---------------------------------------------------------------------------------------------
# The data.sampler hook for verl 0.9.1
# ---------------------------------------------------------------------------------------------


def _with_sampler_keys(verl_create_rl_sampler: Any) -> Any:
    def create_rl_sampler(data_config: Any, dataset: Any) -> Any:
        """verl's sampler factory honouring ``data.sampler.class_path`` / ``class_name`` (verl <= 0.8)."""
        spec = data_config.get("sampler") if data_config is not None else None
        if spec is None or not spec.get("class_path"):
            return verl_create_rl_sampler(data_config, dataset)
        from verl.utils.import_utils import load_extern_object

        if not spec.get("class_name"):
            raise ConfigError("config key 'data.sampler.class_name': required with data.sampler.class_path")
        sampler_cls = load_extern_object(spec.class_path, spec.class_name)
        if not (isinstance(sampler_cls, type) and issubclass(sampler_cls, Sampler)):
            raise TypeError(f"data.sampler.class_name {spec.class_name!r} must be a torch.utils.data.Sampler")
        return sampler_cls(data_source=dataset, data_config=data_config)

    create_rl_sampler.hardmode_hook = True  # type: ignore[attr-defined]
    create_rl_sampler.verl_original = verl_create_rl_sampler  # type: ignore[attr-defined]
    return create_rl_sampler


def install() -> None:
    """Make verl's ``create_rl_sampler`` honour ``data.sampler.class_path`` (idempotent)."""
    import verl.trainer.ppo.utils as verl_utils

    if not getattr(verl_utils.create_rl_sampler, "hardmode_hook", False):
        verl_utils.create_rl_sampler = _with_sampler_keys(verl_utils.create_rl_sampler)
    for name in _CALLERS:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "create_rl_sampler"):
            module.create_rl_sampler = verl_utils.create_rl_sampler


install()
