"""The grader benchmark runs end to end on a small corpus (ours; a peer without a checkout is
reported unavailable, not fatal), so it cannot rot between the runs recorded in benchmarks/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    {"id": "a", "task": "counting", "response": "<answer>3 or 4</answer>", "ground_truth": "3", "correct": False,
     "hack": True, "klass": "hedge", "style": "countbench", "note": "hedge"},
    {"id": "b", "task": "ocr", "response": "<answer>1998</answer>", "ground_truth": "1998", "correct": True,
     "klass": "ocr", "style": "ocrbench", "note": "exact"},
    {"id": "c", "task": "grounding", "response": "<answer>[100, 100, 300, 300]</answer>",
     "ground_truth": "[100, 50, 300, 150]", "correct": True, "klass": "boxes", "style": "refcoco",
     "note": "Qwen2-VL 0-1000 answer", "context": {"image_size": [1000, 500], "answer_box_format": "norm1000"}},
]


@pytest.mark.timeout(300)
def test_bench_graders_on_a_small_corpus(tmp_path):
    corpus = tmp_path / "cases.jsonl"
    corpus.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    out = tmp_path / "graders.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_graders.py", str(corpus), "--graders", "ours", "easyr1",
         "--peers", str(tmp_path / "no-peers"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "easyr1" in run.stdout and "unavailable" in run.stdout
    result = json.loads(out.read_text())
    verdicts = {c["id"]: c["verdicts"]["ours"]["correct"] for c in result["cases"]}
    assert verdicts == {"a": False, "b": True, "c": True}
    assert result["hacks"]["ours"]["paid"] == {}
