"""python -m rl eval: checkpoints (HF dirs, verl FSDP shards through verl's merger), data, grading.

The reference for accuracy is computed independently: transformers' own ``generate`` one sample at a
time on the prompt the toy model was trained with, graded by ``curate.grading``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from curate import schema as S
from curate.config import PromptConfig
from rl.eval import EvalError, load_samples, resolve_checkpoint, summarize, verl_messages

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
TASKS = ("color", "grounding")  # the toy tasks with a clear margin over answering blindly
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def toy_model() -> str:
    cache = pytest.importorskip("curate.toy.cache")
    return str(cache.toy_model_path())


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, list]:
    """60 toy samples of a seed the toy model never trained on, as our verl export."""
    from curate.io import write_verl_parquet
    from curate.toy.corpus import generate_corpus, iter_samples

    path = tmp_path_factory.mktemp("eval") / "val.parquet"
    write_verl_parquet(generate_corpus(60, seed=7, tasks=TASKS), path, prompt=PromptConfig())
    return path, list(iter_samples(60, 7, TASKS))


def _run_eval(argv: list[str]) -> dict:
    from rl.__main__ import main

    assert main(["eval", *argv]) == 0
    out = argv[argv.index("--out") + 1]
    return json.loads(Path(out).read_text())


def _direct_correct(model_dir: str, samples) -> dict[str, tuple[bool, str]]:
    """Greedy transformers generate, one sample at a time, on the training prompt; graded directly."""
    import torch
    from PIL import Image

    from curate.grading import grade
    from curate.modeling import load_model, load_processor
    from curate.scoring.prompts import build_messages

    model, processor = load_model(model_dir, device="cpu"), load_processor(model_dir)
    out = {}
    for s in samples:
        text = processor.apply_chat_template(
            build_messages(s.question, 1, PromptConfig()), tokenize=False, add_generation_prompt=True
        )
        inputs = processor(text=[text], images=[Image.fromarray(s.image)], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        response = processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        out[s.id] = (grade(s.task, response, s.answer).correct, response)
    return out


def test_eval_of_the_trained_toy_model_matches_a_direct_computation(toy_model, held_out, tmp_path):
    data, samples = held_out
    result = _run_eval(
        [
            "toy",
            str(data),
            "--max-tokens",
            str(MAX_TOKENS),
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    direct = _direct_correct(toy_model, samples)
    got = {r["id"]: r for r in result["samples"]}
    assert set(got) == set(direct)
    assert {i: r["correct"] for i, r in got.items()} == {i: c for i, (c, _) in direct.items()}
    assert {i: r["response"].strip() for i, r in got.items()} == {
        i: t.strip() for i, (_, t) in direct.items()
    }

    overall = result["summary"]["overall"]
    accuracy = sum(c for c, _ in direct.values()) / len(direct)
    assert overall["accuracy"] == pytest.approx(accuracy) and overall["n"] == 60
    for task in TASKS:
        mine = [r for r in result["samples"] if r["task"] == task]
        assert result["summary"]["per_task"][task]["accuracy"] == pytest.approx(
            sum(r["correct"] for r in mine) / len(mine)
        )
    # chance: the best a model ignoring the image could do, answering each task's most common truth
    blind = sum(Counter(s.answer for s in samples if s.task == t).most_common(1)[0][1] for t in TASKS) / 60
    assert accuracy >= blind + 0.15, (accuracy, blind)
    assert overall["format_rate"] == 1.0  # the toy answers in the <think>/<answer> template
    assert overall["mean_reward"] == pytest.approx(overall["mean_acc_reward"] + 1.0)  # acc + format weights 1



def test_sampled_accuracy_equals_single_draws_graded_directly(toy_model, held_out, tmp_path):
    """--sampled N: each row's correct count is that of N one-response requests at seeds s..s+N-1
    graded with curate.grading directly; avg@N and pass@N follow from those counts."""
    from curate.config import EngineConfig
    from curate.engines import GenerationRequest, SamplingParams, create_engine
    from curate.grading import grade

    data, samples = held_out
    n, rows, seed = 3, 10, 5
    result = _run_eval(["toy", str(data), "--max-tokens", str(MAX_TOKENS), "--limit", str(rows), "--seed",
                        str(seed), "--sampled", str(n), "--sampled-temperature", "1.5", "--out",
                        str(tmp_path / "r.json")])
    got = {r["id"]: r["sampled"]["correct"] for r in result["samples"]}
    evaluated = {r["id"]: r for r in result["samples"]}
    truth = {s.id: s for s in samples}
    params = SamplingParams(temperature=1.5, max_tokens=MAX_TOKENS, stop=())
    counts = {}
    with create_engine(EngineConfig(backend="transformers", model=toy_model, device="cpu")) as engine:
        for sample in load_samples(data, task_key=None)[1]:
            if sample.id not in got:
                continue
            requests = [GenerationRequest(sample.messages, sample.images, seed=seed + k) for k in range(n)]
            texts = [r.completions[0].text for r in engine.generate(requests, params)]
            counts[sample.id] = sum(grade(truth[sample.id].task, t, truth[sample.id].answer).correct
                                    for t in texts)
    assert got == counts and len(got) == rows
    assert 0 < sum(counts.values()) < n * rows  # sampling at 1.5 gets some right and some wrong
    overall = result["summary"]["overall"]
    assert overall["sampled_n"] == n and result["sampled"]["temperature"] == 1.5
    assert overall["sampled_accuracy"] == pytest.approx(sum(counts.values()) / (n * rows))
    assert overall["pass_at_n"] == pytest.approx(sum(c > 0 for c in counts.values()) / rows)
    assert all(r["correct"] in (True, False) for r in evaluated.values())  # the greedy answer is kept


def test_sampled_answers_the_engine_cannot_produce_count_as_wrong(held_out, tmp_path):
    """A prompt over the model length is that row's error, greedy and sampled: 0 of N correct, reward 0."""
    data, _ = held_out
    result = _run_eval(["toy", str(data), "--max-model-len", "16", "--limit", "3", "--sampled", "2",
                        "--out", str(tmp_path / "r.json")])
    assert [r["sampled"] for r in result["samples"]] == [{"n": 2, "correct": 0, "reward": 0.0}] * 3
    assert all(r["error"] and r["correct"] is False for r in result["samples"])
    overall = result["summary"]["overall"]
    assert (overall["sampled_accuracy"], overall["pass_at_n"], overall["generation_errors"]) == (0.0, 0.0, 3)

_SAVE_FSDP = textwrap.dedent("""
    import os, sys, torch
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=sys.argv[3])
    torch.distributed.init_process_group("gloo")
    from omegaconf import OmegaConf
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForImageTextToText
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
    from verl.utils.tokenizer.tokenizer import hf_processor
    from verl.workers.engine.fsdp.utils import create_device_mesh

    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], dtype=torch.float32)
    fully_shard(model, mesh=create_device_mesh(world_size=1, fsdp_size=-1))  # verl's "fsdp" mesh
    # verl's default actor.checkpoint.save_contents: shards only, no HF weights
    contents = OmegaConf.create({"save_contents": ["model", "optimizer", "extra"],
                                 "load_contents": ["model"]})
    optimizer = torch.optim.AdamW(model.parameters())
    FSDPCheckpointManager(model=model, optimizer=optimizer, processing_class=hf_processor(sys.argv[1],
                          trust_remote_code=True), checkpoint_config=contents,
                          trust_remote_code=True).save_checkpoint(local_path=sys.argv[2], global_step=3)
    torch.distributed.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_of_a_verl_fsdp_checkpoint_goes_through_verls_merger(toy_model, held_out, tmp_path):
    """verl's own checkpoint manager writes the shards (default save_contents: no HF weights)."""
    from rl.cpu import cpu_env

    step = tmp_path / "checkpoints" / "global_step_3"
    proc = subprocess.run(
        [sys.executable, "-c", _SAVE_FSDP, toy_model, str(step / "actor"), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, **cpu_env(), "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (step / "actor" / "model_world_size_1_rank_0.pt").is_file()
    assert not (step / "actor" / "huggingface" / "model.safetensors").exists()

    # verl's merger writes bfloat16 weights: the merged model is the original rounded to bf16
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    merged = step / "actor" / "huggingface_merged"
    data, _ = held_out
    args = [str(data), "--max-tokens", str(MAX_TOKENS), "--limit", "12", "--batch-size", "8"]
    from_step = _run_eval([str(step), *args, "--out", str(tmp_path / "step.json")])
    assert from_step["model_path"] == str(merged)
    original, restored = (
        load_file(Path(toy_model) / "model.safetensors"),
        load_file(merged / "model.safetensors"),
    )
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k].to(torch.bfloat16), restored[k]) for k in original)

    rounded = tmp_path / "toy_bf16"
    shutil.copytree(toy_model, rounded)
    save_file(
        {k: v.to(torch.bfloat16) for k, v in original.items()},
        rounded / "model.safetensors",
        metadata={"format": "pt"},
    )
    reference = _run_eval([str(rounded), *args, "--out", str(tmp_path / "ref.json")])
    assert [r["response"] for r in from_step["samples"]] == [r["response"] for r in reference["samples"]]
    assert from_step["summary"] == reference["summary"]
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert resolve_checkpoint(str(step / "actor")) == str(merged)  # merged once, then reused
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp


def test_checkpoint_resolution(tmp_path, toy_model):
    assert resolve_checkpoint(toy_model) == toy_model
    hf_inside = tmp_path / "global_step_5" / "actor" / "huggingface"
    hf_inside.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (hf_inside / name).write_text("{}")
    assert resolve_checkpoint(str(tmp_path / "global_step_5")) == str(hf_inside)
    megatron = tmp_path / "global_step_6" / "actor" / "model" / "dist_ckpt"
    megatron.mkdir(parents=True)
    with pytest.raises(EvalError, match="--backend megatron"):
        resolve_checkpoint(str(tmp_path / "global_step_6"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="neither a model directory"):
        resolve_checkpoint(str(tmp_path / "empty"))


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    return buf.getvalue()


def test_verl_prompts_are_split_like_verls_dataset(toy_model, tmp_path):
    """The engine gets the parts verl's own dataset builds from the same row (the training prompt)."""
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf
    from verl.utils.tokenizer.tokenizer import hf_processor, hf_tokenizer

    from curate.io import write_verl_parquet
    from rl.cpu.dataset import TorchvisionFreeRLHFDataset

    question = "<image>\nA <image> B  "
    row = {
        S.ID: "r",
        S.DATA_SOURCE: "hand",
        S.TASK: "counting",
        S.QUESTION: question,
        S.IMAGES: [_png((1, 2, 3)), _png((4, 5, 6))],
        S.IMAGE_PATHS: [None, None],
        S.GROUND_TRUTH: "1",
        S.VERIFIER: None,
        S.STATUS: "ok",
        S.ERROR: None,
    }
    path = tmp_path / "d.parquet"
    write_verl_parquet(
        pa.Table.from_pylist([row], schema=S.CANONICAL_SCHEMA), path, prompt=PromptConfig(system_prompt="sys")
    )
    config = OmegaConf.create({"max_prompt_length": 512, "image_key": "images", "trust_remote_code": True})
    dataset = TorchvisionFreeRLHFDataset(
        str(path), hf_tokenizer(toy_model), config, hf_processor(toy_model, trust_remote_code=True)
    )

    def shape(messages):
        return [(m["role"], [(p["type"], p.get("text")) for p in m["content"]]) for m in messages]

    prompt = pq.read_table(path).column("prompt").to_pylist()[0]
    theirs = shape(dataset[0]["raw_prompt"])
    assert shape(verl_messages(prompt, True)) == theirs
    assert theirs[0] == ("system", [("text", "sys")]) and [t for t, _ in theirs[1][1]].count("image") == 2
    _, samples = load_samples(str(path))
    sample = next(samples)
    assert shape(sample.messages) == theirs
    assert [im.getpixel((0, 0)) for im in sample.images] == [(1, 2, 3), (4, 5, 6)]


def test_unreadable_rows_are_counted_and_the_rest_evaluated(tmp_path):
    import pyarrow.parquet as pq

    from curate.io import write_verl_parquet

    rows = [
        {
            S.ID: f"r{i}",
            S.DATA_SOURCE: "hand",
            S.TASK: "counting",
            S.QUESTION: "<image>How many?",
            S.IMAGES: [_png((i, 0, 0))],
            S.IMAGE_PATHS: [None],
            S.GROUND_TRUTH: str(i),
            S.VERIFIER: None,
            S.STATUS: "ok",
            S.ERROR: None,
        }
        for i in range(3)
    ]
    path = tmp_path / "d.parquet"
    write_verl_parquet(pa.Table.from_pylist(rows, schema=S.CANONICAL_SCHEMA), path)
    table = pq.read_table(path).to_pylist()
    table[1]["images"] = [{"bytes": b"not a png", "path": None}]
    table[2]["extra_info"]["task"] = "no-such-task"
    table[2]["ability"] = "no-such-task"
    table[2]["data_source"] = "nowhere"
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    errors: list[str] = []
    kind, samples = load_samples(str(path), errors=errors)
    got = list(samples)
    assert kind == "verl prompt column" and [s.id for s in got] == ["r0"]
    assert len(errors) == 2 and errors[0].startswith("r1:") and errors[1].startswith("r2: no task")
    assert got[0].messages[-1]["content"][0] == {"type": "image"} and got[0].images[0].size == (28, 28)
    # --task-key reads any field, including inside extra_info
    _, samples = load_samples(str(path), task_key="data_source", errors=[])
    assert [s.task for s in samples] == ["hand", "nowhere"]


def test_canonical_data_gets_the_selection_prompt(tmp_path):
    from test_select import _cfg, write_annotated

    from curate.select import select

    run = write_annotated(tmp_path / "run")
    select(_cfg(run, tmp_path / "out", "mid_hard_pism.yaml", "subsets.grpo.split.val_fraction=0.25"))
    canonical = tmp_path / "out" / "grpo" / "canonical" / "val.parquet"
    kind, samples = load_samples(str(canonical))
    got = list(samples)
    assert kind == "selection manifest" and len(got) == 9
    assert got[0].messages[0] == {"role": "system", "content": "Think, then answer."}  # the run's prompt
    assert got[0].messages[1]["content"][0] == {"type": "image"}
    kind, samples = load_samples(str(canonical), prompt=PromptConfig(system_prompt="X"))
    assert kind == "--system-prompt" and next(samples).messages[0]["content"] == "X"


def test_summary_by_hand():
    records = [
        {"task": "a", "correct": True, "acc": 1.0, "format": 1.0, "reward": 2.0},
        {"task": "a", "correct": False, "acc": 0.6, "format": 0.0, "reward": 0.6},
        {"task": "b", "correct": False, "acc": 0.0, "format": 1.0, "reward": 1.0, "error": None},
        {"task": "b", "correct": False, "acc": 0.0, "format": 0.0, "reward": 0.0, "error": "prompt too long"},
    ]
    s = summarize(records)
    assert s["per_task"]["a"] == {
        "n": 2,
        "accuracy": 0.5,
        "mean_acc_reward": 0.8,
        "format_rate": 0.5,
        "mean_reward": 1.3,
        "generation_errors": 0,
    }
    assert s["overall"]["accuracy"] == 0.25 and s["overall"]["generation_errors"] == 1
    assert s["overall"]["mean_reward"] == pytest.approx(3.6 / 4)

    records[0]["sampled"] = {"n": 4, "correct": 3, "reward": 1.5}
    records[1]["sampled"] = {"n": 4, "correct": 0, "reward": 0.5}
    records[2]["sampled"] = {"n": 4, "correct": 1, "reward": 1.25}
    records[3]["sampled"] = {"n": 4, "correct": 0, "reward": 0.0}  # the engine failed: all 4 wrong
    s = summarize(records)
    assert s["per_task"]["a"]["sampled_accuracy"] == pytest.approx(3 / 8)
    assert s["per_task"]["a"]["pass_at_n"] == 0.5
    assert s["overall"]["sampled_accuracy"] == pytest.approx((0.75 + 0 + 0.25 + 0) / 4)
    assert s["overall"]["pass_at_n"] == 0.5 and s["overall"]["sampled_n"] == 4
    assert s["overall"]["sampled_mean_reward"] == pytest.approx(3.25 / 4)


def test_cli_reports_bad_inputs_without_a_traceback(tmp_path, capsys):
    from rl.__main__ import main

    assert main(["eval", "toy", str(tmp_path / "missing.parquet")]) == 2
    assert "data not found" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    assert main(["eval", str(tmp_path / "x"), str(tmp_path / "missing.parquet")]) == 2
    assert "neither a model directory" in capsys.readouterr().err
