"""The main job end to end on CPU (smaller than the demo's defaults): every artefact it promises, and
verl 0.9.1's real GRPO trainer inside it checked from what verl itself writes.

``python -m launch.demo`` runs curation on a Ray cluster, selection, and ``python -m rl train --config
configs/rl/toy_cpu.yaml`` (``python -m verl.trainer.main_ppo``, no verl file touched; the toy
Qwen2.5-VL, images, reference model + KL) in a private Ray cluster. The GRPO checks read verl's file
logger (one JSON line per step) and its actor checkpoint with HF weights; the process tree under the
demo is watched for memory and for anything left behind.
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
import pyarrow.parquet as pq
import pytest

from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
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


def _run_watched(command: list[str], log_path: Path, timeout_s: float) -> tuple[int, ProcessTree]:
    """Run ``command`` in its own session, sampling its process tree until it exits."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        tree = ProcessTree(psutil.Process(proc.pid))
        start = time.monotonic()
        try:
            while proc.poll() is None:
                tree.sample()
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"{command[2]} did not finish in {timeout_s:.0f} s")
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)  # our own session only
                proc.wait()
    return proc.returncode, tree


def _weights(model_dir: Path) -> dict:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from curate.toy.cache import toy_model_path

    out = tmp_path / "demo"
    command = [
        sys.executable, "-m", "launch.demo", "--out", str(out), "--samples", "25", "--heldout", "10",
        "--steps", "2",
        # The demo's medium + hard rows are mostly answered right at temperature 1.0, so 2 steps of 4
        # groups may all share one reward; at 1.5 some answers break: groups with advantages for sure.
        "--train-override", "actor_rollout_ref.rollout.temperature=1.5",
    ]  # fmt: skip
    returncode, tree = _run_watched(command, tmp_path / "demo.log", timeout_s=900)
    output = (tmp_path / "demo.log").read_text()
    assert returncode == 0, output[-6000:]
    assert "hardmode demo: done" in output
    model_dir = toy_model_path()
    assert f"actor_rollout_ref.model.path={model_dir} " in output  # rl train resolved the recipe's "toy"
    assert "actor_rollout_ref.rollout.temperature=1.5" in output  # --train-override reached verl

    # ---- everything the demo started is gone, and it fitted in memory ------------------------------------
    deadline = time.monotonic() + 30
    while tree.alive() and time.monotonic() < deadline:
        time.sleep(1)
    assert len(tree.seen) > 5, "the process tree was not observed"  # driver, GCS, raylet, workers...
    left = tree.alive()
    for p in left:
        p.kill()
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"
    assert tree.peak_bytes < PEAK_RAM_LIMIT, tree.peak_bytes

    # ---- curation, report, selection -----------------------------------------------------------------------
    annotated = pq.ParquetDataset(str(out / "curate" / "annotated")).read(
        columns=["id", "status", "pism_bucket", "cmab_bucket"]
    )
    assert sorted(annotated["id"].to_pylist()) == sorted(generate_corpus(25)["id"].to_pylist())
    for png in ["buckets_pism.png", "lambda_star.png", "pc_curves.png", "buckets_cmab.png", "rho.png"]:
        assert (out / "curate" / "report" / png).stat().st_size > 1000

    manifest = json.loads((out / "select" / "manifest.json").read_text())
    selected = pq.read_table(out / "select" / "grpo" / "verl" / "train.parquet")
    assert selected.num_rows == manifest["subsets"]["grpo"]["train_rows"] > 0
    buckets = {json.loads(json.dumps(e))["pism_bucket"] for e in selected["extra_info"].to_pylist()}
    assert buckets <= {"medium", "hard"}

    # ---- verl's GRPO: its own metrics ------------------------------------------------------------------
    steps = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
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
    saved = out / "rl" / "checkpoints" / "global_step_2" / "actor" / "huggingface"
    before, after = _weights(model_dir), _weights(saved)
    assert before.keys() == after.keys()
    assert [k for k in before if not (before[k] == after[k]).all()], "weights identical after two GRPO steps"

    summary = json.loads((out / "summary.json").read_text())
    for when in ("heldout_before", "heldout_after"):
        assert summary[when]["n"] == 10 and 0.0 <= summary[when]["accuracy"] <= 1.0
    assert summary["curation"]["rows_in"] == 25
    print(
        f"\ndemo: peak RAM {tree.peak_bytes / 2**30:.2f} GiB, {len(tree.seen)} processes, "
        f"advantages {advantages}"
    )
