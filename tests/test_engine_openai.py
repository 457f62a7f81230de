"""The OpenAI-compatible HTTP engine against a scripted loopback server: the protocol and every failure.

The real-server half (vLLM's own OpenAI server on the toy model) is ``test_engine_openai_vllm.py``.
"""

from __future__ import annotations

import base64
import io
import socket
import time

import pytest
from PIL import Image
from support.scripted_server import Reply, ScriptedServer, chat_completion

from curate.config import EngineConfig, OpenAIConfig
from curate.engines import GenerationRequest, SamplingParams, create_engine
from curate.engines.openai_engine import OpenAIEngine

PARAMS = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=32, stop=("</answer>",))


def image(color: tuple[int, int, int], size: tuple[int, int] = (28, 56)) -> Image.Image:
    return Image.new("RGB", size, color)


def request(question: str = "How many?", images: int = 1, seed: int = 0, n: int = 1) -> GenerationRequest:
    parts = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": question}]
    return GenerationRequest(
        messages=[{"role": "system", "content": "Answer."}, {"role": "user", "content": parts}],
        images=[image((10 * i, 20, 30)) for i in range(images)],
        seed=seed,
        n=n,
    )


def echo_seed(req, calls):
    """Answers each sample with its seed, so results show which request produced them."""
    return Reply(body=chat_completion(f"<answer>{req.body['seed']}", stop_reason="</answer>"))


def engine_for(server: ScriptedServer, **kwargs) -> OpenAIEngine:
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAIEngine(server.base_url, "served-model", **kwargs)


def test_one_request_per_sample_with_seed_plus_i_and_images_inlined():
    with ScriptedServer(echo_seed) as server, engine_for(server, concurrency=3) as engine:
        reqs = [request("q0", images=2, seed=100, n=3), request("q1", images=0, seed=7, n=1)]
        results = engine.generate(reqs, PARAMS)
    assert [[c.text for c in r.completions] for r in results] == [
        ["<answer>100</answer>", "<answer>101</answer>", "<answer>102</answer>"],
        ["<answer>7</answer>"],
    ]
    assert all(r.ok and r.prompt_tokens == 7 for r in results)
    bodies = server.posted()
    assert sorted(b["seed"] for b in bodies) == [7, 100, 101, 102]
    for body in bodies:
        assert body["n"] == 1 and body["model"] == "served-model"
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (
            0.7,
            0.9,
            32,
            ["</answer>"],
        )
        assert "logprobs" not in body
    first = next(b for b in bodies if b["seed"] == 100)
    assert first["messages"][0] == {"role": "system", "content": "Answer."}
    parts = first["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    for j, part in enumerate(parts[:2]):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert decoded.tobytes() == reqs[0].images[j].tobytes()


@pytest.mark.parametrize(
    "text, matched, expected",
    [
        ("<answer>3", {"stop_reason": "</answer>"}, "<answer>3</answer>"),  # vLLM strips and reports it
        ("<answer>3", {"stop_reason": None, "matched_stop": "</answer>"}, "<answer>3</answer>"),  # SGLang
        ("<answer>3</answer>", {"stop_reason": "</answer>"}, "<answer>3</answer>"),  # server kept it
        ("no answer", {"stop_reason": 151645}, "no answer"),  # stopped on an EOS token id
    ],
)
def test_stop_string_is_kept(text, matched, expected):
    def respond(req, calls):
        body = chat_completion(text)
        body["choices"][0].pop("stop_reason")
        body["choices"][0].update(matched)
        return Reply(body=body)

    with ScriptedServer(respond) as server, engine_for(server) as engine:
        (result,) = engine.generate([request()], PARAMS)
    assert result.completions[0].text == expected
    assert result.completions[0].finish_reason == "stop"


def test_length_finish_and_logprobs_with_token_ids():
    def respond(req, calls):
        assert req.body["logprobs"] is True and req.body["return_tokens_as_token_ids"] is True
        return Reply(
            body=chat_completion(
                "abc",
                finish_reason="length",
                stop_reason=None,
                completion_tokens=2,
                logprobs=[("token_id:17", -0.5), ("token_id:4", -1.25)],
            )
        )

    params = SamplingParams(temperature=0.0, max_tokens=2, logprobs=True)
    with ScriptedServer(respond) as server, engine_for(server) as engine:
        (result,) = engine.generate([request()], params)
    (c,) = result.completions
    assert (c.text, c.finish_reason, c.num_tokens, c.token_ids, c.logprobs) == (
        "abc",
        "length",
        2,
        [17, 4],
        [-0.5, -1.25],
    )


def test_retries_5xx_then_succeeds():
    def respond(req, calls):
        if calls < 2:
            return Reply(503, {"error": {"message": "overloaded"}})
        return echo_seed(req, calls)

    with ScriptedServer(respond) as server, engine_for(server, max_retries=3) as engine:
        (result,) = engine.generate([request(seed=5)], PARAMS)
    assert result.ok and result.completions[0].text == "<answer>5</answer>"
    assert len(server.posted()) == 3


def test_gives_up_after_max_retries_with_the_servers_message():
    respond = lambda req, calls: Reply(500, {"object": "error", "message": "engine exploded"})  # noqa: E731
    with ScriptedServer(respond) as server, engine_for(server, max_retries=2) as engine:
        (result,) = engine.generate([request()], PARAMS)
    assert not result.ok and not result.completions
    assert "HTTP 500" in result.error and "engine exploded" in result.error and "3 attempts" in result.error
    assert len(server.posted()) == 3


def test_4xx_is_not_retried_and_fails_only_its_request():
    def respond(req, calls):
        if req.body["seed"] == 1:
            return Reply(400, {"error": {"message": "This model's maximum context length is 16 tokens"}})
        return echo_seed(req, calls)

    with ScriptedServer(respond) as server, engine_for(server, max_retries=3) as engine:
        results = engine.generate([request(seed=0), request(seed=1), request(seed=2)], PARAMS)
    assert [r.ok for r in results] == [True, False, True]
    assert "HTTP 400" in results[1].error and "maximum context length" in results[1].error
    assert [b["seed"] for b in server.posted()].count(1) == 1


def test_timeout_is_retried_then_reported():
    respond = lambda req, calls: Reply(body=chat_completion("late"), delay_s=3.0)  # noqa: E731
    with ScriptedServer(respond) as server, engine_for(server, timeout_s=0.5, max_retries=1) as engine:
        start = time.monotonic()
        (result,) = engine.generate([request()], PARAMS)
        elapsed = time.monotonic() - start
        # On a loaded machine the server may read a request after the client gave up on it.
        deadline = time.monotonic() + 10
        while len(server.posted()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not result.ok and "within 0.5 s" in result.error and "2 attempts" in result.error
    assert len(server.posted()) == 2
    assert elapsed < 3.0  # the engine gave up before the first late answer came


def test_garbage_answers_are_request_errors():
    def respond(req, calls):
        if req.body["seed"] == 0:
            return Reply(body=b"<html>proxy error</html>")
        return Reply(body={"choices": []})

    with ScriptedServer(respond) as server, engine_for(server) as engine:
        results = engine.generate([request(seed=0), request(seed=1)], PARAMS)
    assert "malformed response" in results[0].error and "proxy error" in results[0].error
    assert "malformed completion" in results[1].error


def test_unreachable_server_is_a_request_error():
    with socket.socket() as s:  # a free loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.01) as engine:
        (result,) = engine.generate([request()], PARAMS)
    assert "cannot connect" in result.error and "2 attempts" in result.error


def test_image_count_mismatch_fails_only_that_request():
    bad = request(images=1)
    bad.images.append(image((1, 2, 3)))
    with ScriptedServer(echo_seed) as server, engine_for(server) as engine:
        results = engine.generate([bad, request(seed=3)], PARAMS)
    assert "2 images" in results[0].error and results[1].ok
    assert [b["seed"] for b in server.posted()] == [3]


def test_concurrency_is_bounded():
    respond = lambda req, calls: Reply(body=chat_completion("x"), delay_s=0.2)  # noqa: E731
    with ScriptedServer(respond) as server, engine_for(server, concurrency=2) as engine:
        results = engine.generate([request(seed=s, n=2) for s in range(3)], PARAMS)
    assert all(r.ok for r in results) and len(server.posted()) == 6
    assert server.max_in_flight == 2


def test_from_config_reads_the_key_from_the_env_and_asks_the_server_for_the_model(monkeypatch):
    def respond(req, calls):
        if req.path == "/v1/models":
            return Reply(body={"object": "list", "data": [{"id": "qwen-served", "object": "model"}]})
        return echo_seed(req, calls)

    monkeypatch.setenv("HARDMODE_TEST_KEY", "sk-local")
    with ScriptedServer(respond) as server:
        cfg = EngineConfig(
            backend="openai", openai=OpenAIConfig(base_url=server.base_url, api_key_env="HARDMODE_TEST_KEY")
        )
        with create_engine(cfg) as engine:
            assert isinstance(engine, OpenAIEngine) and engine.model == "qwen-served"
            (result,) = engine.generate([request(seed=9)], PARAMS)
    assert result.ok
    assert all(r.headers.get("Authorization") == "Bearer sk-local" for r in server.received)
    assert server.posted()[0]["model"] == "qwen-served"


def test_no_served_model_fails_fast_naming_the_key():
    respond = lambda req, calls: Reply(body={"data": []})  # noqa: E731
    with ScriptedServer(respond) as server:
        with pytest.raises(RuntimeError, match="engine.openai.base_url"):
            OpenAIEngine(server.base_url, None, backoff_s=0.01)


def test_an_image_that_cannot_be_encoded_fails_only_its_request():
    bad = request(images=1)
    bad.images[0] = Image.new("RGB", (0, 0))  # PNG has no zero-sized images
    with ScriptedServer(echo_seed) as server, engine_for(server) as engine:
        results = engine.generate([bad, request(seed=4)], PARAMS)
    assert results[0].error and results[1].ok
    assert [b["seed"] for b in server.posted()] == [4]
