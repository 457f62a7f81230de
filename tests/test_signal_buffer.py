"""rl.signal.buffer against a real TransferQueue and verl's own sync ReplayBuffer machinery.

The trainer and the agent loop are played by :class:`Rollouts`: it registers prompts and writes their
finished trajectories exactly as verl's ``_submit_batch_to_rollout`` and ``AgentLoopWorkerTQ`` do (same
keys, tags and fields), with rewards from a script, so each test knows which groups carry a signal.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Sequence

import pytest
import torch
from omegaconf import OmegaConf
from support.verl_rows import bucketed_verl_parquet, rlhf_dataset

from rl.signal.buffer import REPLAY_PARTITION, SignalKeepingError, SignalReplayBuffer
from rl.signal.curriculum import PassRateCurriculum

TRAIN = "train"


@pytest.fixture(scope="module")
def tq():
    import ray
    import transfer_queue

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    transfer_queue.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield transfer_queue
    transfer_queue.close()
    ray.shutdown()


@pytest.fixture(autouse=True)
def empty_queue(tq):
    yield
    for partition in (TRAIN, REPLAY_PARTITION):
        keys = list((tq.kv_list(partition) or {}).get(partition, {}))
        if keys:
            tq.kv_clear(keys=keys, partition_id=partition)


class Rollouts:
    """Plays verl's trainer (prompt registration) and agent loop (trajectories, then the group status).

    ``script`` gives each new prompt's per-response accuracies; the reward is the accuracy plus 0.1
    for format, so a group's rewards differ exactly where its accuracies do."""

    def __init__(self, tq, script: Iterable[Sequence[float]]):
        self.tq, self.script, self.step, self.made = tq, iter(script), 1, 0
        self.rows: dict[str, int] = {}

    def __call__(self, num_prompts: int) -> int:  # verl's refill_fn
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict

        for _ in range(num_prompts):
            uid, row = f"p{self.made}", self.made % 40
            self.made += 1
            self.rows[uid] = row
            accs = next(self.script)
            self.tq.kv_batch_put(
                keys=[uid],
                partition_id=TRAIN,
                tags=[{"is_prompt": True, "status": "pending", "global_steps": self.step}],
            )
            fields = [
                {
                    "rm_scores": torch.tensor([0.0, 0.0, acc + 0.1]),  # the reward sits on the last token
                    "responses": torch.tensor([5, 6, 7]),
                    "extra_fields": {"reward_extra_info": {"acc": float(acc), "format": 1.0}},
                    "extra_info": {"id": f"r{row:02d}", "index": row},
                }
                for acc in accs
            ]
            keys = [f"{uid}_{session}_0" for session in range(len(accs))]
            tags = [{"status": "success", "global_steps": self.step} for _ in accs]
            self.tq.kv_batch_put(
                keys=keys, partition_id=TRAIN, fields=list_of_dict_to_tensordict(fields), tags=tags
            )
            self.tq.kv_batch_put(keys=[uid], partition_id=TRAIN, tags=[{"status": "finished"}])
        return num_prompts

    def step_batch(self, buffer: SignalReplayBuffer, step: int, batch_size: int):
        """One trainer step: dispatch the batch, sample it, return (uids, rewards by uid, metrics)."""
        self.step = step
        self(batch_size)
        batch, metrics = buffer.sample(step, TRAIN, batch_size)
        data = self.tq.kv_batch_get(keys=batch.keys, partition_id=TRAIN, select_fields=["rm_scores"])
        rewards: dict[str, list[float]] = {}
        for key, scores in zip(batch.keys, list(data["rm_scores"]), strict=True):
            rewards.setdefault(key.split("_")[0], []).append(round(float(scores.sum()), 4))
        self.tq.kv_clear(keys=batch.keys, partition_id=TRAIN)  # the trainer clears a trained batch
        return list(rewards), rewards, metrics


def _buffer(
    rollouts: Rollouts, batch: int, *, filtering=False, band=None, replay=None, gen_batches=3, seed=0
):
    opts = {
        "signal": {"band": band, "replay": replay or {"enable": False}},
        "filter_groups": {"enable": filtering, "metric": "acc", "max_num_gen_batches": gen_batches},
        "train_batch_size": batch,
        "seed": seed,
        "norm_adv_by_std_in_grpo": True,
    }
    return SignalReplayBuffer(
        "sync",
        OmegaConf.create({}),
        None,
        "drop",
        OmegaConf.create(opts),
        refill_fn=rollouts,
        poll_interval=0.01,
    )


ALL_RIGHT, ALL_WRONG, ONE_RIGHT, HALF = [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]


def test_measurement_only_leaves_the_batch_as_verl_would(tq):
    rollouts = Rollouts(tq, [ALL_RIGHT, HALF, ALL_WRONG, ONE_RIGHT])
    uids, rewards, m = rollouts.step_batch(_buffer(rollouts, 4), 1, 4)
    assert sorted(uids) == ["p0", "p1", "p2", "p3"]  # nothing filtered, nothing replayed
    assert m["signal/effective_ratio"] == m["signal/effective_ratio_generated"] == 0.5
    assert m["signal/groups_generated"] == 4 and m["signal/prompts_dispatched"] == 4
    assert m["signal/generations_per_signal_group"] == 16 / 2
    assert m["signal/pass_rate_generated"] == pytest.approx((4 + 2 + 0 + 1) / 16)
    assert not any(k.startswith("signal/replay") for k in m)


def test_dapo_filter_trains_mixed_groups_only_and_counts_what_it_cost(tq):
    rollouts = Rollouts(tq, [ALL_RIGHT, HALF, ALL_WRONG, ONE_RIGHT, ALL_RIGHT, HALF, HALF, HALF])
    uids, rewards, m = rollouts.step_batch(_buffer(rollouts, 2, filtering=True), 1, 2)
    assert all(len(set(r)) > 1 for r in rewards.values()) and len(uids) == 2
    assert m["signal/effective_ratio"] == 1.0
    assert m["signal/groups_generated"] == m["signal/prompts_dispatched"] <= 6  # within 3 batches of 2
    with_signal = m["signal/groups_generated"] * m["signal/effective_ratio_generated"]
    assert m["signal/generations_per_signal_group"] == pytest.approx(
        4 * m["signal/groups_generated"] / with_signal
    )


def test_band_keeps_groups_whose_mean_lies_inside(tq):
    rollouts = Rollouts(tq, [ONE_RIGHT, [1, 1, 1, 0], HALF, ONE_RIGHT, HALF] + [HALF] * 4)
    uids, rewards, _ = rollouts.step_batch(_buffer(rollouts, 2, filtering=True, band=[0.3, 0.7]), 1, 2)
    assert all(sorted(r) == [0.1, 0.1, 1.1, 1.1] for r in rewards.values())  # 2 of 4 right: mean 0.5


@pytest.mark.parametrize(("script", "cause"), [(ALL_RIGHT, "too easy"), (ALL_WRONG, "too hard")])
def test_a_batch_the_budget_cannot_fill_fails_naming_the_cause(tq, script, cause):
    rollouts = Rollouts(tq, [script] * 100)
    buffer = _buffer(rollouts, 2, filtering=True, gen_batches=3)
    with pytest.raises(SignalKeepingError) as err:
        rollouts.step_batch(buffer, 1, 2)
    message = str(err.value)
    assert rollouts.made == 6  # max_num_gen_batches × train_batch_size prompts, not one more
    assert "0 of 2 groups with a learning signal after 6 prompts" in message
    assert f"6 with every response at acc={script[0]}" in message and cause in message
    assert "algorithm.filter_groups.max_num_gen_batches" in message


def test_replay_swaps_silent_groups_for_stored_ones_and_logs_their_age(tq):
    rollouts = Rollouts(tq, [HALF, ONE_RIGHT] + [ALL_RIGHT] * 10)
    buffer = _buffer(rollouts, 2, replay={"enable": True, "capacity": 8, "max_share": 0.5, "max_age": 2})
    first, first_rewards, m1 = rollouts.step_batch(buffer, 1, 2)
    assert m1["signal/replay/stored"] == 2 and m1["signal/replay/groups"] == 0
    second, second_rewards, m2 = rollouts.step_batch(buffer, 2, 2)
    # one of the two silent groups (max_share 0.5 of 2) became a group from step 1, with its rewards
    replayed = [uid for uid in second if uid in first]
    assert len(replayed) == 1 and second_rewards[replayed[0]] == first_rewards[replayed[0]]
    assert (
        m2["signal/replay/groups"] == 1 and m2["signal/replay/age_mean"] == m2["signal/replay/age_max"] == 1
    )
    assert m2["signal/effective_ratio"] == 0.5 and m2["signal/effective_ratio_generated"] == 0.0
    assert m2["signal/replay/share"] == 0.5
    # the swapped-out silent group is gone from the queue; the store still holds both groups
    left = set((tq.kv_list(TRAIN) or {}).get(TRAIN, {}))
    assert not any(key.split("_")[0] in {"p2", "p3"} for key in left)
    assert len(buffer.replay) == 2
    # at step 5 both are older than max_age 2: expired, nothing to replay
    rollouts.step_batch(buffer, 4, 2)
    _, _, m5 = rollouts.step_batch(buffer, 5, 2)
    assert m5["signal/replay/groups"] == 0 and m5["signal/replay/stored"] == 0
    assert math.isnan(m5["signal/replay/age_mean"])
    assert not (tq.kv_list(REPLAY_PARTITION) or {}).get(REPLAY_PARTITION)  # their trajectories too


def test_the_whole_budget_is_spent_before_a_step_fails(tq):
    """verl refills in chunks (2 × the groups it dropped, up to a batch): the last chunk is cut to
    the budget, not skipped. 7 mixed groups, then nothing but solved ones: 8 + 2 + 4 + 8 + 2 = 24."""
    rollouts = Rollouts(tq, [HALF] * 7 + [ALL_RIGHT] * 100)
    with pytest.raises(SignalKeepingError, match="7 of 8 groups with a learning signal after 24 prompts"):
        rollouts.step_batch(_buffer(rollouts, 8, filtering=True, gen_batches=3), 1, 8)
    assert rollouts.made == 24


@pytest.mark.parametrize("max_share", [1.0, 0.5])
def test_replay_fills_what_the_filter_budget_left_empty(tq, max_share):
    rollouts = Rollouts(tq, [HALF, ONE_RIGHT] + [ALL_RIGHT] * 20)
    replay = {"enable": True, "capacity": 8, "max_share": max_share, "max_age": 4}
    buffer = _buffer(rollouts, 2, filtering=True, gen_batches=2, replay=replay)
    first, _, _ = rollouts.step_batch(buffer, 1, 2)
    if max_share == 1.0:  # 4 prompts, all right: the whole batch comes from replay
        second, _, m = rollouts.step_batch(buffer, 2, 2)
        assert sorted(second) == sorted(first) and m["signal/replay/groups"] == 2
        assert m["signal/effective_ratio"] == 1.0 and m["signal/effective_ratio_generated"] == 0.0
    else:  # replay may fill one slot of two: the step fails, saying so
        with pytest.raises(
            SignalKeepingError, match=r"1 of 2 groups .* replay could add 1 at most .* holds 2"
        ):
            rollouts.step_batch(buffer, 2, 2)
    assert rollouts.made == 2 + 4  # the second step's budget: 2 batches of 2 prompts


def test_every_generated_group_teaches_the_curriculum_once(tq, tmp_path):
    gc.collect()  # other tests' curricula: the buffer reports the live one, as in verl's trainer
    curriculum = PassRateCurriculum(
        rlhf_dataset(bucketed_verl_parquet(tmp_path / "train.parquet")), OmegaConf.create({"sampler": {}})
    )
    rollouts = Rollouts(tq, [ALL_RIGHT, ALL_WRONG, HALF, ONE_RIGHT] + [HALF] * 10)
    _, _, m = rollouts.step_batch(_buffer(rollouts, 2, filtering=True), 1, 2)
    observed = {f"r{row:02d}" for row in rollouts.rows.values()}
    assert m["curriculum/observed_rows"] == len(observed) == rollouts.made  # filtered-out groups too
    responses = curriculum.passes + curriculum.fails
    assert responses.sum() == 4 * rollouts.made  # each response counted once
    assert (curriculum.passes[0], curriculum.fails[0]) == (4, 0)  # p0 -> row 0: all right
    assert (curriculum.passes[1], curriculum.fails[1]) == (0, 4)
