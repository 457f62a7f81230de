"""RAP's CDE and ACE (curate.scoring.rap, curate.scoring.ace) against independent references.

- ACE's log-space ψ against the direct product on hand-made and random blocks, and, through the whole
  scorer on the toy model, against the final layer of an eager ``output_attentions`` forward.
- CDE on a scripted OpenAI-compatible endpoint whose answers a person can check: a question answered
  from its text alone gets D = 0, one answered only with the image D = 1, the image rollouts taken
  from PISM are not generated again and the missing ones come with PISM's own seeds.
- On the toy model: RAP after PISM (full or early exit) gives the same image counts as RAP alone, at
  fewer generations; one in-process run with PISM + CMAB + RAP writes every row once, and report and
  select read the RAP columns.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from support.bad_rows import BAD_IDS, corpus_with_bad_rows
from support.scripted_server import Reply, ScriptedServer, chat_completion

from curate import schema
from curate.config import AceConfig, PromptConfig, RapConfig, load_config, load_structured
from curate.engines import SamplingParams
from curate.engines.transformers_engine import TransformersEngine
from curate.images import decode_image
from curate.modeling import load_model
from curate.run_record import ANNOTATED_DIR, RUN_FILE, scoring_fingerprint
from curate.scoring.ace import ace_score, log_psi
from curate.scoring.pism import attempt_seed
from curate.scoring.rap import RapResult, RapScorer, text_only_question
from curate.scoring.sample import Sample
from curate.scoring.stage import Rollout
from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]


def direct_log_psi(block: list[list[float]], sigma: float) -> list[float]:
    """ψ_j = Π_{i>=j} σ·A_ij as a plain product of Python floats, then its log."""
    n = len(block)
    out = []
    for j in range(n):
        psi = math.prod(sigma * block[i][j] for i in range(j, n))
        out.append(math.log(psi) if psi > 0 else -math.inf)
    return out


# ---- ACE's arithmetic ----------------------------------------------------------------------------


def test_ace_on_a_hand_made_block():
    # Rows: the query of response token i; columns: the key j <= i.
    block = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.8, 0.1, 0.1]])
    # ψ_0 = (2·1)(2·.9)(2·.8) = 5.76, ψ_1 = (2·.1)(2·.1) = .04, ψ_2 = 2·.1 = .2
    assert log_psi(block, 2.0).exp().tolist() == pytest.approx([5.76, 0.04, 0.2])
    score = ace_score(block, sigma=2.0, threshold=0.1)
    assert score.log_psi == pytest.approx(math.log(5.76)) and score.token == 0 and score.flagged
    # normalised: 5.76^(1/3) = 1.793, .04^(1/2) = .2, .2^(1/1) = .2
    assert score.log_psi_norm == pytest.approx(math.log(5.76) / 3)
    assert not ace_score(block, sigma=2.0, threshold=6.0).flagged
    assert ace_score(block, sigma=2.0, threshold=1.5, form="normalized").flagged
    assert not ace_score(block, sigma=2.0, threshold=1.9, form="normalized").flagged


def test_ace_head_reduction_mean_and_max():
    heads = torch.tensor([[[1.0, 0.0], [0.2, 0.8]], [[1.0, 0.0], [0.6, 0.4]]])
    # mean: A_10 = .4, A_11 = .6 -> ψ_0 = 2·(2·.4) = 1.6, ψ_1 = 1.2; max: A_10 = .6, A_11 = .8 -> 2.4, 1.6
    assert ace_score(heads, sigma=2.0, threshold=0.1).log_psi == pytest.approx(math.log(1.6))
    assert ace_score(heads, sigma=2.0, threshold=0.1, heads="max").log_psi == pytest.approx(math.log(2.4))
    with pytest.raises(ValueError, match="head-averaged"):
        ace_score(heads.mean(0), sigma=2.0, threshold=0.1, heads="max")


@pytest.mark.parametrize("n", [1, 7, 40])
def test_log_space_equals_the_direct_product_on_causal_softmax_blocks(n):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(n, n, generator=g, dtype=torch.float64) * 3
    logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    block = logits.softmax(dim=1)
    expected = direct_log_psi(block.tolist(), 2.0)
    assert log_psi(block, 2.0).tolist() == pytest.approx(expected, rel=1e-9)


def test_a_zero_weight_makes_psi_zero_not_nan():
    block = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = log_psi(block, 2.0)
    assert values[0] == -math.inf and values[1] == pytest.approx(math.log(2.0))


def test_text_only_question_removes_every_placeholder():
    assert text_only_question("How many dogs?\n<image>") == "How many dogs?"
    assert text_only_question("<image>Compare <image> and the left one.") == "Compare and the left one."
    assert text_only_question("<image>") == ""


# ---- CDE on a scripted endpoint -------------------------------------------------------------------


def _answer(req, calls):
    """The scripted model: 'capital' questions are answered from the text; 'dots' only with the image,
    and then right for even seeds only; 'stripes' never."""
    user = req.body["messages"][-1]["content"]
    parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
    text = " ".join(p.get("text", "") for p in parts)
    sees = any(p["type"] == "image_url" for p in parts)
    if "capital" in text:
        answer = "7"
    elif "dots" in text:
        answer = "7" if sees and req.body["seed"] % 2 == 0 else "3"
    else:
        answer = "1"
    return Reply(
        body=chat_completion(f"<think>look</think><answer>{answer}</answer>", stop_reason="</answer>")
    )


def _sample(sid: str, question: str) -> Sample:
    from PIL import Image

    return Sample(sid, [Image.new("RGB", (28, 28), (200, 10, 10))], f"{question}\n<image>", "counting", "7")


def _rap(server, m=4, pism_seed=3) -> RapScorer:
    from curate.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(server.base_url, "served-model", backoff_s=0.01)
    cfg = RapConfig(enabled=True, m=m, seed=1, ace=AceConfig(enabled=False))
    return RapScorer(
        engine, cfg, SamplingParams(temperature=0.7, max_tokens=32), PromptConfig(), pism_seed=pism_seed
    )


def test_cde_on_answers_a_person_can_check():
    samples = [
        _sample("a", "What is the capital number?"),
        _sample("b", "How many dots?"),
        _sample("c", "How many stripes?"),
    ]
    with ScriptedServer(_answer) as server:
        a, b, c = _rap(server).score(samples)
        bodies = server.posted()
    assert (a.img_correct, a.txt_correct, a.cde) == (4, 4, 0.0)  # answerable without the image: D = 0
    # with the image right for even seeds: PISM's λ = 0 seeds base + k, k < 4
    base = attempt_seed("b", 0.0, 3)
    evens = sum((base + k) % 2 == 0 for k in range(4))
    assert (b.img_correct, b.txt_correct) == (evens, 0) and b.cde == evens / 4
    assert (c.img_correct, c.txt_correct, c.cde) == (0, 0, 0.0)
    assert all(r.generations == 8 and r.img_reused == 0 for r in (a, b, c))
    image_bodies = [x for x in bodies if any(p["type"] == "image_url" for p in x["messages"][-1]["content"])]
    text_bodies = [x for x in bodies if x not in image_bodies]
    assert len(image_bodies) == len(text_bodies) == 12
    for body in text_bodies:  # the image is gone from the prompt, and so is its placeholder
        assert "<image>" not in json.dumps(body["messages"])
    assert sorted(x["seed"] for x in image_bodies if "dots" in json.dumps(x)) == [base + k for k in range(4)]


def test_cde_takes_pism_rollouts_and_generates_only_the_missing_ones_with_pisms_seeds():
    sample = _sample("b", "How many dots?")
    reused = [Rollout("x", 3, True), Rollout("y", 3, False), Rollout("z", 3, True)]
    with ScriptedServer(_answer) as server:
        (result,) = _rap(server, m=5).score([sample], {"b": reused})
        seeds = sorted(x["seed"] for x in server.posted() if "image_url" in json.dumps(x))
    base = attempt_seed("b", 0.0, 3)
    assert seeds == [base + 3, base + 4]  # k = 3, 4: what PISM's full level would have drawn
    assert result.img_reused == 3 and result.img_attempts == 5
    assert result.img_correct == 2 + sum((base + k) % 2 == 0 for k in (3, 4))
    assert result.generations == 2 + 5
    with ScriptedServer(_answer) as server:  # more than M reusable: only the first M count
        (result,) = _rap(server, m=2).score([sample], {"b": reused})
        assert not any("image_url" in json.dumps(x) for x in server.posted())
    assert (result.img_correct, result.img_attempts, result.img_reused, result.generations) == (1, 2, 2, 2)


def test_an_engine_error_or_a_question_that_is_only_a_placeholder_errors_that_sample_only():
    def flaky(req, calls):
        if "stripes" in json.dumps(req.body):
            return Reply(status=400, body={"error": {"message": "bad request"}})
        return _answer(req, calls)

    samples = [
        _sample("a", "What is the capital number?"),
        _sample("c", "How many stripes?"),
        Sample("d", [], "<image>", "counting", "7"),
    ]
    with ScriptedServer(flaky) as server:
        a, c, d = _rap(server).score(samples)
    assert isinstance(a, RapResult) and a.cde == 0.0
    assert isinstance(c, str) and c.startswith("engine:")
    assert isinstance(d, str) and "nothing to ask without the image" in d


# ---- on the toy model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    cfg = load_config(overrides=["data.format=toy", "engine.batch_size=32"])
    eng = TransformersEngine.from_config(cfg.engine)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def samples():
    rows = generate_corpus(6, seed=11).to_pylist()
    return [
        Sample(r["id"], [decode_image(b) for b in r["images"]], r["question"], r["task"], r["ground_truth"])
        for r in rows
    ]


def _eager_ace_log_psis(eager, engine: TransformersEngine, request, response: list[int], sigma: float):
    """(max log ψ raw, max normalised) from the final layer of an eager output_attentions forward."""
    encoded = engine.encode(request)
    ids = torch.cat([encoded["input_ids"][0], torch.tensor(response)])
    types = torch.cat([encoded["mm_token_type_ids"][0], torch.zeros(len(response), dtype=torch.long)])
    extra = {
        k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    with torch.no_grad():
        out = eager(
            input_ids=ids[None],
            attention_mask=torch.ones_like(ids)[None],
            mm_token_type_ids=types[None],
            output_attentions=True,
            **extra,
        )
    p, n = encoded["input_ids"].shape[1], len(response)
    maps = out.attentions[-1][0].double()  # [heads, S, S]
    block = maps[:, p : p + n, p : p + n]  # queries at the response tokens, keys at the response tokens
    raw = {}
    for heads, reduced in (("mean", block.mean(0)), ("max", block.amax(0))):
        logs = direct_log_psi(reduced.tolist(), sigma)
        raw[heads] = (max(logs), max(v / (n - j) for j, v in enumerate(logs)))
    return raw


def test_ace_through_the_scorer_equals_eager_attention_maps(engine, samples):
    greedy = SamplingParams(temperature=0.0, max_tokens=48)
    eager = load_model(str(engine.model.name_or_path), attn_implementation="eager")
    checked = 0
    for heads in ("mean", "max"):
        cfg = RapConfig(enabled=True, m=2, ace=AceConfig(heads=heads, response="first"))
        rap = RapScorer(engine, cfg, greedy, PromptConfig(), pism_seed=0, probe_engine=lambda: engine)
        for s, result in zip(samples, rap.score(samples)):
            assert isinstance(result, RapResult) and result.ace is not None
            request = rap_image_request(rap, s)
            completion = engine.generate([request], dataclasses.replace(greedy, logprobs=True))[
                0
            ].completions[0]
            expected_raw, expected_norm = _eager_ace_log_psis(
                eager, engine, request, completion.token_ids, 2.0
            )[heads]
            assert result.ace.log_psi == pytest.approx(expected_raw, rel=1e-4, abs=1e-4)
            assert result.ace.log_psi_norm == pytest.approx(expected_norm, rel=1e-4, abs=1e-4)
            assert result.ace.flagged == (result.ace.log_psi > math.log(cfg.ace.threshold))
            checked += 1
    assert checked == 2 * len(samples)


def test_ace_builds_every_tensor_where_the_batch_lives(engine, samples):
    """On a GPU the probe's batch is on cuda: a tensor RAP's path builds on the default device (the
    CPU) would fail there. Here the guard sends such tensors to ``meta`` instead, so the same mistake
    fails on CPU (support/devices.py); the guarded run must give the unguarded run's ψ."""
    from support.devices import default_device_elsewhere

    greedy = SamplingParams(temperature=0.0, max_tokens=48)
    cfg = RapConfig(enabled=True, m=2, ace=AceConfig(response="first"))

    def run():
        rap = RapScorer(engine, cfg, greedy, PromptConfig(), pism_seed=0, probe_engine=lambda: engine)
        return [r.ace.log_psi for r in rap.score(samples)]

    reference = run()
    packages = (
        "curate.scoring.rap",
        "curate.scoring.ace",
        "curate.scoring.probing",
        "curate.scoring.attention_probe",
    )
    with default_device_elsewhere(packages=packages) as guard:
        guarded = run()
    # No tensor was built without a device (the guard biting is shown in test_cmab_scorer.py).
    assert guard.redirected == 0 and guarded == reference


def rap_image_request(rap: RapScorer, s: Sample):
    """The image request RAP (and PISM at λ = 0) sends for ``s``, with n = 1 at k = 0."""
    from curate.engines.base import GenerationRequest
    from curate.images import content_id
    from curate.scoring.prompts import build_messages

    return GenerationRequest(
        build_messages(s.question, len(s.images), rap.prompt),
        s.images,
        seed=attempt_seed(s.id, 0.0, rap.pism_seed),
        n=1,
        image_id=content_id(s.images),
    )


SCORE = [
    "data.format=toy",
    "data.toy.num_samples=8",
    "data.toy.seed=4",
    "engine.max_model_len=512",
    "sampling.max_tokens=48",
    "sampling.temperature=1.0",
    "pism.ratios=[0.0,0.4]",
    "pism.seed=2",
    "rap.m=4",
    "rap.ace.enabled=false",
    "output.rows_per_shard=8",
]


def _score_rows(tmp_path: Path, *extra: str) -> dict[str, dict]:
    from curate.score import score_corpus

    out = tmp_path / "_".join(x.replace("=", "-") for x in extra)
    score_corpus(load_config(None, [*SCORE, f"output.path={out}", *extra]))
    table = pq.ParquetDataset(str(out / ANNOTATED_DIR)).read()
    return {r["id"]: r for r in table.to_pylist()}


def test_rap_after_pism_counts_what_rap_alone_generates(tmp_path):
    """The image rollouts are the same draws (seed for seed) whether PISM made them or RAP, and the
    text-only ones do not depend on what else was in their batch (the engine's contract)."""
    alone = _score_rows(tmp_path, "pism.enabled=false", "rap.enabled=true")
    full = _score_rows(tmp_path, "rap.enabled=true", "pism.mode=full", "pism.k=6")
    early = _score_rows(tmp_path, "rap.enabled=true", "pism.mode=early_exit", "pism.k=6")
    assert len({r["rap_img_correct"] for r in alone.values()}) >= 2  # the counts vary: the check bites
    for rid, ref in alone.items():
        assert ref["rap_img_reused"] == 0 and ref["rap_generations"] == 8
        for run, reused in ((full, 4), (early, min(4, early[rid]["pism_attempts"][0]))):
            row = run[rid]
            assert (row["rap_img_correct"], row["rap_txt_correct"]) == (
                ref["rap_img_correct"],
                ref["rap_txt_correct"],
            )
            assert row["rap_img_reused"] == reused and row["rap_generations"] == 8 - reused
    assert sum(r["rap_generations"] for r in full.values()) == 4 * len(full)


def test_one_pass_with_pism_cmab_and_rap_writes_every_row_once_and_report_and_select_read_it(tmp_path):
    from curate.report import write_report
    from curate.score import score_corpus
    from curate.select import select
    from curate.selection.config import SelectConfig

    corpus = corpus_with_bad_rows(tmp_path / "corpus.parquet", good_rows=10)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"data.path={corpus}",
            "data.format=canonical",
            "engine.model=toy",
            "engine.max_model_len=512",
            "sampling.max_tokens=48",
            "pism.ratios=[0.0,0.3,0.6]",
            "pism.k=4",
            "pism.tau=0.25",
            "cmab.enabled=true",
            "cmab.k=2",
            "rap.enabled=true",
            "rap.m=3",
            f"output.path={out}",
            "output.rows_per_shard=6",
        ],
    )
    counts = score_corpus(cfg)
    rows = pq.ParquetDataset(str(out / ANNOTATED_DIR)).read().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 17 and counts["rows"] == 17
    errors = {r["id"] for r in rows if r["status"] == "error"}
    assert errors == set(BAD_IDS)
    for r in rows:
        rap = [r[f.name] for f in schema.RAP_SCHEMA]
        if r["status"] == "error":
            assert all(v is None for v in rap)
        else:
            assert r["rap_img_attempts"] == r["rap_txt_attempts"] == 3
            # ACE scores the first correct image rollout: there is one exactly when some were right
            assert (r["rap_ace_log_psi"] is not None) == (r["rap_img_correct"] > 0)
            assert r["rap_img_reused"] == min(3, r["pism_attempts"][0])
            assert r["cmab_bucket"] is not None and r["pism_bucket"] is not None
    summary = json.loads((out / RUN_FILE).read_text())["summary"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert summary["rap_generations"] == sum(r["rap_generations"] for r in ok)
    assert summary["rap_generations"] == sum(6 - r["rap_img_reused"] for r in ok)
    assert summary["pism_generations"] == sum(r["pism_generations"] for r in ok)

    report = (write_report(out) / "report.md").read_text()
    assert "## RAP (CDE, ACE)" in report and "RAP's D against PISM buckets" in report
    assert "RAP's D against CMAB buckets" in report and (out / "report" / "rap.png").stat().st_size > 0
    reused = sum(r["rap_img_reused"] for r in ok)
    assert f"image rollouts reused from PISM's λ = 0 attempts: {reused}" in report

    for recipe, extra in (("rap_drm.yaml", []), ("rap_cde.yaml", ["subsets.grpo.rap.lambda_c=0.0"])):
        where = tmp_path / recipe.removesuffix(".yaml")
        manifest = select(
            load_structured(
                SelectConfig,
                REPO / "configs" / "select" / recipe,
                [f"input={out}", f"output={where}", *extra],
            )
        )
        record = manifest["subsets"]["grpo"]
        assert record["kind"] == "rap" and record["rows"] > 0 and record["rap"]["scored_rows"] == 10
        written = sum(pq.read_metadata(p).num_rows for p in (where / "grpo" / "verl").glob("*.parquet"))
        assert written == record["rows"]


def test_fingerprint_is_unchanged_while_rap_is_off_and_changes_with_its_knobs_when_on():
    base = load_config(None, ["data.format=toy"])
    assert scoring_fingerprint(base) == scoring_fingerprint(load_config(None, ["data.format=toy", "rap.m=9"]))
    on = load_config(None, ["data.format=toy", "rap.enabled=true"])
    assert scoring_fingerprint(on) != scoring_fingerprint(base)
    assert scoring_fingerprint(on) != scoring_fingerprint(
        load_config(None, ["data.format=toy", "rap.enabled=true", "rap.ace.sigma=3"])
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rap.m=0", "rap.m"),
        ("rap.ace.form=log", "rap.ace.form"),
        ("rap.ace.heads=min", "rap.ace.heads"),
        ("rap.ace.threshold=0", "rap.ace.threshold"),
    ],
)
def test_config_mistakes_name_the_key(override, key):
    from curate.config import ConfigError

    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, ["data.format=toy", "rap.enabled=true", override])
