"""``python -m rl iterate`` (rl.iterate): what a round keeps, and resuming per round.

The keep rule is checked on hand-made graded responses. The bookkeeping runs the real generation
(toy model) with the SFT and eval commands replaced by a recorder that writes what they would (a
checkpoint, an eval summary): which steps run, which are skipped, and what every command was given.
verl's SFT on CPU itself is test_iterate's slow end-to-end test and test_rl_recipes' dry runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.reward_model import tiny_reward_model

from curate.config import ConfigError, load_structured
from rl.iterate import Graded, IterateConfig, Iteration, KeepSection, keep_responses

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "rl" / "toy_iterate.yaml"


def _graded(sid: str, task: str, outcomes: list[tuple[str, bool, float]]) -> Graded:
    return Graded(
        sid,
        task,
        [{"role": "user", "content": "<image>How many?"}],
        [b"png"],
        "3",
        "toy",
        [{"text": t, "correct": c, "reward": r, "acc": float(c)} for t, c, r in outcomes],
    )


def test_keep_takes_responses_at_tau_and_wrong_samples_with_their_reference():
    samples = [
        _graded("a", "counting", [("x", True, 2.0), ("x", True, 2.0), ("y", True, 1.0), ("z", False, 1.0)]),
        _graded("b", "counting", [("p", False, 1.0), ("q", False, 0.0)]),  # wholly wrong
        _graded("c", "ocr", [("m", True, 2.0), ("n", True, 2.0)]),
    ]
    keep = KeepSection(
        tau=[2.0], by="reward", max_per_sample=0, reference_template="<answer>{ground_truth}</answer>"
    )
    rows, counts = keep_responses(samples, keep, 2.0)
    got = [(r["extra_info"]["id"], r["messages"][-1]["content"], r["extra_info"]["source"]) for r in rows]
    # a: "x" once (distinct texts), "y" is correct but below tau; b: the reference; c: both
    assert got == [
        ("a", "x", "response"),
        ("b", "<answer>3</answer>", "reference"),
        ("c", "m", "response"),
        ("c", "n", "response"),
    ]
    assert counts["kept_responses"] == {"counting": 1, "ocr": 2}
    assert counts["reference_samples"] == {"counting": 1, "ocr": 0}
    assert counts["rows"] == 4 and counts["correct_rate"] == pytest.approx(5 / 8)
    assert all(r["messages"][0] == {"role": "user", "content": "<image>How many?"} for r in rows)
    assert rows[0]["images"] == [{"bytes": b"png", "path": None}]

    one = KeepSection(tau=[1.0], by="acc", max_per_sample=1)
    rows, counts = keep_responses(samples, one, 1.0)
    assert [r["messages"][-1]["content"] for r in rows] == [
        "x",
        "3",
        "m",
    ]  # first correct by seed; bare truth
    assert counts["kept_responses"] == {"counting": 1, "ocr": 1}


def test_a_sample_with_a_correct_but_unkept_response_gets_no_reference():
    # correct (so not "answered wrongly") but its reward (format missing) is below tau: nothing kept
    rows, counts = keep_responses([_graded("a", "counting", [("3", True, 1.0)])], KeepSection(), 2.0)
    assert rows == [] and counts["reference_samples"] == {"counting": 0}


def test_tau_per_round_repeats_its_last_value(tmp_path):
    cfg = _cfg(tmp_path, "keep.tau=[1.0,1.5]", "rounds=3")
    assert [cfg.tau(t) for t in (1, 2, 3)] == [1.0, 1.5, 1.5]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rounds=0", "rounds"),
        ("generation.k=0", "generation.k"),
        ("keep.by=vibes", "keep.by"),
        ("keep.reference_template=oops", "keep.reference_template"),
        ("sft.recipe=nope.yaml", "sft.recipe"),
        ("keep.tau=[]", "keep.tau"),
    ],
)
def test_config_mistakes_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        _cfg(tmp_path, override)


def _cfg(tmp_path: Path, *overrides: str) -> IterateConfig:
    return load_structured(
        IterateConfig,
        RECIPE,
        [
            f"train_files={tmp_path / 'train.parquet'}",
            f"heldout={tmp_path / 'heldout.parquet'}",
            f"output={tmp_path / 'out'}",
            *overrides,
        ],
    )


class Recorder:
    """Stands in for the ``rl sft`` / ``rl eval`` subprocesses: records the command, writes its output."""

    def __init__(self, base: str):
        self.base, self.commands = base, []

    def __call__(self, command: list[str], log_path: Path) -> int:
        argv = command[2:]  # after "python -m"
        self.commands.append(argv)
        args = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
        if argv[:2] == ["rl", "sft"]:
            saved = Path(args["trainer.default_local_dir"]) / "global_step_3" / "huggingface"
            shutil.copytree(self.base, saved, ignore=shutil.ignore_patterns("processing_*.py"))
            (saved.parent.parent / "latest_checkpointed_iteration.txt").write_text("3")
        elif argv[:2] == ["rl", "eval"]:
            out = Path(argv[argv.index("--out") + 1])
            out.write_text(json.dumps({"summary": {"overall": {"accuracy": 0.5, "n": 8}}}))
        return 0


def test_rounds_run_once_and_a_change_reruns_from_the_step_it_touches(tmp_path, capsys):
    import pyarrow.parquet as pq

    from curate.toy.corpus import generate_corpus

    pq.write_table(generate_corpus(6, seed=3), tmp_path / "train.parquet")
    pq.write_table(generate_corpus(4, seed=4), tmp_path / "heldout.parquet")
    cfg = _cfg(tmp_path, "generation.k=2", "generation.max_tokens=32")
    recorder = Recorder(Iteration(cfg).base)
    assert Iteration(cfg, recorder).run()
    names = [c[:2] for c in recorder.commands]
    assert names == [["rl", "eval"], ["rl", "sft"], ["rl", "eval"], ["rl", "sft"], ["rl", "eval"]]
    out = tmp_path / "out"
    # round 2 starts from round 1's model, which has the base model's processor back
    sft1, sft2 = recorder.commands[1], recorder.commands[3]
    assert f"model.path={Iteration(cfg).base}" in sft1 and f"model.path={out / 'round-1' / 'model'}" in sft2
    assert (out / "round-1" / "model" / "processing_hardmode.py").is_file()
    assert f"data.train_files={out / 'round-2' / 'sft_data.parquet'}" in sft2
    for t in (1, 2):
        kept = json.loads((out / f"round-{t}" / "kept.json").read_text())
        rows = pq.read_table(out / f"round-{t}" / "sft_data.parquet")
        assert kept["samples"] == 6 and kept["rows"] == rows.num_rows > 0
        lines = (out / f"round-{t}" / "responses.jsonl").read_text().splitlines()
        assert len(lines) == 6 and all(len(json.loads(x)["responses"]) == 2 for x in lines)
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2] and report["rounds"][2]["eval"]["overall"][
        "n"
    ] == 8
    assert "| 2 | 2.0 |" in (out / "report.md").read_text()

    recorder.commands.clear()
    capsys.readouterr()
    assert Iteration(cfg, recorder).run()
    assert recorder.commands == [] and "9 steps, 9 finished before, 0 run" in capsys.readouterr().out

    # A new threshold changes what round 1 keeps: generation stays, keep / sft / eval and round 2 rerun.
    generated = (out / "round-1" / "responses.jsonl").stat().st_mtime_ns
    assert Iteration(
        _cfg(tmp_path, "generation.k=2", "generation.max_tokens=32", "keep.tau=[1.0]"), recorder
    ).run()
    assert (out / "round-1" / "responses.jsonl").stat().st_mtime_ns == generated
    assert [c[:2] for c in recorder.commands] == [
        ["rl", "sft"],
        ["rl", "eval"],
        ["rl", "sft"],
        ["rl", "eval"],
    ]


def test_a_failed_command_stops_the_loop_and_the_rerun_goes_on_from_it(tmp_path):
    import pyarrow.parquet as pq

    from curate.toy.corpus import generate_corpus

    pq.write_table(generate_corpus(4, seed=3), tmp_path / "train.parquet")
    pq.write_table(generate_corpus(4, seed=4), tmp_path / "heldout.parquet")
    cfg = _cfg(tmp_path, "generation.k=2", "generation.max_tokens=32", "rounds=1")
    recorder = Recorder(Iteration(cfg).base)

    def failing_sft(command, log_path):
        return 1 if command[2:4] == ["rl", "sft"] else recorder(command, log_path)

    assert not Iteration(cfg, failing_sft).run()
    assert not (tmp_path / "out" / "steps" / "round-1.sft.json").exists()
    recorder.commands.clear()
    assert Iteration(cfg, recorder).run()
    assert [c[:2] for c in recorder.commands] == [["rl", "sft"], ["rl", "eval"]]  # generation not redone


@pytest.mark.parametrize("recipe", ["toy_iterate.yaml", "qwen25vl7b_iterate.yaml"])
def test_dry_run_checks_the_stages_against_verl(tmp_path, recipe, capsys):
    import argparse

    from rl.iterate import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = [f"train_files={tmp_path}/t.parquet", f"heldout={tmp_path}/h.parquet", f"output={tmp_path}/out"]
    if recipe.startswith("qwen"):
        given.append(f"model={tmp_path}/qwen")
    args = parser.parse_args(["--config", str(REPO / "configs" / "rl" / recipe), "--dry-run", *given])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "verl.trainer.sft_trainer_ray" in out and "round-1.sft" in out
    assert ("verl.trainer.main_ppo" in out) == recipe.startswith("qwen")  # the 7B recipe ends with GRPO
    bad = parser.parse_args(
        [
            "--config",
            str(REPO / "configs" / "rl" / recipe),
            "--dry-run",
            *given,
            "sft.overrides=[optim.learning_rate=1]",
        ]
    )
    assert main(bad) == 2 and "optim.learning_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_one_round_on_the_toy_model_with_verls_sft_on_cpu(tmp_path):
    """The real loop: generation, verl's SFT trainer on CPU (rl.cpu), rl eval of the new model."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from curate.toy.corpus import generate_corpus

    pq.write_table(generate_corpus(10, seed=21), tmp_path / "train.parquet")
    pq.write_table(generate_corpus(10, seed=22), tmp_path / "heldout.parquet")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "rl",
        "iterate",
        "--config",
        str(RECIPE),
        "rounds=1",
        "generation.k=2",
        f"train_files={tmp_path / 'train.parquet'}",
        f"heldout={tmp_path / 'heldout.parquet'}",
        f"output={out}",
        "sft.overrides=[data.train_batch_size=4,data.micro_batch_size_per_gpu=4]",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _logs(out)
    report = json.loads((out / "report.json").read_text())
    before, after = report["rounds"][0]["eval"]["overall"], report["rounds"][1]["eval"]["overall"]
    assert before["n"] == after["n"] == 10 and after["generation_errors"] == 0
    kept = report["rounds"][1]["kept"]
    assert kept["rows"] == pq.read_metadata(out / "round-1" / "sft_data.parquet").num_rows > 0
    # verl trained: the round's weights differ from the base model's
    from safetensors.torch import load_file

    base = load_file(Path(Iteration(_cfg(tmp_path)).base) / "model.safetensors")
    tuned = load_file(out / "round-1" / "model" / "model.safetensors")
    assert any(not (base[k] == tuned[k]).all() for k in base if k in tuned)


def _logs(out: Path) -> str:
    return (
        "".join(p.read_text()[-2000:] for p in sorted((out / "logs").glob("*.log")))
        if (out / "logs").is_dir()
        else ""
    )


def test_reward_model_scores_each_response_as_a_lone_forward_would(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rl.iterate import RewardModelSection, score_with_reward_model

    path = tiny_reward_model(tmp_path / "rm")
    prompt = [{"role": "user", "content": "<image>How many circles?"}]
    items = [
        (prompt, [{"text": "<answer>3</answer>"}, {"text": "I think there are quite a lot, maybe 12"}]),
        ([{"role": "user", "content": "Read it"}], [{"text": "AB"}]),
    ]
    score_with_reward_model(RewardModelSection(path=str(path), batch_size=2, device="cpu"), items)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for turns, responses in items:
        for r in responses:
            text = tokenizer.apply_chat_template(
                [*turns, {"role": "assistant", "content": r["text"]}], tokenize=False
            )
            with torch.no_grad():
                alone = model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()
            assert r["model"] == pytest.approx(alone, abs=1e-5)
    assert len({r["model"] for _, rs in items for r in rs}) == 3  # the scores differ: the check bites


def test_keep_by_reward_model_with_and_without_the_graders_veto():
    samples = [_graded("a", "counting", [("x", True, 2.0), ("y", False, 0.0)])]
    samples[0].responses[0]["model"], samples[0].responses[1]["model"] = 0.2, 0.9
    rows, _ = keep_responses(samples, KeepSection(by="model", max_per_sample=0), 0.5)
    assert rows == []  # the one scoring >= 0.5 is wrong; the correct one scores too low
    rows, _ = keep_responses(samples, KeepSection(by="model", max_per_sample=0, require_correct=False), 0.5)
    assert [r["messages"][-1]["content"] for r in rows] == ["y"]
    rows, _ = keep_responses(samples, KeepSection(by="model", max_per_sample=0), 0.1)
    assert [r["messages"][-1]["content"] for r in rows] == ["x"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ((), "keep.reward_model.path"),
        (
            ("keep.reward_model.path=/rm", "keep.reward_model.base_url=http://h:8000"),
            "keep.reward_model.base_url",
        ),
    ],
)
def test_keep_by_model_needs_exactly_one_reward_model(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}': keep.by=model needs exactly one of"):
        _cfg(tmp_path, "keep.by=model", *overrides)
    for one in overrides:
        assert _cfg(tmp_path, "keep.by=model", one).keep.reward_model


def test_served_reward_model_retries_then_fails_naming_the_endpoint(monkeypatch):
    """Against a scripted server: what is sent, the transient errors retried, a lasting one reported."""
    from support.scripted_server import Reply, ScriptedServer

    from rl.iterate import RewardModelSection, StepFailed, score_with_reward_model

    def respond(req, calls):
        if calls < 2:  # two 503s for every response's first tries
            return Reply(503, {"message": "warming up"})
        score = len(req.body["messages"][-1]["content"])
        return Reply(body={"data": [{"index": 0, "label": "LABEL_0", "probs": [score], "num_classes": 1}]})

    monkeypatch.setenv("HARDMODE_TEST_KEY", "sk-rm")
    prompt = [{"role": "user", "content": "<image>How many?"}]
    items = [(prompt, [{"text": "abc"}])]
    with ScriptedServer(respond) as server:
        cfg = RewardModelSection(
            base_url=server.base_url, model="rm", api_key_env="HARDMODE_TEST_KEY", max_retries=2, batch_size=1
        )
        score_with_reward_model(cfg, items)
    assert items[0][1][0]["model"] == 3.0
    assert [r.path for r in server.received] == ["/classify"] * 3  # a trailing /v1 dropped
    assert server.received[-1].body == {
        "messages": [*prompt, {"role": "assistant", "content": "abc"}],
        "use_activation": False,
        "model": "rm",
    }
    assert server.received[-1].headers["Authorization"] == "Bearer sk-rm"
    with ScriptedServer(lambda req, calls: Reply(503, {"message": "down"})) as server:
        cfg = RewardModelSection(base_url=server.base_url, max_retries=1)
        with pytest.raises(StepFailed, match=r"reward model at http://127.*keep.reward_model.base_url.*down"):
            score_with_reward_model(cfg, [(prompt, [{"text": "abc"}])])
