"""CmabScorer on the trained toy model: the path a GPU run takes (engine ids → collate → pack → probe).

Three things CPU-only tests used to miss:
- device discipline: the probe batch lives on the model's device, and every tensor the scorer builds
  must be created there (on a GPU a CPU-built tensor fails the whole batch). ``default_device_elsewhere``
  makes such a tensor fail here too;
- a response that contains a vision placeholder id is that row's error, not the batch's;
- CMAB's prompt layout is its variant's (code: question before the image), whatever PISM's is.
ρ̄ is checked against an independent eager ``output_attentions=True`` forward on the same tokens.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.devices import default_device_elsewhere

from curate.config import CmabConfig, PromptConfig, load_config
from curate.engines import GenerationEngine, SamplingParams
from curate.engines.transformers_engine import TransformersEngine
from curate.images import decode_image
from curate.modeling import load_model
from curate.scoring.cmab import CmabResult, CmabScorer
from curate.scoring.pism import Sample
from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

GUARDED = ("curate.scoring.cmab", "curate.scoring.probing", "curate.scoring.attention_probe")
GREEDY = SamplingParams(temperature=0.0, max_tokens=48)


@pytest.fixture(scope="module")
def engine():
    cfg = load_config(overrides=["data.format=toy", "engine.batch_size=16"])
    eng = TransformersEngine.from_config(cfg.engine)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def samples():
    rows = generate_corpus(8, seed=5, tasks=["color", "counting"]).to_pylist()
    return [Sample(r["id"], [decode_image(b) for b in r["images"]], r["question"], r["task"], r["ground_truth"])
            for r in rows]


class RecordingEngine(GenerationEngine):
    """The real engine, recording requests; optionally appends ``extra_ids`` to one request's token ids
    (the text, and so the grade, is unchanged)."""

    def __init__(self, inner: TransformersEngine, extra_ids: dict[int, list[int]] | None = None):
        self.inner, self.extra_ids, self.requests = inner, extra_ids or {}, []

    def generate(self, requests, params):
        self.requests.extend(requests)
        results = self.inner.generate(requests, params)
        for r, ids in self.extra_ids.items():
            for c in results[r].completions:
                c.token_ids = list(c.token_ids) + ids
        return results


def scorer(engine, generation=None, **cmab) -> CmabScorer:
    cfg = CmabConfig(enabled=True, k=2, **cmab)
    return CmabScorer(generation or engine, engine, cfg, GREEDY, PromptConfig())


def eager_code_rho(model, encoded, response: list[int], layer: int, image_id: int) -> float:
    """The released code's ρ̄ from an eager forward's full attention maps (no probe involved)."""
    ids = torch.cat([encoded["input_ids"][0], torch.tensor(response)])
    inputs = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    types = torch.cat([encoded["mm_token_type_ids"][0], torch.zeros(len(response), dtype=torch.long)])
    with torch.no_grad():
        out = model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], mm_token_type_ids=types[None],
                    output_attentions=True, **inputs)
    maps = out.attentions[layer][0].double().mean(dim=0)  # [S, S], heads averaged
    image = (ids == image_id).nonzero().squeeze(1)
    text = torch.arange(int(image[0]))  # the released code's span: before the first image token
    p = encoded["input_ids"].shape[1]
    image_sum = text_sum = 0.0
    for row in range(p, p + len(response) - 1):  # generate's steps 1..n-1 (the prefill row skipped)
        t = float(maps[row, text].mean())
        if t != 0:
            image_sum += float(maps[row, image].mean())
            text_sum += t
    return image_sum / text_sum


def test_guard_redirects_constructors_of_the_guarded_modules_only():
    """The device guard is what makes the next test meaningful: show that it bites."""
    code = "import torch\nx = torch.zeros(2)\ny = torch.as_tensor(t)\n"
    for name, expected in (("curate.scoring.attention_probe", "meta"), ("somewhere.else", "cpu")):
        scope = {"__name__": name, "t": torch.ones(2)}
        with default_device_elsewhere(packages=GUARDED) as guard:
            exec(compile(code, "<guarded>", "exec"), scope)
        assert scope["x"].device.type == expected
        assert scope["y"].device.type == "cpu"  # as_tensor of a tensor keeps its device
        assert guard.redirected == (1 if expected == "meta" else 0)


def test_scorer_builds_every_tensor_where_the_batch_lives(engine, samples):
    """On a GPU the prompt batch is on cuda and a CPU-built response tensor fails every batch."""
    reference = scorer(engine).score(samples)
    with default_device_elsewhere(packages=GUARDED):
        guarded = scorer(engine).score(samples)
    assert sum(isinstance(r, CmabResult) and r.rho is not None for r in reference) >= 3
    assert [getattr(r, "rho", r) for r in guarded] == [getattr(r, "rho", r) for r in reference]


def test_rho_equals_eager_attention_maps(engine, samples):
    """ρ̄ through the whole scorer equals the released code's formula on eager output_attentions."""
    recording = RecordingEngine(engine)
    cmab = scorer(engine, recording)
    sampling = dataclasses.replace(GREEDY, logprobs=True)
    results = cmab.score(samples)
    eager = load_model(str(engine.model.name_or_path), attn_implementation="eager")
    image_id = engine.model.config.image_token_id
    checked = 0
    for request, result in zip(recording.requests, results):
        if not (isinstance(result, CmabResult) and result.rho is not None):
            continue
        completion = engine.generate([request], sampling)[0].completions[0]  # first response = first correct
        if completion.token_ids is None or result.correct < 2:
            continue
        expected = eager_code_rho(eager, engine.encode(request), completion.token_ids, cmab.layers[0], image_id)
        assert result.rho == pytest.approx(expected, rel=1e-6)
        checked += 1
    assert checked >= 2


def test_a_vision_token_in_a_response_is_that_rows_error(engine, samples):
    image_id = engine.model.config.image_token_id
    first = scorer(engine).score(samples)
    probed = [i for i, r in enumerate(first) if isinstance(r, CmabResult) and r.rho is not None]
    assert len(probed) >= 2
    bad = probed[0]
    results = scorer(engine, RecordingEngine(engine, {bad: [image_id]})).score(samples)
    assert isinstance(results[bad], str) and "vision token" in results[bad] and str(image_id) in results[bad]
    for i in probed[1:]:
        assert results[i].rho == first[i].rho


@pytest.mark.parametrize(
    "position, pism_position, text_first",
    [("auto", "first", True), ("auto", "last", True), ("first", "last", False), ("last", "first", True)],
)
def test_prompts_use_the_variants_layout(engine, samples, position, pism_position, text_first):
    recording = RecordingEngine(engine)
    cfg = CmabConfig(enabled=True, k=1, image_position=position)
    CmabScorer(recording, engine, cfg, GREEDY, PromptConfig(image_position=pism_position)).score(samples[:1])
    kinds = [part["type"] for part in recording.requests[0].messages[-1]["content"]]
    assert kinds == (["text", "image"] if text_first else ["image", "text"])


def test_layout_rule():
    for pism in ("first", "last"):
        prompt = PromptConfig(image_position=pism)
        assert CmabConfig(variant="code").prompt_layout(prompt) == "last"
        assert CmabConfig(variant="paper").prompt_layout(prompt) == pism
        for fixed in ("first", "last"):
            assert CmabConfig(variant="paper", image_position=fixed).prompt_layout(prompt) == fixed


def test_the_run_record_names_cmabs_layout(tmp_path):
    from curate import run_record

    cfg = load_config(overrides=["data.format=toy", "cmab.enabled=true", "prompt.image_position=first"])
    record = run_record.begin(cfg, tmp_path, tmp_path / "annotated")
    assert record["cmab"] == {"variant": "code", "image_position": "last"}
