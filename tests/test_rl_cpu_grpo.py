"""Two GRPO steps of verl 0.9.1's real trainer on CPU: the toy Qwen2.5-VL, images, reference model + KL.

``python -m rl train --config configs/rl/toy_cpu.yaml`` runs ``python -m verl.trainer.main_ppo`` (no verl
file touched) in a private Ray cluster. Everything checked is read from what verl itself writes: the
metrics of its file logger (one JSON line per step) and its actor checkpoint with HF weights. The
trained toy model sampling at temperature 1.0 gives groups with mixed rewards, hence real advantages.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
TOY_CPU = REPO / "configs" / "rl" / "toy_cpu.yaml"
PEAK_RAM_LIMIT = 8 << 30
# Weight sync from actor to rollout: verl logs |p_rollout - p_actor| per response token. Both compute in
# fp32 here, so with the actor's weights synced it is float noise (~3e-7 measured); a rollout on other
# weights is far off (it starts from random "dummy" weights; one stale step measured 1.9e-3).
MAX_PROB_GAP = 1e-4


class ProcessTree:
    """Every process under a root, sampled while it runs: peak memory (PSS) and who was there."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.seen: dict[int, float] = {}  # pid -> create_time
        self.peak_bytes = 0

    def sample(self) -> None:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                self.seen.setdefault(proc.pid, proc.create_time())
                try:
                    total += proc.memory_full_info().pss
                except (psutil.AccessDenied, AttributeError):
                    total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        self.peak_bytes = max(self.peak_bytes, total)

    def alive(self) -> list[psutil.Process]:
        left = []
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
            except psutil.NoSuchProcess:
                continue
        return left


def _toy_model_dir() -> str:
    """The trained toy model (trained once per machine, then cached)."""
    return str(pytest.importorskip("curate.toy.cache").toy_model_path())


def _write_corpus(path: Path) -> None:
    from curate.config import PromptConfig
    from curate.io.writers import write_verl_parquet
    from curate.toy.corpus import generate_corpus

    # Held-out seed; the toy model's training prompt (default system prompt) so it answers in format.
    write_verl_parquet(generate_corpus(16, seed=7, tasks=("counting", "color")), path, prompt=PromptConfig())


def _load_weights(model_dir: Path) -> dict:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


@pytest.mark.slow
def test_two_grpo_steps_with_reference_model_on_cpu(tmp_path):
    model_dir = _toy_model_dir()
    train = tmp_path / "train.parquet"
    _write_corpus(train)
    metrics_file, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "checkpoints"
    command = [
        sys.executable,
        "-m",
        "rl",
        "train",
        "--config",
        str(TOY_CPU),
        f"data.train_files={train}",  # the model is the recipe's "toy", resolved by rl train to model_dir
        "trainer.total_training_steps=2",
        "trainer.save_freq=2",
        f"trainer.default_local_dir={checkpoints}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        "actor_rollout_ref.actor.optim.lr=1e-3",  # a visible step on a tiny model
    ]
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics_file), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "train.log").open("w")
    start = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    tree = ProcessTree(psutil.Process(proc.pid))
    try:
        while proc.poll() is None:
            tree.sample()
            if time.monotonic() - start > 900:
                raise TimeoutError("GRPO run did not finish in 15 minutes")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # our own session only
        log.close()
    wall = time.monotonic() - start
    output = (tmp_path / "train.log").read_text()
    assert proc.returncode == 0, output[-6000:]
    assert f"actor_rollout_ref.model.path={model_dir} " in output.splitlines()[0]  # the printed command

    # ---- everything this run started is gone ------------------------------------------------------
    deadline = time.monotonic() + 30
    while tree.alive() and time.monotonic() < deadline:
        time.sleep(1)
    assert len(tree.seen) > 5, "the process tree was not observed"  # driver, GCS, raylet, workers...
    left = tree.alive()
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"

    # ---- verl's own metrics -------------------------------------------------------------------------
    steps = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        m = s["data"]
        assert m["training/rollout_probs_diff_valid"] == 1
        assert m["training/rollout_probs_diff_mean"] < MAX_PROB_GAP, m["training/rollout_probs_diff_mean"]
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/loss", "actor/grad_norm"):
            assert math.isfinite(m[key]), (key, m[key])
    advantages = [(s["data"]["critic/advantages/min"], s["data"]["critic/advantages/max"]) for s in steps]
    assert any(hi > 0 > lo for lo, hi in advantages), f"no group with mixed rewards: {advantages}"
    # rl.signal's effective ratio (every run logs it): > 0 exactly when some advantage is not zero
    for s, (lo, hi) in zip(steps, advantages):
        ratio = s["data"]["signal/effective_ratio"]
        assert 0 <= ratio <= 1 and (ratio > 0) == (hi > 0 > lo), (ratio, lo, hi)
        assert s["data"]["signal/groups_generated"] == 4  # no filter: the batch's 4 prompts
    trained = next(i for i, (lo, hi) in enumerate(advantages) if hi > 0 > lo)
    assert steps[trained]["data"]["actor/grad_norm"] > 0
    # KL to the reference model: 0 while the actor is the reference, > 0 once it was updated
    assert steps[0]["data"]["actor/kl_loss"] == pytest.approx(0, abs=1e-6)
    if trained == 0:
        assert steps[1]["data"]["actor/kl_loss"] > 0

    # ---- the policy changed: verl's checkpoint vs the starting model -------------------------------------
    saved = checkpoints / "global_step_2" / "actor" / "huggingface"
    before, after = _load_weights(Path(model_dir)), _load_weights(saved)
    assert before.keys() == after.keys()
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert changed, "weights identical after two GRPO steps"

    print(
        f"\n2 GRPO steps: wall {wall:.0f} s, peak RAM {tree.peak_bytes / 2**30:.2f} GiB, "
        f"{len(tree.seen)} processes, advantages {advantages}, rollout-actor prob gap "
        f"{[s['data']['training/rollout_probs_diff_mean'] for s in steps]}, {len(changed)} tensors changed"
    )
    assert tree.peak_bytes < PEAK_RAM_LIMIT
