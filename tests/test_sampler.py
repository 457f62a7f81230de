"""rl.sampler: difficulty order over verl's RLHFDataset, checkpoint/resume, and the data.sampler hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from support.verl_rows import bucket, bucketed_verl_parquet, rlhf_dataset

from curate.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
RANK = {"easy": 0, "medium": 1, "hard": 2, "unsolved": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return rlhf_dataset(bucketed_verl_parquet(tmp_path_factory.mktemp("sampler") / "train.parquet"))


def _data_config(**sampler) -> object:
    return OmegaConf.create(
        {
            "seed": 7,
            "shuffle": True,
            "sampler": {"class_path": "pkg://rl.sampler", "class_name": "DifficultySampler", **sampler},
        }
    )


def test_curriculum_visits_every_row_once_easy_to_hard(dataset):
    from rl.sampler import DifficultySampler

    sampler = DifficultySampler(dataset, _data_config(mode="curriculum"))
    epochs = [list(sampler) for _ in range(2)]
    for order in epochs:
        assert sorted(order) == list(range(40))
        ranks = [RANK.get(bucket(i), 4) for i in order]  # unlabelled rows last
        assert ranks == sorted(ranks)
    assert epochs[0] != epochs[1]  # reshuffled within buckets every epoch
    again = DifficultySampler(dataset, _data_config(mode="curriculum"))
    assert [list(again) for _ in range(2)] == epochs  # seed 7, epochs 0 and 1
    other = DifficultySampler(dataset, _data_config(mode="curriculum", seed=8))
    assert list(other) != epochs[0]


def test_curriculum_custom_order(dataset):
    from rl.sampler import DifficultySampler

    order = list(DifficultySampler(dataset, _data_config(order=["hard", "medium"])))
    buckets = [bucket(i) for i in order]
    assert buckets[:8] == ["hard"] * 8 and buckets[8:16] == ["medium"] * 8
    assert set(buckets[16:]) == {"easy", "unsolved", None}


def test_weighted_draws_follow_bucket_weights(dataset):
    from rl.sampler import DifficultySampler

    sampler = DifficultySampler(
        dataset,
        _data_config(
            mode="weighted", weights={"hard": 3.0, "medium": 1.0}, default_weight=0.0, num_samples=8000
        ),
    )
    draws = list(sampler)
    assert len(draws) == len(sampler) == 8000
    share = Counter(bucket(i) for i in draws)
    assert set(share) == {"hard", "medium"}  # weight 0 for everything else
    # 8 rows per bucket: P(hard) = 3*8 / (3*8 + 1*8) = 0.75; binomial sd at n=8000 is 0.005
    assert abs(share["hard"] / 8000 - 0.75) < 0.025
    per_row = Counter(draws)
    assert all(i % 5 in (1, 2) for i in per_row) and len(per_row) == 16


def test_config_mistakes_name_the_key(dataset):
    from rl.sampler import DifficultySampler

    with pytest.raises(ConfigError, match="data.sampler.mode"):
        DifficultySampler(dataset, _data_config(mode="spiral"))
    with pytest.raises(ConfigError, match="data.sampler.ordr"):
        DifficultySampler(dataset, _data_config(ordr=["easy"]))
    with pytest.raises(ConfigError, match="data.sampler.key"):
        DifficultySampler(dataset, _data_config(key="cmab_bucket"))
    with pytest.raises(ConfigError, match="data.sampler.weights"):
        DifficultySampler(
            dataset, _data_config(mode="weighted", weights={"nothing": 1.0}, default_weight=0.0)
        )


@pytest.mark.parametrize("mode", ["curriculum", "weighted"])
def test_resume_from_verl_dataloader_checkpoint_continues_the_same_sequence(dataset, mode):
    """The way verl's trainer uses it: StatefulDataLoader, verl's collate_fn, state saved mid-run."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.utils.dataset.rl_dataset import collate_fn

    from rl.sampler import DifficultySampler

    def loader():
        sampler = DifficultySampler(dataset, _data_config(mode=mode))
        return StatefulDataLoader(
            dataset, batch_size=6, sampler=sampler, drop_last=True, collate_fn=collate_fn, num_workers=0
        )

    def ids(batch):
        return [info["id"] for info in batch["extra_info"]]

    full, state, it = [], None, None
    dl = loader()
    for epoch in range(3):  # verl re-iterates the dataloader when an epoch ends
        it = iter(dl)
        for step, batch in enumerate(it):
            full.append(ids(batch))
            if epoch == 1 and step == 2:
                state = dl.state_dict()
    assert len(full) == 3 * (40 // 6)
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [ids(b) for b in resumed]  # the remainder of epoch 1
    rest += [ids(b) for b in resumed]  # epoch 2
    assert rest == full[(40 // 6) + 3 :]


_HOOK = textwrap.dedent("""
    import sys
    from hydra import compose, initialize_config_dir
    import verl.trainer.ppo.v1.trainer_base as trainer_base
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from curate.toy.tokenizer import build_tokenizer
    from rl.train import _verl_config_dir

    overrides = ["+data.sampler.class_path=pkg://rl.sampler", "+data.sampler.class_name=DifficultySampler",
                 "+data.sampler.mode=curriculum", "+data.sampler.order=[hard,medium,easy]", "data.seed=3",
                 "data.max_prompt_length=256"]
    with initialize_config_dir(config_dir=_verl_config_dir(), version_base=None):
        with_sampler = compose(config_name="ppo_trainer", overrides=overrides)
        plain = compose(config_name="ppo_trainer", overrides=overrides[-1:])
    dataset = RLHFDataset(sys.argv[1], build_tokenizer(512), with_sampler.data)
    sampler = trainer_base.create_rl_sampler(with_sampler.data, dataset)
    print("with:", type(sampler).__module__, type(sampler).__name__, sampler.config.seed)
    print("first:", [dataset.dataframe[i]["extra_info"]["pism_bucket"] for i in list(sampler)[:3]])
    print("plain:", type(trainer_base.create_rl_sampler(plain.data, dataset)).__name__)
""")


def test_verl_builds_the_sampler_from_data_sampler_keys(tmp_path):
    """In a fresh process where verl loads rl.sampler as an external module (what its workers do)."""
    data = bucketed_verl_parquet(tmp_path / "train.parquet")
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "rl.sampler", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _HOOK, str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with: rl.sampler DifficultySampler 3" in proc.stdout  # seed from data.seed
    assert "first: ['hard', 'hard', 'hard']" in proc.stdout
    assert "plain: RandomSampler" in proc.stdout  # verl's own sampler without the keys


def test_verl_alone_ignores_data_sampler(tmp_path):
    """Why the hook exists: verl 0.9.1's own factory builds its random sampler whatever data.sampler says."""
    code = textwrap.dedent("""
        import sys
        from omegaconf import OmegaConf
        import verl.trainer.ppo.utils as u
        from verl.utils.dataset.rl_dataset import RLHFDataset
        from curate.toy.tokenizer import build_tokenizer
        config = OmegaConf.create({"seed": 0, "shuffle": True, "max_prompt_length": 256, "sampler": {
            "class_path": "pkg://rl.sampler", "class_name": "DifficultySampler"}})
        dataset = RLHFDataset(sys.argv[1], build_tokenizer(512), config)
        print(type(u.create_rl_sampler(config, dataset)).__name__)
    """)
    data = bucketed_verl_parquet(tmp_path / "train.parquet")
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "RandomSampler"
