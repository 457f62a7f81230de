"""Find the answer inside a model response, in bounded time.

Responses are untrusted and may be huge (a runaway generation, or an adversary): every function here
is linear in the input at worst and looks at a bounded window where it must scan character by
character. Nothing is evaluated.
"""

from __future__ import annotations

import re

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

# A final answer longer than this is not an answer; graders treat longer text as "no answer" or
# compare only what fits (each grader says which).
MAX_ANSWER_CHARS = 4096
# Without <answer> tags or \boxed{}, graders look for the answer in this many trailing characters.
TAIL_CHARS = 1000
# How many of the last \boxed occurrences are tried when the later ones are unbalanced.
_MAX_BOXED_TRIES = 8
_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces first, so they are skipped as literals


def extract_answer(response: str) -> str | None:
    """The final answer of ``response``, or None when it states none.

    Content of the last ``<answer>…</answer>`` (a missing closing tag at the end is tolerated: the
    output was truncated), else of the last brace-balanced ``\\boxed{…}``, else None. Whitespace
    around the answer is stripped; an empty answer tag gives ``""``.
    """
    if not isinstance(response, str):
        return None
    start = response.rfind(ANSWER_OPEN)
    if start >= 0:
        body = start + len(ANSWER_OPEN)
        end = response.find(ANSWER_CLOSE, body)
        return response[body : end if end >= 0 else len(response)].strip()
    return last_boxed(response)


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, else None.

    Only the last few occurrences are tried and each scan stops after ``MAX_ANSWER_CHARS``, so an
    input of unbalanced ``\\boxed{`` repeated a million times costs the same as a short one.
    """
    hi = len(text)
    for _ in range(_MAX_BOXED_TRIES):
        pos, cmd = max((text.rfind(c, 0, hi), c) for c in _BOXED_COMMANDS)
        if pos < 0:
            return None
        content = _braced_group(text, pos + len(cmd))
        if content is not None:
            return content.strip()
        hi = pos
    return None


def _braced_group(text: str, i: int) -> str | None:
    """The content of the ``{…}`` group starting at ``text[i]`` (after spaces), if it closes in time."""
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n or text[i] != "{":
        return None
    depth = 0
    for m in _BRACE.finditer(text, i, min(n, i + MAX_ANSWER_CHARS + 2)):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : m.start()]
    return None


def answer_text(text: str) -> str:
    """What a grader compares: the extracted answer, else the whole text stripped.

    Used for ground truths (which may come bare, boxed, or in answer tags) and as the response
    region of graders whose answers are short; callers bound the length themselves.
    """
    found = extract_answer(text)
    return found if found is not None else text.strip()


def answer_region(response: str) -> tuple[str, bool]:
    """``(text, tagged)``: the extracted answer (``tagged=True``), else the response's last
    ``TAIL_CHARS`` characters (``tagged=False``), where untagged answers are looked for."""
    found = extract_answer(response)
    if found is not None:
        return found, True
    return response[-TAIL_CHARS:].strip(), False
