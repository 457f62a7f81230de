"""Teacher-forced attention probing of generated responses: what CMAB and RAP's ACE share.

Both generate on any engine and then score a chosen response on the transformers model: the prompt
the engine saw (same messages and images) plus the response's generated token ids, one batched
forward through ``probe_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from curate.engines.base import GenerationRequest
from curate.scoring.attention_probe import ProbeResult, pack_responses, probe_attention, visual_token_ids

if TYPE_CHECKING:
    from curate.engines.transformers_engine import TransformersEngine


def response_ids(engine: TransformersEngine, text: str, token_ids: Sequence[int] | None) -> list[int]:
    """The response as token ids: the generated ids when the engine returned them, else the text
    tokenized (an OpenAI endpoint returns text only; a re-tokenization can split differently)."""
    if token_ids:
        return list(token_ids)
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def vision_tokens_in(engine: TransformersEngine, ids: Sequence[int]) -> list[int]:
    """Vision placeholder ids inside a response: such a response cannot be probed (the position would
    count as image attention, and the model's forward would look for image features that do not exist)."""
    vision = set(visual_token_ids(engine.model))
    return sorted({t for t in ids if t in vision})


def probe_responses(
    engine: TransformersEngine,
    items: Sequence[tuple[GenerationRequest, Sequence[int]]],
    *,
    batch: int,
    **options: Any,
) -> list[ProbeResult]:
    """``probe_attention`` over (prompt request, response ids) pairs, ``batch`` per forward, in order."""
    out: list[ProbeResult] = []
    encoded: dict[int, dict] = {}  # a request probed with several responses is encoded once
    for start in range(0, len(items), batch):
        group = items[start : start + batch]
        for request, _ in group:
            if id(request) not in encoded:
                encoded[id(request)] = engine.encode(request)
        # collate puts the batch on the probe model's device; pack_responses builds the response ids there too.
        inputs = engine.collate([encoded[id(request)] for request, _ in group])
        packed, lengths = pack_responses(inputs, [list(ids) for _, ids in group], engine.pad_token_id)
        with torch.inference_mode():
            out.extend(probe_attention(engine.model, packed, lengths, **options))
    return out
