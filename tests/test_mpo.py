"""python -m rl mpo: MPO's loss against an independent computation, the pair rule, the config, and the
toy recipe end to end (pairs → TRL training → a checkpoint ``rl eval`` loads).

The loss reference never goes through TRL: each (prompt, response) is rendered with the processor's
own chat template, run alone (no padding) through an unpatched copy of the model, and the response
tokens' log-probabilities are read from the plain logits.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import schema as S
from curate.config import ConfigError, PromptConfig
from curate.engines import Completion, GenerationEngine, GenerationResult
from curate.grading import GradingOptions, grade
from curate.io import write_verl_parquet
from curate.scoring.masks import derived_seed
from rl.mpo import dpo_args, load_config
from rl.preference import PairsConfig, ensure_pairs, pick_pairs, trl_messages

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
TOY_MPO = REPO / "configs" / "rl" / "toy_mpo.yaml"
GPU_MPO = REPO / "configs" / "rl" / "qwen25vl7b_mpo.yaml"
REQUIRED = ["model=m", "data=d", "output=o"]


@pytest.fixture(scope="module")
def toy_model() -> str:
    cache = pytest.importorskip("curate.toy.cache")
    return str(cache.toy_model_path())


# ---- (a) the loss terms ------------------------------------------------------------------------------


def _perturbed(model_dir: str):
    """The toy model with seeded noise on every weight: a policy that differs from the reference."""
    import torch

    from curate.modeling import load_model

    model = load_model(model_dir, dtype="float32", device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def _pairs_by_hand():
    """Three toy prompts, each with its right answer and a wrong one of another length."""
    from curate.scoring.prompts import build_messages
    from curate.toy.corpus import make_sample

    rows = []
    for i, wrong in zip(
        (0, 3, 4),
        (
            "<think>I count.</think><answer>4 or 5</answer>",
            "<answer>ZMX</answer>",
            "<think>I look at the box.</think><answer>[]</answer>",
        ),
    ):
        s = make_sample(i, seed=7)
        messages = build_messages(s.question, 1, PromptConfig())
        rows.append(
            {
                "engine_messages": messages,
                "images": [Image.fromarray(s.image)],
                "prompt": trl_messages(messages),
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": s.response()}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": wrong}]}],
            }
        )
    return rows


def _response_logps(model, processor, messages, image, response):
    """log p of each response token given the prompt, from one unpadded forward's plain logits."""
    import torch

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    assert full.startswith(prompt)
    n_prompt = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
    inputs = processor(text=[full], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, :-1].double()
    ids = inputs["input_ids"][0, 1:]
    return logits.log_softmax(-1).gather(1, ids[:, None])[:, 0][n_prompt - 1 :]


def _reference_terms(policy, reference, processor, rows, beta):
    import torch.nn.functional as F

    pi, ref, chosen_tokens = {}, {}, []
    for side in ("chosen", "rejected"):
        pi[side], ref[side] = [], []
        for r in rows:
            text = r[side][0]["content"][0]["text"]
            lp = _response_logps(policy, processor, r["engine_messages"], r["images"][0], text)
            pi[side].append(lp.sum())
            ref[side].append(
                _response_logps(reference, processor, r["engine_messages"], r["images"][0], text).sum()
            )
            if side == "chosen":
                chosen_tokens.append(lp)
    import torch

    chosen_ratio = beta * (torch.stack(pi["chosen"]) - torch.stack(ref["chosen"]))
    rejected_ratio = beta * (torch.stack(pi["rejected"]) - torch.stack(ref["rejected"]))
    return {
        "sigmoid": float(-F.logsigmoid(chosen_ratio - rejected_ratio).mean()),
        "bco_pair": float((-F.logsigmoid(chosen_ratio) - F.logsigmoid(-rejected_ratio)).mean()),
        "sft": float(-torch.cat(chosen_tokens).mean()),  # the mean over every chosen token of the batch
    }


def test_mpo_loss_terms_equal_an_independent_computation(toy_model, tmp_path):
    import torch
    from datasets import Dataset
    from trl import DPOTrainer

    from curate.modeling import load_model, load_processor

    torch.manual_seed(0)
    beta = 0.5
    processor = load_processor(toy_model)
    rows = _pairs_by_hand()
    expected = _reference_terms(
        _perturbed(toy_model), load_model(toy_model, dtype="float32", device="cpu"), processor, rows, beta
    )
    # A policy away from its reference, so that no term sits at its trivial value (log 2, 2 log 2).
    assert abs(expected["sigmoid"] - np.log(2)) > 0.05 and abs(expected["bco_pair"] - 2 * np.log(2)) > 0.05
    trl_rows = [{k: v for k, v in r.items() if k != "engine_messages"} for r in rows]
    cases = [
        (["sigmoid"], [1.0]),
        (["bco_pair"], [1.0]),
        (["sft"], [1.0]),
        (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),
    ]
    for types, weights in cases:
        cfg = load_config(
            None,
            [
                *REQUIRED,
                f"loss.types={types}",
                f"loss.weights={weights}",
                f"loss.beta={beta}",
                "training.cpu=true",
                "training.batch_size=3",
            ],
        )
        trainer = DPOTrainer(
            model=_perturbed(toy_model),
            ref_model=load_model(toy_model, dtype="float32", device="cpu"),
            args=dpo_args(cfg, tmp_path / "trainer"),
            train_dataset=Dataset.from_list(copy.deepcopy(trl_rows)),
            processing_class=load_processor(toy_model),
        )
        batch = trainer.data_collator(copy.deepcopy(trl_rows))
        trainer.model.eval()
        with torch.no_grad():
            got = float(trainer.compute_loss(trainer.model, batch))
        want = sum(w * expected[t] for t, w in zip(types, weights))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5), (types, got, want, expected)


# ---- (b) the pairs --------------------------------------------------------------------------------------


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    return buf.getvalue()


# question -> (task, truth, image colour, scripted responses; None: the engine fails the request)
SCRIPT = {
    "dup": (
        "counting",
        "3",
        (200, 0, 0),
        ["<answer>3</answer>", "<answer>4</answer>", "<answer>3</answer>", "<answer>5</answer>"],
    ),
    "spread": (
        "counting",
        "3",
        (0, 200, 0),
        ["<answer>3</answer>", "<answer>4</answer>", "<answer>three</answer>", "<answer>5</answer>"],
    ),
    "right": (
        "counting",
        "2",
        (0, 0, 200),
        ["<answer>2</answer>", "<answer>two</answer>", "<answer>2</answer>", "<answer>2 </answer>"],
    ),
    "wrong": ("color", "red", (9, 9, 9), ["<answer>blue</answer>"] * 4),
    "failed": ("counting", "1", (90, 90, 0), None),
}


class ScriptedEngine(GenerationEngine):
    """Answers each question from SCRIPT and records the requests."""

    def __init__(self):
        self.requests = []

    def generate(self, requests, params):
        results = []
        for request in requests:
            self.requests.append(request)
            question = request.messages[-1]["content"][0]["text"]
            texts = SCRIPT[question][3]
            if texts is None:
                results.append(GenerationResult(error="scripted failure"))
            else:
                assert request.n == len(texts)
                results.append(GenerationResult([Completion(t, 3, "stop") for t in texts]))
        return results

    def close(self):
        pass


@pytest.fixture
def scripted_data(tmp_path) -> Path:
    rows = [
        {
            S.ID: q,
            S.DATA_SOURCE: "hand",
            S.TASK: task,
            S.QUESTION: f"{q}\n<image>",
            S.IMAGES: [_png(color)],
            S.IMAGE_PATHS: [None],
            S.GROUND_TRUTH: truth,
            S.VERIFIER: None,
            S.STATUS: "ok",
            S.ERROR: None,
        }
        for q, (task, truth, color, _) in SCRIPT.items()
    ]
    path = tmp_path / "train.parquet"
    write_verl_parquet(pa.Table.from_pylist(rows, schema=S.CANONICAL_SCHEMA), path, prompt=PromptConfig())
    return path


def _pairs(directory: Path) -> list[dict]:
    return pq.read_table(directory / "pairs.parquet").to_pylist()


def test_pairs_follow_the_rule_and_every_prompt_is_counted(scripted_data, tmp_path):
    cfg = PairsConfig(k=4, pairs_per_prompt=2, seed=5)
    engine = ScriptedEngine()
    manifest = ensure_pairs(
        cfg, "model-dir", str(scripted_data), tmp_path / "p", GradingOptions(), make_engine=lambda _: engine
    )
    assert [r.seed for r in engine.requests] == [derived_seed("mpo-pairs", q, 5) for q in SCRIPT]
    assert manifest.counts == {"kept": 2, "all_correct": 1, "all_wrong": 1, "failed": 1}
    assert manifest.per_task == {
        "color": {"prompts": 1, "kept": 0, "all_correct": 0, "all_wrong": 1, "failed": 0, "pairs": 0},
        "counting": {"prompts": 4, "kept": 2, "all_correct": 1, "all_wrong": 0, "failed": 1, "pairs": 4},
    }
    assert manifest.prompts == 5 and manifest.pairs == 4 and manifest.responses == 16
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["pairs"] == 4

    source = {r["extra_info"]["id"]: r for r in pq.read_table(scripted_data).to_pylist()}
    pairs = _pairs(tmp_path / "p")
    by_prompt: dict[str, list[tuple[str, str]]] = {}
    for row in pairs:
        task, truth, color, _ = SCRIPT[row["id"]]
        chosen, rejected = (row[side][0]["content"][0]["text"] for side in ("chosen", "rejected"))
        assert grade(task, chosen, truth).correct and not grade(task, rejected, truth).correct
        # the prompt verl feeds the policy (system turn, the question, then the image) and its image
        assert row["prompt"] == trl_messages(
            [
                {"role": "system", "content": source[row["id"]]["prompt"][0]["content"]},
                {"role": "user", "content": [{"type": "text", "text": row["id"]}, {"type": "image"}]},
            ]
        )
        assert Image.open(io.BytesIO(row["images"][0]["bytes"])).getpixel((5, 5)) == color
        by_prompt.setdefault(row["id"], []).append((chosen, rejected))
    # a response sampled twice is one text; two pairs spread over all four distinct responses
    assert sorted(by_prompt["dup"]) == [
        ("<answer>3</answer>", "<answer>4</answer>"),
        ("<answer>3</answer>", "<answer>5</answer>"),
    ]
    spread = by_prompt["spread"]
    assert len(spread) == 2 and len({t for pair in spread for t in pair}) == 4

    # the same settings: nothing is sampled again; the same pairs from scratch elsewhere
    def refuse(_):
        raise AssertionError("sampled again")

    assert (
        ensure_pairs(
            cfg, "model-dir", str(scripted_data), tmp_path / "p", GradingOptions(), make_engine=refuse
        ).pairs
        == 4
    )
    ensure_pairs(
        cfg,
        "model-dir",
        str(scripted_data),
        tmp_path / "q",
        GradingOptions(),
        make_engine=lambda _: ScriptedEngine(),
    )
    assert _pairs(tmp_path / "q") == pairs
    # other settings never overwrite them
    with pytest.raises(ConfigError, match=r"differ in pairs\.k"):
        ensure_pairs(
            PairsConfig(k=5, pairs_per_prompt=2, seed=5),
            "model-dir",
            str(scripted_data),
            tmp_path / "p",
            GradingOptions(),
            make_engine=refuse,
        )


def test_pick_pairs_is_seeded_and_spreads_over_the_responses():
    from curate.selection.rules import rng_for

    texts = ["a", "b", "c", "x", "y", "z", "a"]
    correct = [True, True, True, False, False, False, True]
    for limit in (1, 3, 6, 20):
        pairs = pick_pairs(texts, correct, limit, rng_for(1, "p"))
        assert pairs == pick_pairs(texts, correct, limit, rng_for(1, "p"))
        assert len(pairs) == min(limit, 9) == len(set(pairs))
        assert all(c in "abc" and r in "xyz" for c, r in pairs)
        if limit == 3:  # three pairs use each of the six distinct responses once
            assert len({t for pair in pairs for t in pair}) == 6
    orders = {tuple(pick_pairs(texts, correct, 3, rng_for(s, "p"))) for s in range(8)}
    assert len(orders) > 1  # the seed decides which combinations


# ---- (c) config mistakes name the key --------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("pairs.k=1", "pairs.k"),
        ("pairs.pairs_per_prompt=0", "pairs.pairs_per_prompt"),
        ("pairs.sampling.temperature=0", "pairs.sampling.temperature"),
        ("pairs.engine.backend=openai", "pairs.engine.backend"),
        ("loss.types=[sigmoid,dpo]", "loss.types"),
        ("loss.weights=[1.0]", "loss.weights"),
        ("loss.beta=0", "loss.beta"),
        ("training.precision=fp8", "training.precision"),
        ("training.lr_scheduler=cosine_forever", "training.lr_scheduler"),
        ("training.max_length=0", "training.max_length"),
        ("training.lr=1", "training.lr"),
        ("grading.box_iou=2", "grading.box_iou"),
        ("training.accelerate_config=nowhere", "training.accelerate_config"),
    ],
)
def test_config_mistakes_name_the_key(override, key):
    extra = ["training.num_processes=2", "training.cpu=false"] if key == "training.accelerate_config" else []
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(TOY_MPO, ["data=d", *extra, override])


def test_missing_keys_and_cpu_processes_are_named():
    with pytest.raises(ConfigError, match="config key 'data'"):
        load_config(TOY_MPO, [])
    with pytest.raises(ConfigError, match="config key 'training.num_processes'.*GPUs"):
        load_config(TOY_MPO, ["data=d", "training.num_processes=4"])


def test_gpu_recipe_dry_run_prints_the_accelerate_command(capsys):
    from rl.__main__ import main

    given = ["model=/m", "data=/sel/train.parquet", "output=/ckpt/mpo"]
    assert main(["mpo", "--config", str(GPU_MPO), "--dry-run", *given]) == 0
    out = capsys.readouterr().out
    launch = next(line for line in out.splitlines() if line.startswith("train: "))
    assert launch.startswith("train: accelerate launch --config_file ") and "fsdp2.yaml" in launch
    assert "--num_processes 8 --mixed_precision bf16 -m rl mpo --config " in launch
    assert launch.endswith(" ".join(given))
    cfg = load_config(GPU_MPO, given)
    assert (cfg.loss.types, cfg.loss.weights, cfg.loss.beta) == (
        ["sigmoid", "bco_pair", "sft"],
        [0.8, 0.2, 1.0],
        0.1,
    )
    assert 5e-7 <= cfg.training.learning_rate <= 1e-6
    assert (
        cfg.training.precision == "bf16"
        and cfg.training.gradient_checkpointing
        and cfg.training.max_length is None
    )
    assert cfg.pairs.engine.backend == "vllm" and cfg.pairs.engine.max_pixels == 1_254_400
    assert cfg.pairs.sampling.temperature == 1.0 and cfg.pairs.sampling.max_tokens == 1024


# ---- (d) the toy recipe end to end ----------------------------------------------------------------------


def test_toy_recipe_trains_a_checkpoint_rl_eval_loads(toy_model, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from curate.toy.corpus import generate_corpus
    from rl.__main__ import main

    data = tmp_path / "train.parquet"
    write_verl_parquet(generate_corpus(10, seed=7), data, prompt=PromptConfig())
    out = tmp_path / "mpo"
    argv = [
        "mpo",
        "--config",
        str(TOY_MPO),
        "model=toy",
        f"data={data}",
        f"output={out}",
        "pairs.k=4",
        "training.max_steps=2",
        "training.batch_size=2",
    ]
    assert main(argv) == 0
    manifest = json.loads((out / "pairs" / "manifest.json").read_text())
    assert manifest["prompts"] == 10 and sum(manifest["counts"].values()) == 10 and manifest["pairs"] >= 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["step"] for s in metrics["steps"]] == [1, 2]
    for step in metrics["steps"]:
        assert np.isfinite(step["loss"]) and 0 <= step["rewards/accuracies"] <= 1

    model = out / "model"
    trained, source = load_file(model / "model.safetensors"), load_file(Path(toy_model) / "model.safetensors")
    assert trained.keys() == source.keys() and any(not torch.equal(trained[k], source[k]) for k in source)
    for name in ("processing_hardmode.py", "processor_config.json", "tokenizer_config.json"):
        assert (model / name).read_bytes() == (Path(toy_model) / name).read_bytes(), name

    report = tmp_path / "eval.json"
    assert (
        main(["eval", str(model), str(data), "--limit", "5", "--max-tokens", "64", "--out", str(report)]) == 0
    )
    records = json.loads(report.read_text())["samples"]
    assert len(records) == 5 and not any(r.get("error") for r in records)

    capsys.readouterr()
    assert main(argv) == 0  # finished with these settings: nothing runs again
    assert "already trained" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"differ in training\.learning_rate"):
        from rl.mpo import run_mpo

        run_mpo(load_config(TOY_MPO, [*argv[3:], "training.learning_rate=1e-3"]), str(TOY_MPO), [])


# ---- trl 1.x beside verl 0.9.1 -------------------------------------------------------------------------


def test_verl_model_loads_do_not_reach_for_trls_removed_value_head(tmp_path):
    """verl imports trl's AutoModelForCausalLMWithValueHead whenever trl is installed; trl 1.16 has none.
    rl.verl_fixes (loaded in every verl process) answers verl's question as verl uses it."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import verl
        import verl.models.transformers.monkey_patch as monkey_patch
        import verl.utils.model as model
        from verl.utils.import_utils import is_trl_available
        import importlib.util
        print(importlib.util.find_spec("trl") is not None, monkey_patch.is_trl_available(),
              model.is_trl_available(), is_trl_available())
    """)
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "rl.verl_fixes", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "True False False False"
