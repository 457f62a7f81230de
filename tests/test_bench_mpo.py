"""The MPO benchmark's bookkeeping: when a stage reruns, and how a model's move from the base is counted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_mpo import changes, grpo_commands, run_stage  # noqa: E402


def _append(path: Path, text: str) -> list[str]:
    """A command that appends ``text`` to ``path`` (outside the stage directory: it counts the runs)."""
    return [sys.executable, "-c", f"open({str(path)!r}, 'a').write({text!r})"]


def test_a_stage_runs_once_per_definition(tmp_path):
    runs, stage = tmp_path / "runs.txt", tmp_path / "stage"
    commands = {"train": _append(runs, "t"), "eval": _append(runs, "e")}
    marker, ran = run_stage(stage, commands)
    assert ran and runs.read_text() == "te" and set(marker["seconds"]) == {"train", "eval"}
    (stage / "leftover").write_text("x")
    assert run_stage(stage, commands) == (marker, False)  # finished with the same commands: skipped
    assert runs.read_text() == "te" and (stage / "leftover").exists()
    _, ran = run_stage(stage, {**commands, "eval": _append(runs, "E")})  # another command: reruns all
    assert ran and runs.read_text() == "tetE" and not (stage / "leftover").exists()
    _, ran = run_stage(stage, {**commands, "eval": _append(runs, "E")}, redo=True)  # upstream reran
    assert ran and runs.read_text() == "tetEtE"


def test_a_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    runs, stage = tmp_path / "runs.txt", tmp_path / "stage"
    commands = {"train": _append(runs, "t"), "eval": [sys.executable, "-c", "raise SystemExit(3)"]}
    with pytest.raises(RuntimeError, match="stage.eval failed"):
        run_stage(stage, commands)
    assert not (stage / "stage.json").exists()
    with pytest.raises(RuntimeError):
        run_stage(stage, commands)
    assert runs.read_text() == "tt"


def _eval_file(path: Path, rows: list[tuple[str, str, bool]]) -> Path:
    samples = [{"id": i, "response": r, "correct": c} for i, r, c in rows]
    path.write_text(json.dumps({"samples": samples}))
    return path


def test_changes_from_the_base_by_hand(tmp_path):
    base = _eval_file(
        tmp_path / "base.json", [("a", "1", True), ("b", "2", False), ("c", "3", False), ("d", "4", True)]
    )
    # a: same; b: new response, now right; c: new response, still wrong; d: new response, now wrong
    after = _eval_file(
        tmp_path / "after.json", [("d", "5", False), ("a", "1", True), ("c", "7", False), ("b", "9", True)]
    )
    assert changes(base, after) == {"responses_changed": 3, "became_correct": 1, "became_wrong": 1}


def test_grpo_evaluates_the_checkpoint_verl_saves_last(tmp_path):
    commands = grpo_commands(
        tmp_path / "grpo", "toy-study", tmp_path / "t.parquet", tmp_path / "h.parquet", 2, 5
    )
    train = commands["train"]
    assert "trainer.total_training_steps=5" in train and "trainer.save_freq=5" in train
    assert f"trainer.default_local_dir={tmp_path / 'grpo' / 'checkpoints'}" in train
    assert {"data.seed=2", "actor_rollout_ref.rollout.seed=2"} <= set(train)
    assert commands["eval"][4] == str(tmp_path / "grpo" / "checkpoints" / "global_step_5")
