"""An independent reference for any engine's tokens: one teacher-forced transformers forward pass.

Given a request and the tokens an engine generated for it, the reference returns, per generated
token, its log-probability under the transformers model, the model's own top token at that step, and
the margin between its two best tokens. Engines can then be held to: the same log-probabilities
within a tolerance everywhere, and the same (greedy) token wherever the margin is clear — near-ties
may legitimately break either way between two numerically different kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from curate.engines.base import Completion, GenerationRequest

# Engines and reference run in float32 on CPU with different kernels (vLLM's CPU attention, fused
# ops). On the toy model the largest log-probability difference seen was 1.4e-6; LOGPROB_TOL leaves
# room for other CPUs' vector units. Greedy tokens must agree wherever the reference's top token leads
# the runner-up by more than MARGIN (nats), ten times the tolerance.
LOGPROB_TOL = 1e-4
MARGIN = 1e-3


@dataclass
class ReferenceSteps:
    logprobs: list[float]  # log p(engine's token) under the reference model
    top_tokens: list[int]  # the reference model's argmax at each step
    margins: list[float]  # top-1 minus top-2 log-probability at each step

    @property
    def all_clear(self) -> bool:
        return all(m > MARGIN for m in self.margins)


def teacher_forced(
    model: Any, processor: Any, request: GenerationRequest, token_ids: Sequence[int]
) -> ReferenceSteps:
    text = processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if request.images:
        kwargs["images"] = list(request.images)
    inputs = dict(processor(**kwargs))
    prompt_len = inputs["input_ids"].shape[1]
    generated = torch.tensor([list(token_ids)], dtype=inputs["input_ids"].dtype)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], generated], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for key in ("mm_token_type_ids", "token_type_ids"):  # generated tokens are text
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.zeros_like(generated)], dim=1)
    with torch.inference_mode():
        logits = model(**inputs).logits[0, prompt_len - 1 : -1].float()
    logprobs = logits.log_softmax(-1)
    top2 = logprobs.topk(2, dim=-1)
    return ReferenceSteps(
        logprobs=logprobs.gather(-1, generated[0, :, None])[:, 0].tolist(),
        top_tokens=top2.indices[:, 0].tolist(),
        margins=(top2.values[:, 0] - top2.values[:, 1]).tolist(),
    )


def check_greedy(
    model: Any, processor: Any, request: GenerationRequest, completion: Completion
) -> ReferenceSteps:
    """Assert a greedy completion (with token ids and log-probabilities) agrees with the reference
    model: every log-probability within LOGPROB_TOL, the greedy token wherever the margin is clear."""
    assert (
        completion.token_ids
        and len(completion.token_ids) == len(completion.logprobs) == completion.num_tokens
    )
    ref = teacher_forced(model, processor, request, completion.token_ids)
    for step, (token, logprob) in enumerate(zip(completion.token_ids, completion.logprobs)):
        assert abs(logprob - ref.logprobs[step]) <= LOGPROB_TOL, (step, logprob, ref.logprobs[step])
        if ref.margins[step] > MARGIN:
            assert token == ref.top_tokens[step], f"step {step}: margin {ref.margins[step]:.3f}"
    return ref
