"""The main job end to end on CPU (smaller than the demo's defaults): every artefact it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "launch.demo", "--out", str(out), "--samples", "25", "--heldout", "10",
         "--steps", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "hardmode demo: done" in result.stdout

    annotated = pq.ParquetDataset(str(out / "curate" / "annotated")).read(columns=["id", "status", "pism_bucket",
                                                                                   "cmab_bucket"])
    assert sorted(annotated["id"].to_pylist()) == sorted(generate_corpus(25)["id"].to_pylist())
    for png in ["buckets_pism.png", "lambda_star.png", "pc_curves.png", "buckets_cmab.png", "rho.png"]:
        assert (out / "curate" / "report" / png).stat().st_size > 1000

    manifest = json.loads((out / "select" / "manifest.json").read_text())
    selected = pq.read_table(out / "select" / "grpo" / "verl" / "train.parquet")
    assert selected.num_rows == manifest["subsets"]["grpo"]["train_rows"] > 0
    buckets = {json.loads(json.dumps(e))["pism_bucket"] for e in selected["extra_info"].to_pylist()}
    assert buckets <= {"medium", "hard"}

    steps = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert (out / "rl" / "checkpoints" / "global_step_2" / "actor" / "huggingface" / "config.json").exists()

    summary = json.loads((out / "summary.json").read_text())
    for when in ("heldout_before", "heldout_after"):
        assert summary[when]["n"] == 10 and 0.0 <= summary[when]["accuracy"] <= 1.0
    assert summary["curation"]["rows_in"] == 25
