"""The prepared GPU check (``launch/gpu_check.sh``) in its CPU form, so CI keeps it from rotting.

On a machine without CUDA every GPU-only stage must be reported as skipped with a reason, the stages
that run on CPU (PISM on the transformers engine, the CMAB probe under eager and sdpa against
transformers' own attention maps, the GRPO recipe's command through ``--dry-run`` and verl's checks)
must pass, and the JSON must carry the figures. The pure helpers are tested directly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from launch import gpu_check as gc

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
CPU_STAGES = ("model", "pism_transformers", "cmab_generate", "cmab_probe_eager", "cmab_probe_sdpa")
GPU_ONLY = ("pism_vllm", "cmab_probe_flash_attention_2", "curate_run")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# ---- the helpers -------------------------------------------------------------------------------------


def test_table_and_exit_code():
    rows = [
        gc.Row("model", gc.PASS, "trained toy model", {"layers": 2, "params_M": 0.8234}),
        gc.Row("pism_vllm", gc.SKIPPED, "no CUDA"),
        gc.Row("grpo", gc.DRY_RUN_OK, "real run skipped: no CUDA", {"dry_run_s": 1.73}),
    ]
    table = gc.format_table(rows)
    lines = table.splitlines()
    assert lines[0].split("|")[0].strip() == "stage" and set(lines[1]) <= {"-", "+"}
    assert "pass (trained toy model)" in lines[2] and "layers=2, params_M=0.823" in lines[2]
    assert "skipped (no CUDA)" in lines[3] and "dry-run ok" in lines[4]
    assert len({line.replace("+", "|").index("|") for line in lines}) == 1  # aligned columns
    assert gc.exit_code(rows) == 0
    assert gc.exit_code([*rows, gc.Row("grpo", gc.FAIL, "boom")]) == 1
    with pytest.raises(ValueError, match="status"):
        gc.Row("x", "ok")


def test_skip_reasons_name_what_is_missing():
    full = {"cuda": True, "vllm": True, "ray": True, "verl": True}
    assert all(gc.skip_reason(stage, full) is None for stage in gc.STAGES)
    bare = {"cuda": False, "vllm": False, "ray": False, "verl": False}
    assert gc.skip_reason("model", bare) is None and gc.skip_reason("cmab", bare) is None
    assert gc.skip_reason("pism_transformers", bare) is None
    assert gc.skip_reason("pism_vllm", bare) == "no CUDA; vllm not importable"
    assert gc.skip_reason("curate_run", {**full, "ray": False}) == "ray not importable"
    assert gc.skip_reason("grpo", {**full, "cuda": False, "vllm": False}) == "no CUDA; vllm not importable"


def test_tolerances_are_tight_in_fp32_and_loose_in_bf16():
    fp32, bf16 = gc.tolerances("float32"), gc.tolerances("bfloat16")
    assert fp32["mass_atol"] <= 1e-5 and fp32["rho_rtol"] <= 1e-4
    assert bf16["mass_atol"] > fp32["mass_atol"] and bf16["rho_rtol"] > fp32["rho_rtol"]


def test_small_helpers(tmp_path):
    assert gc.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert gc.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert gc.first_difference([1, 2], [1, 2, 3]) == 2
    assert gc.count_buckets(["hard", "unsolved", "hard"]) == "hard:2/unsolved:1"
    assert gc.outcome(None) == "timed out" and gc.outcome(3) == "exit code 3"
    hits = [gc.hash_correct(f"answer {i}", 8) for i in range(800)]
    assert hits == [gc.hash_correct(f"answer {i}", 8) for i in range(800)] and 60 < sum(hits) < 140
    log = tmp_path / "x.log"
    log.write_text("starting\nTraceback (most recent call last):\n  File x\n"
                   "RuntimeError: Expected all tensors to be on the same device\nexiting\n")
    assert gc.log_tail(log) == "RuntimeError: Expected all tensors to be on the same device"
    log.write_text("a\nb\nc\nd\n")
    assert gc.log_tail(log) == "b / c / d"
    metrics = tmp_path / "m.jsonl"
    lines = [{"step": 0, "data": {"val-core/acc": 0.1}}, {"step": 1, "data": {"timing_s/step": 3.5}},
             {"step": 2, "data": {"timing_s/step": 2.5, "critic/score/mean": 0.4}}]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [s["timing_s/step"] for s in gc.training_steps(metrics)] == [3.5, 2.5]
    assert gc.training_steps(tmp_path / "missing.jsonl") == []


def test_replay_engine_generates_each_request_once():
    from curate.engines.base import Completion, GenerationRequest, GenerationResult, SamplingParams

    calls = []

    class Counting:
        def generate(self, requests, params):
            calls.append(len(requests))
            return [GenerationResult([Completion(f"s{r.seed}", 2, "stop")]) for r in requests]

        def close(self):
            pass

    engine = gc.ReplayEngine(Counting())
    requests = [GenerationRequest([{"role": "user", "content": "q"}], seed=s) for s in (1, 2)]
    first = engine.generate(requests, SamplingParams())
    again = engine.generate([requests[1], requests[0]], SamplingParams())
    assert calls == [2] and [r.completions[0].text for r in again] == ["s2", "s1"]
    assert again[1] is first[0] and engine.generations == 2 and engine.tokens == 4


def test_curate_and_grpo_commands_compose(tmp_path):
    """The curate run's overrides pass the config schema (what the skipped stage still checks)."""
    model = tmp_path / "tiny"  # a local model path must exist: the config checks it at load
    model.mkdir()
    for vllm in (False, True):
        overrides = gc.curate_overrides(str(model), tmp_path / "out", 8, vllm)
        gc.check_curate_config(overrides)
        assert "ray.num_gpus=1" in overrides
    overrides = gc.grpo_overrides("/m", tmp_path / "t.parquet", tmp_path / "v.parquet", tmp_path / "c")
    keys = [o.split("=", 1)[0] for o in overrides]
    assert len(keys) == len(set(keys))
    assert {"trainer.n_gpus_per_node=1", "trainer.total_training_steps=2",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1"} <= set(overrides)


def test_a_hung_stage_fails_alone_and_names_its_timeout(tmp_path):
    """A stage past its timeout is killed and reported failed with why; the next stage still runs (and
    fails, naming the model it lacks); the exit code says so."""
    out = tmp_path / "result.json"
    args = ["--out", str(out), "--work", str(tmp_path / "work"), "--stages", "model,pism_transformers",
            "--timeout-scale", "0.0005"]
    assert gc.main(args) == 1
    result = json.loads(out.read_text())
    model, pism = result["stages"]
    assert model["stage"] == "model" and model["status"] == gc.FAIL and "timed out" in model["reason"]
    assert pism["stage"] == "pism_transformers" and pism["status"] == gc.FAIL
    assert "timed out" in pism["reason"] or "no model" in pism["reason"]
    assert result["ok"] is False


# ---- the CMAB stage on the device path, with random weights --------------------------------------------


@pytest.fixture(scope="module")
def random_model_work(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check_work")
    gc.stage_model(argparse.Namespace(model="random"), work)
    return work


def _args(samples: int = 2):
    return argparse.Namespace(samples=samples, vllm_dtype="float32", timeout_scale=1.0, grpo_override=[])


@pytest.mark.slow
def test_cmab_stage_with_random_weights_probes_through_the_scorer(random_model_work):
    spec = json.loads((random_model_work / "model.json").read_text())
    assert spec["kind"] == "random" and spec["head_dim"] >= 32
    rows = {r.stage: r for r in gc.stage_cmab(_args(), random_model_work)}
    assert rows["cmab_generate"].status == gc.PASS and rows["cmab_generate"].figures["probed"] == 2
    for impl in ("eager", "sdpa"):
        assert rows[f"cmab_probe_{impl}"].status == gc.PASS, rows[f"cmab_probe_{impl}"].reason
    assert rows["cmab_probe_eager"].figures["vs_output_attentions"] <= 1e-5


@pytest.mark.slow
def test_pism_stage_with_random_weights_compares_schedules_on_hashed_grades(random_model_work):
    (row,) = gc.stage_pism(_args(samples=4), random_model_work, "transformers")
    assert row.status == gc.PASS and row.figures["grading"].startswith("hash")
    assert row.figures["generations_early_exit"] < row.figures["generations_full"]


@pytest.mark.slow
def test_cmab_stage_reports_a_probe_path_error_per_attention_kernel(random_model_work):
    """What CMAB on CUDA did (response ids on the CPU, the prompt on the GPU): each probe row fails with
    the error, generation still passes, and nothing raises out of the stage."""
    import curate.scoring.probing

    error = RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu")
    with mock.patch.object(curate.scoring.probing, "pack_responses", side_effect=error):
        rows = {r.stage: r for r in gc.stage_cmab(_args(), random_model_work)}
    assert rows["cmab_generate"].status == gc.PASS
    for impl in ("eager", "sdpa"):
        assert rows[f"cmab_probe_{impl}"].status == gc.FAIL
        assert "same device" in rows[f"cmab_probe_{impl}"].reason


# ---- the command, end to end -------------------------------------------------------------------------


def test_help_lists_the_stages():
    result = subprocess.run(["bash", "launch/gpu_check.sh", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for stage in gc.STAGES:
        assert stage in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(_has_cuda(), reason="the CPU form of the check")
def test_the_check_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "result.json"
    command = ["bash", "launch/gpu_check.sh", "--out", str(out), "--work", str(tmp_path / "work")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage" in result.stdout and "| figures" in result.stdout
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["environment"]["cuda"] is False
    stages = {s["stage"]: s for s in data["stages"]}
    assert list(stages) == [name for names in gc.STAGES.values() for name in names]
    assert not [s for s in stages.values() if s["status"] == gc.FAIL]
    for name in CPU_STAGES:
        assert stages[name]["status"] == gc.PASS, stages[name]
    for name in GPU_ONLY:
        assert stages[name]["status"] == gc.SKIPPED and "no CUDA" in stages[name]["reason"]
    assert stages["curate_run"]["reason"].endswith("config checked")
    if data["environment"]["verl"]:
        assert stages["grpo"]["status"] == gc.DRY_RUN_OK and "no CUDA" in stages["grpo"]["reason"]
    # The figures the GPU run will fill in, measured here on CPU.
    pism = stages["pism_transformers"]["figures"]
    assert pism["gen_per_s"] > 0 and pism["generations_early_exit"] <= pism["generations_full"]
    assert stages["cmab_generate"]["figures"]["tok_per_s"] > 0
    for impl in ("eager", "sdpa"):
        assert stages[f"cmab_probe_{impl}"]["figures"]["ms_per_sample"] > 0
    assert stages["cmab_probe_eager"]["figures"]["vs_output_attentions"] <= 1e-5
    assert stages["cmab_probe_sdpa"]["figures"]["vs_eager_mass"] <= 1e-5
    assert data["table"] in result.stdout
