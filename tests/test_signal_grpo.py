"""rl.signal inside verl 0.9.1's real GRPO trainer on CPU: replay swaps silent groups for stored ones
and verl trains on them; the curriculum learns from every group and is saved in verl's checkpoint.

``python -m rl train --config configs/rl/toy_signal.yaml`` on the `toy` model (the filter is
off here so that silent groups reach the batch; the filter itself runs in tests/test_signal_buffer.py
and in the toy signal study, benchmarks/README.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.verl_rows import BUCKETS

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
TOY_SIGNAL = REPO / "configs" / "rl" / "toy_signal.yaml"


def _corpus(path: Path) -> None:
    import pyarrow as pa

    from curate import schema as S
    from curate.config import PromptConfig
    from curate.io import write_verl_parquet
    from curate.toy.corpus import generate_corpus

    table = generate_corpus(24, seed=7)
    rows = [{**r, "pism_bucket": BUCKETS[i % len(BUCKETS)]} for i, r in enumerate(table.to_pylist())]
    schema = pa.schema([*S.CANONICAL_SCHEMA, S.PISM_SCHEMA.field("pism_bucket")])
    write_verl_parquet(
        pa.Table.from_pylist(rows, schema=schema),
        path,
        extra_info_columns=["pism_bucket"],
        prompt=PromptConfig(),
    )


def _train(tmp_path: Path, steps: int, metrics: Path) -> list[dict]:
    """``rl train`` for ``steps`` steps, a checkpoint at the last; verl's metrics per step."""
    command = [
        sys.executable, "-m", "rl", "train", "--config", str(TOY_SIGNAL),
        f"data.train_files={tmp_path / 'train.parquet'}",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=3",
        "trainer.total_epochs=100",  # the step count decides
        f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
        "algorithm.filter_groups.enable=false",
        "hardmode.signal.band=null",  # the band narrows the filter: off with it
        "hardmode.signal.replay.max_share=0.5",  # up to 4 of 8 groups replayed
        "actor_rollout_ref.model.path=toy",  # the suite's model (toy-study trains for minutes)
        "actor_rollout_ref.rollout.temperature=1.0",  # a sharp policy: silent groups to swap
    ]  # fmt: skip
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / f"train{steps}.log"
    with log.open("w") as out:
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900
        )
    assert proc.returncode == 0, log.read_text()[-6000:]
    return [json.loads(line)["data"] for line in metrics.read_text().splitlines()]


@pytest.mark.slow
def test_replay_and_curriculum_in_verls_trainer(tmp_path):
    _corpus(tmp_path / "train.parquet")
    steps = _train(tmp_path, 3, tmp_path / "metrics.jsonl")
    assert len(steps) == 3
    stored = 0  # the store before the step (no group expires or overflows in 3 steps)
    for m in steps:
        assert m["signal/groups_generated"] == 8 and math.isfinite(m["actor/grad_norm"])
        replayed, silent = m["signal/replay/groups"], round(8 * (1 - m["signal/effective_ratio_generated"]))
        assert replayed == min(silent, 4, stored)  # every silent slot, up to max_share 0.5 of 8
        assert m["signal/effective_ratio"] == pytest.approx((8 - silent + replayed) / 8)
        stored = m["signal/replay/stored"]
    assert any(m["signal/replay/groups"] > 0 for m in steps[1:]), "no silent group was ever swapped"
    ages = [m["signal/replay/age_max"] for m in steps if m["signal/replay/groups"]]
    assert all(1 <= age <= 4 for age in ages)  # hardmode.signal.replay.max_age
    # the curriculum saw every group: 8 per step, 24 rows in all
    # (without replacement within an epoch of 24 rows: 8 new rows per step)
    assert [m["curriculum/observed_rows"] for m in steps] == [8, 16, 24]
    assert steps[-1]["curriculum/unmatched_groups"] == 0
    assert steps[0]["curriculum/pass_rate_mean"] != steps[-1]["curriculum/pass_rate_mean"]

    # verl's dataloader checkpoint (data.pt) holds the curriculum: every response of the 3 steps, as
    # the metrics counted them (a resume loads it through StatefulDataLoader: tests/test_signal.py)
    import torch

    saved = torch.load(tmp_path / "checkpoints" / "global_step_3" / "data.pt", weights_only=False)
    curriculum = saved["_sampler_iter_state"]["sampler_state"]
    assert sum(curriculum["passes"]) + sum(curriculum["fails"]) == 3 * 64
    assert sum(curriculum["passes"]) == pytest.approx(
        sum(m["signal/pass_rate_generated"] * 64 for m in steps)
    )
    drawn = saved["_sampler_iter_state"]["sampler_iter_state"]["drawn"]
    assert sorted(drawn) == list(range(24))  # the epoch's position: every row once
    # verl's first batch came from the curriculum: rows whose prior (their bucket) lies in its band
    in_band = {i for i in range(24) if BUCKETS[i % len(BUCKETS)] in ("medium", "hard", None)}
    assert set(drawn[:8]) <= in_band
