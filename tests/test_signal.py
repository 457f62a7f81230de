"""rl.signal: what a group's rewards say (against verl's own GRPO advantage), the replay store, the
pass-rate curriculum over verl's RLHFDataset and dataloader, and the recipe keys of ``rl train``."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from support.verl_rows import bucket, bucketed_verl_parquet, rlhf_dataset
from test_rl_train import _keys, _recipe

from curate.config import ConfigError
from rl.signal import curriculum as curriculum_module
from rl.signal.curriculum import PassRateCurriculum
from rl.signal.groups import FilterVerdicts, GroupOutcome, effective_ratio, keeps
from rl.signal.replay import ReplayItem, ReplayStore
from rl.train import CUSTOM_SAMPLER, SIGNAL_BUFFER, plan_training

REPO = Path(__file__).resolve().parents[1]
TOY_SIGNAL = REPO / "configs" / "rl" / "toy_signal.yaml"


def _group(rewards, metric=None, passes=None, uid="u", step=0) -> GroupOutcome:
    rewards = tuple(float(np.float32(r)) for r in rewards)  # verl's rm_scores are float32
    metric = rewards if metric is None else tuple(metric)
    return GroupOutcome(
        uid=uid, step=step, rewards=rewards, metric=metric, passes=metric if passes is None else passes
    )


# ------------------------------------------------------------------------------------- groups


# Rewards as rl.reward gives them: accuracy plus a format term, so groups mix 0, 0.1, 0.9, 1, 1.1 …
GROUPS = [
    [1, 1, 1, 1, 1, 1, 1, 1],  # all correct: no signal
    [0, 0, 0, 0, 0, 0, 0, 0],  # all wrong: no signal
    [1, 0, 0, 0, 0, 0, 0, 0],  # one right
    [1, 1, 1, 1, 1, 1, 1, 0],  # one wrong
    [1.1, 0.1, 1.1, -0.5, 0.1, 1.1, 0.6, 1.1],  # format bonus and penalty
    [0.3, 0.3000001],  # nearly equal: a signal all the same (verl's advantage is not zero)
    [0.3, 0.30000001],  # equal in float32: no signal
    [2.0],  # a group of one
]


@pytest.mark.parametrize("norm", [True, False])
def test_mean_abs_advantage_equals_verls_grpo_advantage(norm):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rows = [(f"g{g}", r) for g, rewards in enumerate(GROUPS) for r in rewards]
    length = 3
    token_rewards = torch.zeros(len(rows), length)
    token_rewards[:, -1] = torch.tensor([r for _, r in rows])  # the reward sits on the last token
    advantages, _ = compute_grpo_outcome_advantage(
        token_level_rewards=token_rewards,
        response_mask=torch.ones(len(rows), length),
        index=np.array([uid for uid, _ in rows], dtype=object),
        norm_adv_by_std_in_grpo=norm,
    )
    per_row = advantages[:, 0].double()
    for g, rewards in enumerate(GROUPS):
        mine = [i for i, (uid, _) in enumerate(rows) if uid == f"g{g}"]
        verl_mean_abs = per_row[mine].abs().mean().item()
        outcome = _group(rewards)
        # verl works in float32: a near tie loses digits to cancellation there, not in ours (float64)
        rel = 1e-2 if 0 < max(rewards) - min(rewards) < 1e-5 else 1e-5
        assert outcome.mean_abs_advantage(norm) == pytest.approx(verl_mean_abs, rel=rel, abs=1e-6), rewards
        if len(rewards) > 1:  # verl's advantage is non-zero exactly where the group has a signal
            assert outcome.has_signal == (per_row[mine].abs().max().item() > 0), rewards


def test_dapo_rule_and_band():
    eight = lambda right: _group([1] * right + [0] * (8 - right))  # noqa: E731
    assert [keeps(eight(k)) for k in range(9)] == [False] + [True] * 7 + [False]
    band = [0.125, 0.875]  # 1 to 7 of 8: the same as DAPO's rule for binary rewards
    assert [keeps(eight(k), band) for k in range(9)] == [False] + [True] * 7 + [False]
    narrow = [0.3, 0.7]  # 3 to 5 of 8 (2.4 and 5.6 are the edges)
    assert [keeps(eight(k), narrow) for k in range(9)] == [False] * 3 + [True] * 3 + [False] * 3
    # The metric decides, not the reward: a reward that differs only by format does not pass DAPO's rule.
    formatted = _group([1.1, 1.0, 1.1, 1.0], metric=[1, 1, 1, 1])
    assert formatted.has_signal and not keeps(formatted)


def test_filter_verdicts_count_why_groups_were_dropped():
    groups = [_group([1] * 4)] * 3 + [_group([0] * 4)] * 2 + [_group([1, 0, 0, 0]), _group([1, 1, 1, 0])]
    groups += [_group([1, 1, 0, 0])]
    verdicts = FilterVerdicts.of(groups, [0.3, 0.7])
    assert verdicts.kept == 1
    assert verdicts.identical == Counter({1.0: 3, 0.0: 2})
    assert (verdicts.below_band, verdicts.above_band) == (1, 1)
    assert verdicts.describe("acc") == (
        "1 kept; 2 with every response at acc=0; 3 with every response at acc=1; "
        "1 below the band; 1 above the band"
    )
    assert FilterVerdicts.of(groups, None).kept == 3


def test_effective_ratio():
    groups = [_group(r) for r in GROUPS[:5]]
    assert effective_ratio(groups) == pytest.approx(3 / 5)
    assert math.isnan(effective_ratio([]))


# ---------------------------------------------------------------------------------- replay store


def _item(uid: str, weight: float = 1.0, step: int = 0) -> ReplayItem:
    return ReplayItem(uid=uid, keys=[f"{uid}_0", f"{uid}_1"], tags=[{}, {}], weight=weight, step=step)


def test_store_keeps_the_newest_within_capacity_and_expires_by_age():
    store = ReplayStore(capacity=3, max_age=2)
    dropped = [store.add(_item(f"u{i}", step=i)) for i in range(5)]
    assert [[d.uid for d in drop] for drop in dropped] == [[], [], [], ["u0"], ["u1"]]
    assert list(store.items) == ["u2", "u3", "u4"]
    store.add(_item("u2", step=5))  # stored again: now the newest
    assert list(store.items) == ["u3", "u4", "u2"]
    assert [i.uid for i in store.expire(6)] == ["u3"]  # age 3 > 2; u4 (age 2) stays
    assert list(store.items) == ["u4", "u2"]
    assert _item("x", step=3).age(7) == 4


def test_store_draws_distinct_items_in_proportion_to_weight():
    store = ReplayStore(capacity=10, max_age=100, seed=3)
    for uid, weight in (("a", 1.0), ("b", 2.0), ("c", 7.0), ("zero", 0.0)):
        store.add(_item(uid, weight))
    counts = Counter(store.draw(1)[0].uid for _ in range(4000))
    assert set(counts) == {"a", "b", "c"}  # weight 0 (a group without signal) is never drawn
    for uid, weight in (("a", 0.1), ("b", 0.2), ("c", 0.7)):
        assert counts[uid] / 4000 == pytest.approx(weight, abs=0.03)
    pair = store.draw(2, exclude=["c"])
    assert sorted(i.uid for i in pair) == ["a", "b"]
    assert len(store.draw(10)) == 3  # no more than the store holds, each once
    assert store.items["a"].replays == counts["a"] + 2


def test_store_draws_are_reproducible_from_the_seed():
    def draws(seed):
        store = ReplayStore(capacity=10, max_age=100, seed=seed)
        for uid, weight in (("a", 1.0), ("b", 2.0), ("c", 7.0)):
            store.add(_item(uid, weight))
        return [store.draw(1)[0].uid for _ in range(40)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


# ------------------------------------------------------------------------------------ curriculum

PRIOR = {"easy": 0.9, "medium": 0.6, "hard": 0.3, "unsolved": 0.05, None: 0.5}  # the config's defaults


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return rlhf_dataset(bucketed_verl_parquet(tmp_path_factory.mktemp("curriculum") / "train.parquet"))


def _data_config(**sampler) -> object:
    hook = {"class_path": "pkg://rl.signal.curriculum", "class_name": "PassRateCurriculum"}
    return OmegaConf.create({"seed": 7, "sampler": {**hook, **sampler}})


def test_prior_from_the_bucket_then_beta_posterior_from_rollouts(dataset):
    cur = PassRateCurriculum(dataset, _data_config())
    assert cur.estimates().tolist() == pytest.approx([PRIOR[bucket(i)] for i in range(40)])
    # row 2 is hard: prior 0.3 worth 2 responses (0.6 passes, 1.4 fails); then 6 of 8 right
    assert cur.observe({"id": "r02", "index": 2}, [1, 1, 1, 1, 1, 1, 0, 0])
    assert cur.estimates()[2] == pytest.approx((0.6 + 6) / (2 + 8))
    cur.observe({"id": "r02"}, [0.0, 1.5, -1.0])  # a pass metric outside [0, 1] counts as 0 or 1
    assert (cur.passes[2], cur.fails[2]) == (7, 4)
    assert not cur.observe({"id": "elsewhere"}, [1, 0])  # not a row of this dataset
    summary = cur.summary()
    assert summary["curriculum/observed_rows"] == 1 and summary["curriculum/unmatched_groups"] == 1
    assert summary["curriculum/pass_rate_observed_mean"] == pytest.approx((0.6 + 7) / (2 + 11))


def test_an_epoch_draws_the_band_first_then_the_nearest(dataset):
    cur = PassRateCurriculum(dataset, _data_config(band=[0.4, 0.7]))
    order = list(cur)
    assert sorted(order) == list(range(40))  # every row once per epoch
    groups = [{bucket(i) for i in order[a:b]} for a, b in ((0, 16), (16, 24), (24, 32), (32, 40))]
    # in the band: medium (0.6) and unscored rows (0.5); then hard (0.1 below), easy, unsolved
    assert groups == [{"medium", None}, {"hard"}, {"easy"}, {"unsolved"}]
    assert list(cur) != order and sorted(list(cur)) == list(range(40))  # a new epoch, a new shuffle


def test_what_the_rollouts_teach_steers_the_next_draws(dataset):
    cur = PassRateCurriculum(dataset, _data_config(band=[0.4, 0.7]))
    epoch = iter(cur)
    first = [next(epoch) for _ in range(4)]
    assert all(bucket(i) in ("medium", None) for i in first)
    for row in range(0, 40, 5):  # the easy rows turn out half right: (1.8 + 4) / (2 + 8) = 0.58
        cur.observe({"id": f"r{row:02d}"}, [1, 0] * 4)
    following = [next(epoch) for _ in range(20)]
    # the 8 easy rows joined the 12 in-band rows not drawn yet; the out-of-band ones wait
    assert Counter("in band" if bucket(i) in ("medium", None) else bucket(i) for i in following) == {
        "easy": 8,
        "in band": 12,
    }
    assert cur.summary()["curriculum/in_band_share"] == pytest.approx(24 / 40)


def test_num_samples_longer_than_the_dataset_starts_over(dataset):
    draws = list(PassRateCurriculum(dataset, _data_config(num_samples=50)))
    assert len(draws) == 50 and sorted(draws[:40]) == list(range(40))
    assert len(set(draws[40:])) == 10


def test_observations_reach_every_live_curriculum(dataset):
    cur = PassRateCurriculum(dataset, _data_config())
    curriculum_module.observe({"id": "r01"}, [1, 1, 0])
    assert (cur.passes[1], cur.fails[1]) == (2, 1)
    assert curriculum_module.summaries()["curriculum/observed_rows"] >= 1


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"band": [0.8, 0.2]}, "data.sampler.band"),
        ({"band": [0.1]}, "data.sampler.band"),
        ({"prior_strength": 0}, "data.sampler.prior_strength"),
        ({"prior_means": {"easy": 1.5}}, "data.sampler.prior_means"),
        ({"bnad": [0.2, 0.8]}, "data.sampler.bnad"),
    ],
)
def test_curriculum_config_mistakes_name_the_key(dataset, given, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        PassRateCurriculum(dataset, _data_config(**given))


def test_resume_from_verl_dataloader_checkpoint_keeps_estimates_and_sequence(dataset):
    """As verl's trainer runs it: StatefulDataLoader, verl's collate_fn, observations between batches,
    state saved mid-epoch; the resumed loader draws what the uninterrupted one drew."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.utils.dataset.rl_dataset import collate_fn

    def loader():
        sampler = PassRateCurriculum(dataset, _data_config(band=[0.3, 0.7]))
        return sampler, StatefulDataLoader(
            dataset, batch_size=6, sampler=sampler, drop_last=True, collate_fn=collate_fn, num_workers=0
        )

    def feed(sampler, batch):  # a deterministic "policy": row k passes k % 3 of 4
        ids = [info["id"] for info in batch["extra_info"]]
        for info in batch["extra_info"]:
            k = int(info["id"][1:]) % 3
            sampler.observe(info, [1] * k + [0] * (4 - k))
        return ids

    sampler, dl = loader()
    full, state = [], None
    for epoch in range(3):
        for step, batch in enumerate(dl):
            full.append(feed(sampler, batch))
            if epoch == 1 and step == 2:
                state, estimates = dl.state_dict(), sampler.estimates().copy()
    resumed_sampler, resumed = loader()
    resumed.load_state_dict(state)
    epoch_1 = iter(resumed)  # the loader hands the saved state to the sampler here
    assert resumed_sampler.estimates().tolist() == pytest.approx(estimates.tolist())
    rest = [feed(resumed_sampler, b) for b in epoch_1]  # the remainder of epoch 1
    rest += [feed(resumed_sampler, b) for b in resumed]  # epoch 2
    assert rest == full[(40 // 6) + 3 :]
    assert resumed_sampler.estimates().tolist() == pytest.approx(sampler.estimates().tolist())


# --------------------------------------------------------------------------------- rl train keys


@pytest.mark.parametrize(
    ("signal", "key"),
    [
        ("band: [0.9, 0.1]", "hardmode.signal.band"),
        ("replay: {enable: true, capacity: 0}", "hardmode.signal.replay.capacity"),
        ("replay: {max_share: 1.5}", "hardmode.signal.replay.max_share"),
        ("replay: {max_age: 0}", "hardmode.signal.replay.max_age"),
        ("bnad: [0.1, 0.9]", "hardmode.signal.bnad"),
        # the band narrows verl's filter: without it there is nothing to narrow
        ("band: [0.1, 0.9]", "hardmode.signal.band"),
    ],
)
def test_signal_config_mistakes_name_the_key(tmp_path, signal, key):
    recipe = _recipe(tmp_path, f"hardmode:\n  signal:\n    {signal}\ndata:\n  train_files: t\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        plan_training(recipe, ["actor_rollout_ref.model.path=/m"], environ={})


@pytest.mark.parametrize(
    ("extra", "cli", "blocker"),
    [
        ("", ["trainer.v1.trainer_mode=async"], "trainer.v1.trainer_mode=async"),
        ("", [f"{CUSTOM_SAMPLER}.path=pkg://mine"], f"{CUSTOM_SAMPLER}.path=pkg://mine"),
    ],
)
def test_signal_options_refuse_what_rules_out_their_buffer(tmp_path, extra, cli, blocker):
    recipe = _recipe(tmp_path, "hardmode:\n  signal:\n    replay: {enable: true}\ndata:\n  train_files: t\n")
    with pytest.raises(ConfigError, match="hardmode.signal.replay.enable.*" + blocker.replace(".", r"\.")):
        plan_training(recipe, ["actor_rollout_ref.model.path=/m", *cli], environ={})
    # without signal options the same command is fine (and gets no buffer of ours)
    plain = plan_training(
        _recipe(tmp_path, "data:\n  train_files: t\n"), ["actor_rollout_ref.model.path=/m", *cli], environ={}
    )
    assert _keys(plain).get(f"{CUSTOM_SAMPLER}.path") in (None, "pkg://mine")


def test_the_buffer_is_installed_by_default_so_every_run_logs_its_effective_ratio(tmp_path):
    from rl.train import verl_config

    cli = ["actor_rollout_ref.model.path=/m", "actor_rollout_ref.rollout.name=vllm"]
    cfg = verl_config(plan_training(_recipe(tmp_path, "data:\n  train_files: t\n"), cli, environ={}))
    sampler = cfg.trainer.v1.sampler
    assert (sampler.custom_sampler.path, sampler.custom_sampler.name) == SIGNAL_BUFFER
    kwargs = OmegaConf.to_container(sampler.sampler_kwargs, resolve=True)
    assert (
        kwargs["filter_groups"]["enable"] is False and kwargs["train_batch_size"] == cfg.data.train_batch_size
    )
    assert kwargs["signal"] == {
        "band": None,
        "pass_metric": "acc",
        "replay": {"enable": False, "capacity": 64, "max_share": 0.25, "max_age": 8},
    }


def test_toy_signal_recipe_composes_with_filter_band_replay_and_curriculum():
    from rl.train import verl_config

    plan = plan_training(
        TOY_SIGNAL, ["data.train_files=/d/t.parquet", "actor_rollout_ref.model.path=/m"], environ={}
    )
    cfg = verl_config(plan)
    kwargs = OmegaConf.to_container(cfg.trainer.v1.sampler.sampler_kwargs, resolve=True)
    assert kwargs["filter_groups"] == {
        **kwargs["filter_groups"],
        "enable": True,
        "metric": "acc",
        "max_num_gen_batches": 3,
    }
    assert kwargs["signal"]["band"] == [0.125, 0.875] and kwargs["signal"]["replay"]["enable"] is True
    assert cfg.data.sampler.class_name == "PassRateCurriculum" and cfg.data.dataloader_num_workers == 0
    assert cfg.trainer.experiment_name == "toy_signal"
