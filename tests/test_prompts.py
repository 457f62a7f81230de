"""Chat messages from a question and its images."""

from __future__ import annotations

import pytest

from curate.config import PromptConfig
from curate.scoring.prompts import PromptError, build_messages


def _kinds(messages):
    return [p["type"] if p["type"] == "image" else p["text"] for p in messages[-1]["content"]]


def test_images_first_by_default_and_system_prompt():
    msgs = build_messages("How many?", 2, PromptConfig(system_prompt="S"))
    assert msgs[0] == {"role": "system", "content": "S"}
    assert _kinds(msgs) == ["image", "image", "How many?"]


def test_images_last_for_the_released_cmab_layout():
    assert _kinds(build_messages("Q", 1, PromptConfig(image_position="last"))) == ["Q", "image"]


def test_placeholders_place_images_and_must_match():
    msgs = build_messages("Left <image> right <image> end", 2, PromptConfig(system_prompt=""))
    assert len(msgs) == 1
    assert _kinds(msgs) == ["Left", "image", "right", "image", "end"]
    with pytest.raises(PromptError, match="2 <image> placeholders but 1 images"):
        build_messages("<image> a <image>", 1, PromptConfig())


def test_template_and_empty_question():
    assert _kinds(build_messages("Q?", 0, PromptConfig(template="Answer: {question}"))) == ["Answer: Q?"]
    with pytest.raises(PromptError, match="empty question"):
        build_messages("  ", 1, PromptConfig())
