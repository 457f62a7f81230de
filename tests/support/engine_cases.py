"""Inputs shared by the engine tests: a model directory and toy-corpus requests."""

from __future__ import annotations

from curate.config import PromptConfig
from curate.engines import GenerationRequest
from curate.images import decode_image
from curate.prompts import build_messages


def model_dir(tmp_path_factory) -> str:
    from support.tiny_qwen25vl import build

    return str(build(tmp_path_factory.mktemp("model")))


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
