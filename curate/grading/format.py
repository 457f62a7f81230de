"""The format reward: did the model think, then answer, in the tags the system prompt asks for?"""

from __future__ import annotations

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


def format_score(response: str) -> float:
    """1.0 iff ``response`` is ``<think>…</think>``, blanks, ``<answer>…</answer>`` and nothing else.

    The same language as the regex ``^<think>.*?</think>\\s*<answer>.*?</answer>$`` (DOTALL, blanks
    allowed around the whole), but each tag must appear exactly once: the lazy regex also accepts
    ``…</answer> more text <answer>…</answer>``. Written with ``str`` scans, so it is linear in the
    response and cannot backtrack.
    """
    if not isinstance(response, str):
        return 0.0
    text = response.strip()
    if not (text.startswith(_THINK_OPEN) and text.endswith(_ANSWER_CLOSE)):
        return 0.0
    if any(text.count(tag) != 1 for tag in (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)):
        return 0.0
    think_end, answer_start = text.find(_THINK_CLOSE), text.find(_ANSWER_OPEN)
    between = text[think_end + len(_THINK_CLOSE) : answer_start]
    return 1.0 if think_end < answer_start and not between.strip() else 0.0
