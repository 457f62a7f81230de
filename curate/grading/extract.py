"""Find the final committed answer inside a model response, in bounded time.

Responses are untrusted and may be huge (a runaway generation, or an adversary): every function here
is linear in the input at worst and looks at a bounded window where it must scan character by
character. Nothing is evaluated.

What a strict judge reads as the answer (:func:`final_answer`):
1. the content of the ``<answer>…</answer>`` block after the reasoning (tags inside ``<think>`` do
   not count; a missing closing tag at the end is tolerated: the output was truncated); several
   blocks that disagree are no answer at all (a hedge spread over tags), several that agree are one;
   a response cut off inside ``<think>`` commits to nothing;
2. inside it ``\\boxed{…}`` is unwrapped (Orsta writes ``<answer>\\boxed{12}</answer>``); several
   boxes with different contents there are, again, a hedge;
3. without tags: the last box; else what follows the last "the answer is" / "Answer:" / "Final
   answer:" / "Therefore," in the tail; two different boxes or stated answers are a hedge unless the
   later one is told as a correction ("first \\boxed{6}, recounting gives \\boxed{7}"); else a short
   reply as a whole ("There are 4 cats."); else the sentence a long reply ends on, marked uncommitted
   so graders only take what clearly stands out there (the last number, an introduced option letter).
A program is not an answer. Lead-ins such as "The answer is" are stripped from the answer itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# A final answer longer than this is not an answer; graders treat longer text as "no answer" or
# compare only what fits (each grader says which).
MAX_ANSWER_CHARS = 4096
# A committed answer to a question with a short answer (a count, a letter, yes/no, a value) longer
# than this is noise around an answer, not an answer ("lol lol … 12").
MAX_SHORT_ANSWER_CHARS = 1000
# A response without tags, box or conclusion this short is its answer ("There are 4 cats.").
SHORT_RESPONSE_CHARS = 600
# Without <answer> tags or \boxed{}, graders look for the answer in this many trailing characters.
TAIL_CHARS = 1000
# How many answer blocks / \boxed occurrences are compared with each other.
_MAX_GROUPS = 8
_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces first, so they are skipped as literals
_LEAD_IN = re.compile(
    r"^\s*+(?:\*\*|__)?\s*+(?:(?:so|thus|therefore|hence)\s*+,?\s*+)?(?:the\s++)?(?:final\s++|correct\s++|short\s++)?"
    r"(?:answer|response)\s*+(?:is|would\s++be|should\s++be|:)\s*+:?\s*+(?:\*\*|__)?\s*+:?\s*+"
    r"|^\s*+(?:最终)?答案\s*+(?:是|为)?\s*+[:：]?\s*+",
    re.IGNORECASE,
)
_CONCLUSION = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|would\s+be|should\s+be|:)\s*:?(?:\*\*|__)?\s*:?"
    r"|(?:最终)?答案\s*(?:是|为)?\s*[:：]?"
    r"|(?:^|(?<=[.!?\n])\s*+)(?:therefore|thus|hence|so|in\s++conclusion|in\s++summary)\s*+,\s*+",
    re.IGNORECASE,
)
# An explicit answer line ("Answer: B", "**Final answer:** 7"); two that differ are two answers.
_ANSWER_LINE = re.compile(
    r"(?:^|\n)\s*+(?:\*\*|__)?\s*+(?:final\s++)?answer\s*+(?:\*\*|__)?\s*+:\s*+(?:\*\*|__)?([^\n]*)", re.IGNORECASE
)
# Words that tell a later answer as a correction of an earlier one.
_CORRECTION = re.compile(
    r"\b(?:correct(?:ing|ion|ed)|re-?check(?:ing|ed)?|re-?count(?:ing|ed)?|reconsider(?:ing|ed)?|actually|wait|"
    r"mistake|forgot|instead|on\s+second\s+thought|re-?examin\w*|fix(?:ing|ed)?|oops|hmm|no[,:!])",
    re.IGNORECASE,
)
_ANSWER_WORD = re.compile(r"answer|答案", re.IGNORECASE)
_BOXED_AT = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ALTERNATIVE_AFTER = re.compile(r"^[^.\n]{0,40}?\bor\b[^.\n]{0,60}?\d")
_SENTENCE_END = re.compile(r"\n|\.(?=\s|$)|[!?;]")
# Bounded repetitions keep it linear on a megabyte of letters.
_CODE = re.compile(
    r"__\w{1,40}__|\bimport\s+[A-Za-z_]|\b(?:exec|eval|compile|system|popen|subprocess|lambda)\s*\(|"
    r"\bos\.[a-z]|\b[A-Za-z_]\w{0,40}\.[A-Za-z_]\w{0,40}\s*\("
)
# "The brand shown is Nike", "It says: EXIT", "the store name printed at the top is WALMART".
_STATED_AS = re.compile(
    r"^[^\n]{0,80}?\b(?:reads|read|says|say|shows|displays|spells|(?:is|are|was|were)(?:\s+(?:labeled|labelled|named|"
    r"called|titled|marked|written|printed|spelled))?|labeled|labelled|named|titled)\b\s*:?\s*|^[^\n:]{0,40}:\s*",
    re.IGNORECASE,
)
_CODE_FENCE = re.compile(r"```[A-Za-z]*")
_QUOTED = re.compile(r"""["“‘`«]([^"“”‘’`«»]{1,500})["”’`»]|(?<!\w)'([^']{1,500})'(?!\w)""")
LATEX_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_SENTENCE_MARK = re.compile(r"[.!?\n](?=\s)|\n")
_READINGS_LIMIT = 40_000
_EMPHASIS = re.compile(r"^(\*\*|__)(.*)\1$", re.DOTALL)


@dataclass(frozen=True)
class FinalAnswer:
    """What the response commits to."""

    text: str | None
    """the answer (None: the response states none, or states several that disagree)"""
    committed: bool
    """True when the text is the answer alone (tags, a box, or an explicit conclusion); False for a
    response tail, where graders must pick the answer out of running text"""
    conflict: bool = False
    """several different final answers (answer blocks or boxes): a hedge, never correct"""


def _balanced_group(text: str, i: int) -> tuple[str, int] | None:
    """The content of the ``{…}`` group starting at ``text[i]`` (after spaces) and its end."""
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
                return text[i + 1 : m.start()], m.end()
    return None


def boxed_groups(text: str) -> list[tuple[int, str]]:
    """``(position, content)`` of the last few brace-balanced ``\\boxed{…}`` / ``\\fbox{…}`` in ``text``,
    in reading order. Only ``_MAX_GROUPS`` occurrences are tried, so a million unbalanced
    ``\\boxed{`` cost what a few do."""
    found: list[tuple[int, str]] = []
    hi = len(text)
    for _ in range(_MAX_GROUPS):
        pos, cmd = max((text.rfind(c, 0, hi), c) for c in _BOXED_COMMANDS)
        if pos < 0:
            break
        group = _balanced_group(text, pos + len(cmd))
        if group is not None:
            found.append((pos, group[0].strip()))
        hi = pos
    return found[::-1]


def boxed_contents(text: str) -> list[str]:
    """The contents of the last few balanced boxes in ``text``, in reading order."""
    return [content for _, content in boxed_groups(text)]


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, else None."""
    found = boxed_contents(text)
    return found[-1] if found else None


def _answer_blocks(response: str) -> list[str]:
    """The contents of the last few ``<answer>`` blocks, in reading order (the last may be open)."""
    blocks: list[str] = []
    hi = len(response)
    for _ in range(_MAX_GROUPS):
        start = response.rfind(ANSWER_OPEN, 0, hi)
        if start < 0:
            break
        body = start + len(ANSWER_OPEN)
        end = response.find(ANSWER_CLOSE, body, hi)
        blocks.append(response[body : end if end >= 0 else hi].strip())
        hi = start
    return blocks[::-1]


def extract_answer(response: str) -> str | None:
    """The raw final answer of ``response``: content of the last ``<answer>`` block, else of the last
    brace-balanced ``\\boxed{…}``, else None (no unwrapping, no conflict check: for display)."""
    if not isinstance(response, str):
        return None
    blocks = _answer_blocks(response)
    if blocks:
        return blocks[-1]
    return last_boxed(response)


def _same(a: str, b: str) -> bool:
    return "".join(a.split()).rstrip(".").lower() == "".join(b.split()).rstrip(".").lower()


def strip_lead_in(text: str) -> str:
    """``text`` without a leading "The answer is" / "**Final answer:**" and surrounding emphasis."""
    text = _LEAD_IN.sub("", text, count=1).strip()
    if m := _EMPHASIS.fullmatch(text):
        text = m.group(2).strip()
    return text


def _unbox(text: str) -> tuple[str, bool]:
    """``(text with its box unwrapped, conflict)``."""
    boxes = boxed_contents(text)
    if not boxes:
        return text, False
    if any(not _same(b, boxes[-1]) for b in boxes):
        return boxes[-1], True
    return boxes[-1], False


def final_answer(response: str) -> FinalAnswer:
    """The final committed answer of ``response`` (see the module docstring)."""
    if not isinstance(response, str):
        return FinalAnswer(None, True)
    think_end = response.find(THINK_CLOSE)
    if THINK_OPEN in response and think_end < 0:
        return FinalAnswer(None, True)  # cut off while thinking: nothing was committed
    if think_end >= 0:  # the reasoning is not the answer, nor are answer tags inside it
        response = response[think_end + len(THINK_CLOSE) :]
    blocks = _answer_blocks(response)
    if blocks:
        texts = [_unbox(b) for b in blocks]
        text, conflict = texts[-1]
        conflict = conflict or any(c or not _same(t, text) for t, c in texts[:-1])
        return _committed(text, conflict)
    if not response.strip():
        return FinalAnswer(None, True)
    return _free_text_answer(response)


def _free_text_answer(response: str) -> FinalAnswer:
    """A response without answer tags: its last box, else its conclusion, else all of a short one,
    else the sentence a long one ends on (uncommitted). Two different boxes or stated answers are a
    hedge unless the later one is told as a correction ("Correcting, the sum is \\boxed{12}")."""
    window = response[-(MAX_ANSWER_CHARS + TAIL_CHARS) :]
    if _BOXED_AT.search(window):
        groups = boxed_groups(window)
        if not groups:
            return FinalAnswer(None, True)
        after = window[window.find("{", groups[-1][0]) + 1 :][:200]  # the last box's content onward
        if _ALTERNATIVE_AFTER.search(after) or not _settled(window, groups):
            return FinalAnswer(None, True, True)
        return _committed(groups[-1][1], False)
    tail = response[-TAIL_CHARS:]
    lines = [m.group(1).strip() for m in _ANSWER_LINE.finditer(tail)]
    if len(lines) > 1 and any(not _same(line, lines[-1]) for line in lines):
        return FinalAnswer(None, True, True)  # "Answer: B" then "Answer: C"
    statements = []
    for conclusion in _CONCLUSION.finditer(tail):
        rest = tail[conclusion.end() :].strip()
        end = _SENTENCE_END.search(rest)
        statements.append((conclusion, (rest[: end.start()] if end else rest).strip()))
    statements = [(m, text) for m, text in statements if text]
    if statements:
        last, text = statements[-1]
        for earlier, before in statements[:-1]:
            if not _same(strip_lead_in(before), strip_lead_in(text)) and _ANSWER_WORD.search(earlier.group()) \
                    and _ANSWER_WORD.search(last.group()) and not _CORRECTION.search(tail, earlier.end(), last.start()):
                return FinalAnswer(None, True, True)  # "The answer is 3. **Final answer:** 4"
        return _committed(text, False)
    if len(response.strip()) <= SHORT_RESPONSE_CHARS:
        return _committed(response.strip(), False)
    return FinalAnswer(strip_lead_in(last_sentence(tail)), False)


def _settled(window: str, groups: list[tuple[int, str]]) -> bool:
    """The boxes agree, or each change of value is told as a correction."""
    for (start, before), (end, after) in zip(groups, groups[1:]):
        if not _same(before, after) and not _CORRECTION.search(window, start, end):
            return False
    return True


def _committed(text: str, conflict: bool) -> FinalAnswer:
    text = strip_lead_in(text)
    if _CODE.search(text):  # a program is not an answer, whatever numbers it prints
        return FinalAnswer(None, True)
    return FinalAnswer(None if conflict else text, True, conflict)


def last_sentence(text: str) -> str:
    """The sentence a free-text response ends on ("… the store name is WALMART.")."""
    text = text[-2000:].rstrip().rstrip(".!?").rstrip()
    starts = [m.end() for m in _SENTENCE_MARK.finditer(text)]
    return text[starts[-1] :].strip() if starts else text


def readings(answer: str) -> list[str]:
    """What an answer may state as its text, most literal first: the whole answer, the answer after a
    lead-in ("The sign reads STOP", "The capital shown is Paris"), and the one quoted span it
    contains, if exactly one. For graders of text (OCR, short answers), which take any reading that
    equals the truth: each is what the answer says, never a fragment of a list."""
    answer = _CODE_FENCE.sub("", LATEX_TEXT.sub(r"\1", answer[:_READINGS_LIMIT])).strip()
    out = [answer]
    if (rest := _STATED_AS.sub("", answer, count=1).strip()) != answer:
        out.append(rest)
    quoted = _QUOTED.findall(answer)
    if len(quoted) == 1:
        out.append(quoted[0][0] or quoted[0][1])
    return out


def answer_text(text: str) -> str:
    """A ground truth as graders compare it: unwrapped from answer tags and ``\\boxed{}`` (truths
    come bare, boxed, or tagged), lead-ins stripped."""
    found = extract_answer(text)
    found = text.strip() if found is None else found
    boxed = last_boxed(found)
    return strip_lead_in(boxed if boxed is not None else found)


def normalize_unicode(text: str) -> str:
    """NFKC (fullwidth digits and letters become ASCII) plus the minus signs NFKC keeps."""
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("\u2013", "-")
