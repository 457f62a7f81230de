"""The transformers engine's contract on the trained toy model: sample i of a request is the draw of
seed + i whatever else is in the batch, for requests with images and without.

The reference is each (request, i) generated alone as n=1 with seed + i. Text-only prompts (RAP's CDE
asks every question once more without its image) once shared a prefill that transformers' Qwen-VL
forward gives no multimodal positions: the positions ignored left padding and the rope deltas were
the previous image batch's, so the draws differed from the reference (found by bench_rap.py).
"""

from __future__ import annotations

import pytest
from support.engine_cases import toy_requests

from curate.config import PromptConfig, load_config
from curate.engines import GenerationRequest, SamplingParams
from curate.engines.transformers_engine import TransformersEngine
from curate.scoring.prompts import build_messages
from curate.scoring.rap import text_only_question

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

SAMPLED = SamplingParams(temperature=1.0, max_tokens=24, stop=(), logprobs=True)


@pytest.fixture(scope="module")
def engine():
    cfg = load_config(overrides=["data.format=toy", "engine.batch_size=32"])
    with TransformersEngine.from_config(cfg.engine) as eng:
        yield eng


def _text_only(requests: list[GenerationRequest]) -> list[GenerationRequest]:
    out = []
    for r in requests:
        question = next(p["text"] for p in r.messages[-1]["content"] if p["type"] == "text")
        out.append(
            GenerationRequest(
                build_messages(text_only_question(question), 0, PromptConfig()), [], seed=r.seed + 500, n=3
            )
        )
    return out


def _alone(engine, requests: list[GenerationRequest]) -> list[list[list[int]]]:
    return [
        [
            engine.generate([GenerationRequest(r.messages, r.images, seed=r.seed + i, n=1)], SAMPLED)[0]
            .completions[0]
            .token_ids
            for i in range(r.n)
        ]
        for r in requests
    ]


@pytest.mark.parametrize("with_images", [False, True], ids=["text-only", "mixed"])
def test_sample_i_is_seed_plus_i_in_any_batch(engine, with_images):
    images = [GenerationRequest(r.messages, r.images, seed=r.seed, n=2) for r in toy_requests(4, seed=9)]
    texts = _text_only(toy_requests(4, seed=9))  # questions of different lengths: left padding
    engine.generate(images, SAMPLED)  # an image batch first leaves its rope deltas on the model
    batch = texts + images if with_images else texts
    together = [[c.token_ids for c in result.completions] for result in engine.generate(batch, SAMPLED)]
    assert together == _alone(engine, batch)
    lengths = {len(engine.encode(r)["input_ids"][0]) for r in texts}
    assert len(lengths) > 1  # the prompts were padded: the case that went wrong
