"""rl.sampler inside verl 0.9.1's real GRPO trainer on CPU: the first step trains on the bucket it names.

``python -m rl train`` (toy CPU recipe) with ``data.sampler`` keys and ``rl.sampler`` among verl's
external modules; what verl trained on is read back from verl's own rollout dump
(``trainer.rollout_data_dir``), one JSON line per response with the row's ground truth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from curate import schema as S

REPO = Path(__file__).resolve().parents[1]
TOY_CPU = REPO / "configs" / "rl" / "toy_cpu.yaml"


@pytest.mark.slow
def test_curriculum_sampler_decides_what_verl_trains_on_first(tmp_path):
    cache = pytest.importorskip("curate.toy.cache")
    from curate.config import PromptConfig
    from curate.io import write_verl_parquet
    from curate.toy.corpus import generate_corpus

    # 16 toy rows, every 4th one "hard"; a unique ground truth names each row in verl's dump
    table = generate_corpus(16, seed=5, tasks=("counting",))
    rows = [{**r, S.GROUND_TRUTH: str(1000 + i)} for i, r in enumerate(table.to_pylist())]
    buckets = ["hard" if i % 4 == 0 else "easy" for i in range(16)]
    schema = pa.schema([*S.CANONICAL_SCHEMA, S.PISM_SCHEMA.field("pism_bucket")])
    data = tmp_path / "train.parquet"
    write_verl_parquet(
        pa.Table.from_pylist([{**r, "pism_bucket": b} for r, b in zip(rows, buckets)], schema=schema),
        data,
        extra_info_columns=["pism_bucket"],
        prompt=PromptConfig(),
    )
    hard = {str(1000 + i) for i in range(16) if buckets[i] == "hard"}

    rollouts = tmp_path / "rollouts"
    command = [
        sys.executable,
        "-m",
        "rl",
        "train",
        "--config",
        str(TOY_CPU),
        f"data.train_files={data}",
        f"actor_rollout_ref.model.path={cache.toy_model_path()}",
        "trainer.total_training_steps=1",
        f"+trainer.rollout_data_dir={rollouts}",
        "+data.sampler.class_path=pkg://rl.sampler",
        "+data.sampler.class_name=DifficultySampler",
        "+data.sampler.mode=curriculum",
        "+data.sampler.order=[hard,easy]",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    dumped = [json.loads(line) for line in (rollouts / "1.jsonl").read_text().splitlines()]
    assert len(dumped) == 4 * 4  # train_batch_size prompts x rollout.n responses
    # verl's own random sampler would give 4 hard rows of 16 with probability 1/1820
    assert {d["gts"] for d in dumped} == hard
