"""``python -m curate grade``: every line comes back graded or with an error, never dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from curate.__main__ import main
from curate.grading.cli import encode, grade_record

LINES = [
    {"id": 1, "task": "counting", "response": "<think>See.</think><answer>3</answer>", "ground_truth": "3"},
    {"id": 2, "task": "color", "response": "<answer>blue</answer>", "ground_truth": "yellow"},
    "this line is not JSON",
    {"id": 3, "task": "no_such_task", "response": "<answer>3</answer>", "ground_truth": "3"},
    "",
    {
        "id": 4,
        "task": "grounding",
        "response": "<answer>[0, 0, 10, 10]</answer>",
        "ground_truth": [[0, 0, 10, 20]],
    },
    [1, 2, 3],
    {"id": 5, "task": "ocr", "response": "<answer>YZXT</answer>"},
    {"id": 6, "task": "ocr", "response": 42, "ground_truth": "YZXT"},
    {
        "id": 7,
        "task": "grounding",
        "verifier": "detection",
        "response": "<answer>[0, 0, 10, 10]</answer>",
        "ground_truth": "[{'bbox_2d': [0, 0, 10, 10], 'label': 'dog'}]",
    },
    '{"id": 8, "task": "counting", "response": "<answer>\\ud800 3</answer>", "ground_truth": "4"}',
]


def write_input(path: Path) -> Path:
    path.write_text("\n".join(item if isinstance(item, str) else json.dumps(item) for item in LINES) + "\n")
    return path


def test_grade_file(tmp_path, capsys):
    out = tmp_path / "graded.jsonl"
    assert main(["grade", str(write_input(tmp_path / "in.jsonl")), "-o", str(out)]) == 1  # some lines failed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10  # every non-blank line, in order

    assert rows[0] == {
        **LINES[0],
        "score": 1.0,
        "correct": True,
        "partial": 1.0,
        "format": 1.0,
        "grader": "counting",
        "route": "task 'counting'",
        "extracted": "3",
    }
    assert rows[1] == {
        **LINES[1],
        "score": 0.0,
        "correct": False,
        "partial": 0.0,
        "format": 0.0,
        "grader": "short_answer",
        "route": "task 'color'",
        "extracted": "blue",
    }
    assert rows[2]["line"] == 3 and rows[2]["raw"] == "this line is not JSON"
    assert "invalid JSON" in rows[2]["error"]
    assert rows[3]["id"] == 3 and "no_such_task" in rows[3]["error"] and "score" not in rows[3]
    # IoU 100/200: correct (>= 0.5), the IoU itself as partial credit
    assert (rows[4]["score"], rows[4]["partial"], rows[4]["correct"], rows[4]["grader"]) == (1.0, 0.5, True, "grounding")
    assert rows[5] == {"raw": [1, 2, 3], "error": "expected a JSON object, got list"}
    assert rows[6]["id"] == 5 and rows[6]["error"] == "missing field(s): ground_truth"
    assert rows[7]["id"] == 6 and "response must be a string" in rows[7]["error"]
    # Orsta's detection verifier on a grounding task
    assert rows[8]["score"] == 1.0 and rows[8]["grader"] == "grounding" and "overruled" in rows[8]["route"]
    # a lone surrogate (valid JSON, not encodable as UTF-8) is graded and written back escaped
    assert rows[9]["response"] == "<answer>\ud800 3</answer>" and rows[9]["correct"] is False

    summary = capsys.readouterr().err
    assert "lines 10  graded 5  errors 5  mean score 0.6000" in summary  # (1 + 0 + 1 + 1 + 0) / 5
    assert "counting             n=2       accuracy 0.5000" in summary
    assert "grounding            n=2       accuracy 1.0000  mean score 1.0000" in summary


def test_grade_to_stdout_exits_0_without_errors(tmp_path, capsys):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(LINES[0]) + "\n")
    assert main(["grade", str(path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["correct"] is True
    assert "lines 1  graded 1  errors 0" in captured.err


def test_grade_reads_stdin_as_a_module():
    run = subprocess.run(
        [sys.executable, "-m", "curate", "grade", "-"],
        input=json.dumps({"task": "math", "response": "\\boxed{0.5}", "ground_truth": "\\frac{1}{2}"}) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    row = json.loads(run.stdout)
    assert (row["score"], row["correct"], row["extracted"]) == (1.0, True, "0.5")
    assert "math" in run.stderr


def test_lines_nested_past_any_depth_are_errors_and_later_lines_are_graded(tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(["[" * 100_000 + "]" * 100_000, json.dumps(LINES[0])]) + "\n")
    out = tmp_path / "graded.jsonl"
    assert main(["grade", str(path), "-o", str(out)]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["line"] == 1 and rows[0]["error"] == "invalid JSON: nested too deeply to read"
    assert rows[1]["correct"] is True  # the lines after it are still graded
    assert "lines 2  graded 1  errors 1" in capsys.readouterr().err


def test_a_kept_field_too_deep_to_write_becomes_an_error_line():
    meta: object = 0
    for _ in range(100_000):
        meta = [meta]
    graded = grade_record({**LINES[0], "meta": meta})
    assert graded["correct"] is True
    line, written = encode(graded)
    assert json.loads(line) == written == {"task": "counting", "ground_truth": "3",
                                           "error": "a field is nested too deeply to write back"}
