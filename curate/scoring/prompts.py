"""Turn a canonical sample into the chat messages every engine receives."""

from __future__ import annotations

from typing import Any

from curate.config import PromptConfig
from curate.schema import IMAGE_PLACEHOLDER


class PromptError(ValueError):
    """The question and the images do not fit together (e.g. placeholder count mismatch)."""


def build_messages(question: str, num_images: int, cfg: PromptConfig) -> list[dict[str, Any]]:
    """System message (if any) plus one user message whose parts interleave images and text.

    ``<image>`` placeholders in the question mark where each image goes (verl's convention, which
    asserts that the counts match); a question without placeholders gets all images first, or last
    with ``image_position="last"``.
    """
    if not question or not question.strip():
        raise PromptError("empty question")
    text = cfg.template.replace("{question}", question)
    pieces = text.split(IMAGE_PLACEHOLDER)
    placeholders = len(pieces) - 1
    parts: list[dict[str, Any]] = []
    if placeholders == 0:
        images = [{"type": "image"} for _ in range(num_images)]
        text_part = [{"type": "text", "text": text}]
        parts = images + text_part if cfg.image_position == "first" else text_part + images
    elif placeholders == num_images:
        for i, piece in enumerate(pieces):
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
            if i < num_images:
                parts.append({"type": "image"})
    else:
        raise PromptError(f"question has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")
    messages: list[dict[str, Any]] = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": cfg.system_prompt})
    messages.append({"role": "user", "content": parts})
    return messages


def without_placeholder(question: str) -> str:
    """A one-image question with its lone ``<image>`` placeholder taken out, so that the prompt
    layout (``image_position``) decides where the image goes; other questions are returned as is."""
    if question.count(IMAGE_PLACEHOLDER) != 1:
        return question
    before, after = question.split(IMAGE_PLACEHOLDER)
    return " ".join(part for part in (before.strip(), after.strip()) if part)
