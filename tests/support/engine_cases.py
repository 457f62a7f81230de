"""Inputs shared by the engine tests: toy-corpus requests for the trained toy model."""

from __future__ import annotations

from curate.config import PromptConfig
from curate.engines import GenerationRequest
from curate.images import decode_image
from curate.scoring.prompts import build_messages


def toy_requests(count: int, seed: int = 0) -> list[GenerationRequest]:
    """The first ``count`` toy-corpus samples as chat requests with the default prompt."""
    from curate.toy.corpus import generate_corpus

    return [
        GenerationRequest(
            messages=build_messages(row["question"], len(row["images"]), PromptConfig()),
            images=[decode_image(b) for b in row["images"]],
            seed=1000 + i,
        )
        for i, row in enumerate(generate_corpus(count, seed=seed).to_pylist())
    ]
