"""verl's v1 replay buffer, extended to keep GRPO's learning signal alive.

``python -m rl train`` installs :class:`SignalReplayBuffer` through verl's own hook,
``trainer.v1.sampler.custom_sampler`` (sync trainer), with ``hardmode.signal`` and the verl keys it
reads passed as ``trainer.v1.sampler.sampler_kwargs``. Over verl's :class:`ReplayBuffer` it adds:

- **Measurement, every step**: ``signal/effective_ratio`` (share of the trained groups whose rewards
  differ, i.e. with a non-zero GRPO advantage), the same share over every group generated in the step
  (``signal/effective_ratio_generated``), and the responses generated per trained group with signal.
- **Group filtering**: verl's DAPO filter (``algorithm.filter_groups``) as it is, plus a band-pass form
  (``hardmode.signal.band``: keep groups whose mean metric lies in ``[low, high]``), and verl's
  ``max_num_gen_batches``, which verl 0.9.1's v1 buffer ignores: at most that many batches of prompts
  per step; when they cannot fill the batch, replay fills it or the step fails naming the cause
  (too easy, too hard, outside the band) instead of generating forever.
- **Selective sample replay** (``hardmode.signal.replay``): groups that carried a signal are copied
  into their own TransferQueue partition; a batch that loses signal (silent groups, or a filter that
  ran out of budget) takes some back, drawn ∝ mean |advantage|, up to ``max_share`` of the batch and
  no older than ``max_age`` steps. Their old log-probs are recomputed by the current actor, as for
  any batch; ``signal/replay/age_*`` logs how stale they are.
- **Curriculum observations**: every finished group's pass metric goes to the live
  :class:`rl.signal.curriculum.PassRateCurriculum`, whose estimates steer the dataloader.

Not checkpointed: the replay store (sync verl saves no TransferQueue state); a resumed run starts
with an empty store. The curriculum's state is in verl's dataloader checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from typing import Any, Optional

import transfer_queue as tq
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import (
    FILTER_GROUPS_REWARD_METRIC,
    ReplayBuffer,
    _accumulate_eviction_metrics,
)

from rl.signal import curriculum
from rl.signal.config import SignalConfig
from rl.signal.groups import FilterVerdicts, GroupOutcome, effective_ratio, keeps
from rl.signal.replay import ReplayItem, ReplayStore

__all__ = ["REPLAY_PARTITION", "SignalKeepingError", "SignalReplayBuffer"]

log = logging.getLogger(__name__)

TRAIN = "train"
REPLAY_PARTITION = "hardmode_replay"  # TransferQueue partition holding the replay store's trajectories


class SignalKeepingError(RuntimeError):
    """The filter cannot fill a batch within its generation budget, and replay cannot make up for it."""


class _BudgetSpent(Exception):
    """Raised by the refill hook when another refill would exceed max_num_gen_batches."""


def _uid(key: str) -> str:
    return key.split("_")[0]


def _score(extra: Any, name: str) -> Optional[float]:
    """``reward_extra_info[name]`` of one trajectory's ``extra_fields`` (None where absent)."""
    fields = getattr(extra, "data", extra)
    info = fields.get("reward_extra_info", {}) if isinstance(fields, dict) else {}
    value = info.get(name)
    return None if value is None else float(value)


class SignalReplayBuffer(ReplayBuffer):
    """verl's sync replay buffer plus signal measurement, band-pass filtering, a generation budget,
    selective replay and curriculum feedback (module docstring)."""

    def __init__(
        self,
        trainer_mode: str,
        trainer_config: Any,
        max_off_policy_threshold: Optional[int],
        max_off_policy_strategy: str,
        sampler_kwargs: Any,
        refill_fn: Any = None,
        poll_interval: float = 2.0,
    ):
        if trainer_mode != "sync":
            raise ValueError(
                f"rl.signal.buffer.SignalReplayBuffer serves the sync trainer only, not "
                f"trainer.v1.trainer_mode={trainer_mode!r}"
            )
        opts = (
            OmegaConf.to_container(sampler_kwargs, resolve=True)
            if OmegaConf.is_config(sampler_kwargs)
            else (dict(sampler_kwargs or {}))
        )
        self.signal: SignalConfig = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(SignalConfig), opts.get("signal") or {})
        ).validate()
        filter_groups = opts.get("filter_groups") or {}
        self.filtering = bool(filter_groups.get("enable", False))
        self.metric_name = str(filter_groups.get("metric") or FILTER_GROUPS_REWARD_METRIC)
        self.max_gen_batches = int(filter_groups.get("max_num_gen_batches") or 0)
        self.batch_prompts = int(opts["train_batch_size"])
        self.norm_by_std = bool(opts.get("norm_adv_by_std_in_grpo", True))
        self._refill_prompts = refill_fn
        super().__init__(
            trainer_mode=trainer_mode,
            trainer_config=trainer_config,
            max_off_policy_threshold=max_off_policy_threshold,
            max_off_policy_strategy=max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval,
            refill_fn=self._budgeted_refill if refill_fn is not None else None,
            filter_groups_metric=self.metric_name if self.filtering else None,
            train_batch_size=self.batch_prompts,
            gen_batch_size=1 if self.filtering else self.batch_prompts,
            max_inflight_gen_batches=int(filter_groups.get("max_inflight_gen_batches") or 1),
        )
        replay = self.signal.replay
        self.replay = (
            ReplayStore(replay.capacity, replay.max_age, int(opts.get("seed") or 0))
            if replay.enable
            else None
        )
        self.outcomes: dict[str, GroupOutcome] = {}  # this step's finished groups, evicted ones included
        self.dispatched = 0  # prompts sent to rollout this step

    # ----------------------------------------------------------------------------------- budget

    @property
    def budget(self) -> Optional[int]:
        """Prompts a step may generate (max_num_gen_batches × train_batch_size); None: unbounded."""
        if not self.filtering or self.max_gen_batches <= 0:
            return None
        return self.max_gen_batches * self.batch_prompts

    def _budgeted_refill(self, num_prompts: int) -> int:
        """verl's refill, cut to what is left of the budget (verl counts in-flight prompts from
        TransferQueue, so a shorter refill only means fewer to wait for); none left: settle."""
        if self.budget is not None:
            if self.dispatched >= self.budget:
                raise _BudgetSpent
            num_prompts = min(num_prompts, self.budget - self.dispatched)
        self.dispatched += num_prompts
        return self._refill_prompts(num_prompts)

    # ----------------------------------------------------------------------------- observation

    def _observe(self, uids: set[str]) -> None:
        """Read the rewards of newly finished groups once: classify them and feed the curriculum."""
        keys = [key for key in self.partitions[TRAIN] if _uid(key) in uids]
        if not keys:
            return
        data = tq.kv_batch_get(
            keys=keys, partition_id=TRAIN, select_fields=["rm_scores", "extra_fields", "extra_info"]
        )
        rewards, metric, passes = defaultdict(list), defaultdict(list), defaultdict(list)
        infos: dict[str, Any] = {}
        for key, scores, extra, info in zip(
            keys, list(data["rm_scores"]), list(data["extra_fields"]), list(data["extra_info"]), strict=True
        ):
            uid, reward = _uid(key), float(scores.sum().item())
            rewards[uid].append(reward)
            for name, out in ((self.metric_name, metric), (self.signal.pass_metric, passes)):
                value = reward if name == FILTER_GROUPS_REWARD_METRIC else _score(extra, name)
                if value is None:
                    key_name = (
                        "algorithm.filter_groups.metric" if out is metric else "hardmode.signal.pass_metric"
                    )
                    raise RuntimeError(
                        f"{key_name}: the reward gives no {name!r} for {key} (its extra info has "
                        f"{sorted((getattr(extra, 'data', extra) or {}).get('reward_extra_info', {}))})"
                    )
                out[uid].append(value)
            infos[uid] = getattr(info, "data", info)
        steps = self.prompt_global_steps[TRAIN]
        for uid in rewards:
            info = infos[uid] if isinstance(infos[uid], dict) else {}
            outcome = GroupOutcome(
                uid=uid,
                step=int(steps.get(uid, 0)),
                rewards=tuple(rewards[uid]),
                metric=tuple(metric[uid]),
                passes=tuple(passes[uid]),
                index=info.get("index"),
            )
            self.outcomes[uid] = outcome
            curriculum.observe(info, list(outcome.passes))

    def _dapo_filtered_keys(self, partition_id: str) -> tuple[set[str], Counter]:
        """Observe every newly finished group; with filtering on, drop those :func:`keeps` rejects."""
        if partition_id != TRAIN:
            return set(), Counter()
        finished = self.finished_keys[partition_id]
        new = {uid for uid in finished if uid not in self.outcomes}
        if new:
            self._observe(new)
        if not self.filtering:
            return set(), Counter()
        dropped = {
            uid
            for uid in finished
            if uid in self.outcomes and not keeps(self.outcomes[uid], self.signal.band)
        }
        return dropped, FilterVerdicts.of((self.outcomes[u] for u in dropped), self.signal.band).identical

    # ---------------------------------------------------------------------------------- sample

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
        if partition_id != TRAIN:
            return super().sample(global_steps, partition_id, batch_size)
        self.outcomes.clear()
        self.dispatched = batch_size  # the step's batch, sent by the trainer before it samples
        try:
            batch, metrics = super().sample(global_steps, partition_id, batch_size)
            missing = 0
        except _BudgetSpent:
            batch, metrics, missing = self._settle_short_batch(global_steps, batch_size)
        batch, replayed = self._replay_into(batch, global_steps, batch_size, missing)
        fresh = list(dict.fromkeys(_uid(k) for k in batch.keys if _uid(k) not in {i.uid for i in replayed}))
        if len(fresh) + len(replayed) < batch_size:
            raise SignalKeepingError(self._shortfall(batch_size, len(fresh) + len(replayed)))
        if self.replay is not None:
            self._remember(batch, fresh, global_steps)
        metrics.update(self._metrics(fresh, replayed, global_steps))
        return batch, metrics

    def _settle_short_batch(self, global_steps: int, batch_size: int) -> tuple[KVBatchMeta, dict, int]:
        """The budget is spent: let in-flight groups finish, filter them, take what is left."""
        metrics: dict = {}
        last_debug = time.time()
        while True:
            self._sync_metadata_from_transfer_queue()
            reasons = self._terminal_eviction_reasons(global_steps, TRAIN)
            evicted, stale, _, evicted_metrics = self._evict_terminal_groups(global_steps, TRAIN, reasons)
            if evicted:
                _accumulate_eviction_metrics(metrics, evicted_metrics, stale)
            if not (self.pending_keys[TRAIN] or self.running_keys[TRAIN]):
                break
            last_debug = self._wait_for_next_poll(TRAIN, last_debug)
        sampleable = self._sampleable_terminal_keys(TRAIN, reasons)
        chosen, snapshot, _ = self._select_prompt_uids(TRAIN, sampleable, batch_size)
        self._clear_groups(TRAIN, sampleable - set(chosen))
        batch = (
            self._materialize_batch(TRAIN, chosen, snapshot) if chosen else KVBatchMeta(partition_id=TRAIN)
        )
        return batch, metrics, batch_size - len(chosen)

    # ---------------------------------------------------------------------------------- replay

    def _replay_into(
        self, batch: KVBatchMeta, global_steps: int, batch_size: int, missing: int
    ) -> tuple[KVBatchMeta, list[ReplayItem]]:
        """Fill ``missing`` slots, then replace silent groups, with stored groups (up to max_share)."""
        if self.replay is None:
            return batch, []
        self._drop_stored(self.replay.expire(global_steps))
        fresh = list(dict.fromkeys(_uid(k) for k in batch.keys))
        silent = [uid for uid in fresh if uid in self.outcomes and not self.outcomes[uid].has_signal]
        slots = math.floor(self.signal.replay.max_share * batch_size)
        drawn = self.replay.draw(min(slots, missing + len(silent)), exclude=fresh)
        if not drawn:
            return batch, []
        swapped = set(silent[: max(0, len(drawn) - missing)])
        keep = [i for i, key in enumerate(batch.keys) if _uid(key) not in swapped]
        if swapped:
            tq.kv_clear(keys=[k for k in batch.keys if _uid(k) in swapped], partition_id=TRAIN)
        keys, tags = [batch.keys[i] for i in keep], [batch.tags[i] for i in keep]
        for item in drawn:
            data = tq.kv_batch_get(keys=item.keys, partition_id=REPLAY_PARTITION)
            tq.kv_batch_put(keys=item.keys, partition_id=TRAIN, fields=data, tags=item.tags)
            keys += item.keys
            tags += item.tags
        return KVBatchMeta(partition_id=TRAIN, keys=keys, tags=tags), drawn

    def _remember(self, batch: KVBatchMeta, fresh: list[str], global_steps: int) -> None:
        """Copy the fresh groups that carry a signal into the replay partition."""
        assert self.replay is not None
        for uid in fresh:
            outcome = self.outcomes.get(uid)
            if outcome is None or not outcome.has_signal:
                continue
            rows = [i for i, key in enumerate(batch.keys) if _uid(key) == uid]
            keys, tags = [batch.keys[i] for i in rows], [dict(batch.tags[i]) for i in rows]
            data = tq.kv_batch_get(keys=keys, partition_id=TRAIN)
            tq.kv_batch_put(keys=keys, partition_id=REPLAY_PARTITION, fields=data, tags=tags)
            item = ReplayItem(uid, keys, tags, outcome.mean_abs_advantage(self.norm_by_std), global_steps)
            self._drop_stored(self.replay.add(item))

    @staticmethod
    def _drop_stored(items: list[ReplayItem]) -> None:
        keys = [key for item in items for key in item.keys]
        if keys:
            tq.kv_clear(keys=keys, partition_id=REPLAY_PARTITION)

    # --------------------------------------------------------------------------------- reports

    def _metrics(self, fresh: list[str], replayed: list[ReplayItem], global_steps: int) -> dict[str, float]:
        trained = [self.outcomes[u] for u in fresh if u in self.outcomes]
        generated = list(self.outcomes.values())
        with_signal = sum(g.has_signal for g in trained)
        responses = sum(len(g.rewards) for g in generated)
        metrics = {
            "signal/effective_ratio": (with_signal + len(replayed)) / max(1, len(trained) + len(replayed)),
            "signal/effective_ratio_generated": effective_ratio(generated),
            "signal/groups_generated": len(generated),
            "signal/responses_generated": responses,
            "signal/prompts_dispatched": self.dispatched,
            "signal/generations_per_signal_group": responses / with_signal if with_signal else math.nan,
            "signal/pass_rate_generated": sum(g.pass_rate for g in generated) / max(1, len(generated)),
        }
        if self.replay is not None:
            ages = [item.age(global_steps) for item in replayed]
            metrics.update(
                {
                    "signal/replay/groups": len(replayed),
                    "signal/replay/share": len(replayed) / max(1, len(trained) + len(replayed)),
                    "signal/replay/age_mean": sum(ages) / len(ages) if ages else math.nan,
                    "signal/replay/age_max": max(ages) if ages else math.nan,
                    "signal/replay/stored": len(self.replay),
                }
            )
        metrics.update(curriculum.summaries())
        return metrics

    def _shortfall(self, batch_size: int, have: int) -> str:
        verdicts = FilterVerdicts.of(self.outcomes.values(), self.signal.band)
        # A group whose responses all score >= 0.5 (acc 1, a full reward) was solved: too easy.
        easy = sum(n for value, n in verdicts.identical.items() if value >= 0.5) + verdicts.above_band
        hard = sum(n for value, n in verdicts.identical.items() if value < 0.5) + verdicts.below_band
        cause = (
            "the data is too easy for this policy (select harder rows, e.g. configs/select/prefilter.yaml)"
            if easy >= hard
            else "the data is too hard for this policy (select easier rows)"
        )
        replay = (
            ""
            if self.replay is None
            else (
                f"; replay could add {math.floor(self.signal.replay.max_share * batch_size)} at most "
                f"(hardmode.signal.replay.max_share) and holds {len(self.replay)}"
            )
        )
        return (
            f"algorithm.filter_groups: {have} of {batch_size} groups with a learning signal after "
            f"{self.dispatched} prompts (max_num_gen_batches={self.max_gen_batches} × "
            f"data.train_batch_size={self.batch_prompts}){replay}. Of the {len(self.outcomes)} groups "
            f"scored this step: {verdicts.describe(self.metric_name)}. Likely cause: {cause}; or raise "
            "algorithm.filter_groups.max_num_gen_batches"
            + (" or widen hardmode.signal.band" if self.signal.band is not None else "")
            + "."
        )
