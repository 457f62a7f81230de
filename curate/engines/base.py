"""The one generation-engine interface every backend implements.

PISM, CMAB and RAP only ever call ``GenerationEngine.generate``: a batch of chat requests with images
in, ``n`` completions per request out. Backends (``transformers``, ``vllm``, ``openai``) differ in
where the model runs, never in what the caller sees:

- Sample ``i`` of a request uses seed ``seed + i`` (vLLM's convention). A request with ``n=3`` at seed
  ``s`` therefore yields the same texts as three ``n=1`` requests at seeds ``s, s+1, s+2``; schedulers
  rely on this to give identical answers whatever way they batch the same attempts.
- ``image_id`` names the content of a request's images. Requests with the same id and messages may
  share one prefill; two different images must never carry the same id (vLLM trusts user-given
  multimodal ids blindly and would serve a stale cache).
- A request that cannot run (prompt longer than the engine's limit, an image the processor rejects, a
  server error after retries) comes back with ``error`` set and no completions; the other requests of
  the batch are unaffected.
- Generation stops at any ``stop`` string, which is kept at the end of the text so that graders can
  extract ``<answer>…</answer>``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: tuple[str, ...] = ("</answer>",)
    # Return each generated token's id and log-probability (under the sampling distribution's
    # underlying model, before temperature/top-p) in the completions.
    logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class GenerationRequest:
    # Chat messages. A user message's content is a string or a list of parts
    # {"type": "image"} / {"type": "text", "text": ...}; images fill the image parts in order.
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)
    seed: int = 0
    n: int = 1
    image_id: str | None = None


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (a stop string or EOS) | "length"
    token_ids: list[int] | None = None  # with SamplingParams.logprobs
    logprobs: list[float] | None = None  # log p(token) per generated token, with SamplingParams.logprobs


@dataclass
class GenerationResult:
    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def image_parts(messages: Sequence[dict[str, Any]]) -> int:
    """How many ``{"type": "image"}`` parts the messages hold."""
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )


def check_request(request: GenerationRequest) -> None:
    """Raise ``ValueError`` for a request no backend can run; engines report it as that request's error."""
    if request.n < 1:
        raise ValueError(f"n must be >= 1, got {request.n}")
    parts = image_parts(request.messages)
    if parts != len(request.images):
        raise ValueError(f"messages have {parts} image parts but the request has {len(request.images)} images")


class GenerationEngine(abc.ABC):
    """A batched text generator over chat requests with images."""

    name: str = "engine"

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One result per request, in order; never raises for a bad request (see ``error``)."""

    def close(self) -> None:
        """Release the model / connections. Engines are also context managers."""

    def __enter__(self) -> "GenerationEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
