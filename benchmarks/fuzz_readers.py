"""Fuzzing the corpus reader: arbitrary JSONL lines never escape as exceptions, and every line comes
out as exactly one row under a unique id.

A line is a JSON object in a layout the reader knows with fields drawn from all of JSON (any text,
lone surrogates included, numbers, nesting up to and past ``data.max_depth``, image references that
name real, missing, outside or absurd files), or raw bytes (invalid UTF-8, truncated JSON). Each
example is one corpus file behind a fixed good row (so the layout is always detectable); the reader
must turn every other line into an ok or an error row, never fail the read.

``python -m benchmarks.fuzz readers --examples 10000`` runs it at length (``benchmarks/fuzz.py``);
``tests/test_fuzz_readers.py`` runs a few hundred examples in CI.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st
from PIL import Image

from curate.config import DataConfig
from curate.io import open_corpus

LAYOUTS = ("difficulty_sampling", "swift", "verl")

# Any code point, surrogates included: a JSON "\ud800" escape decodes to one.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
_KEYS = st.one_of(st.sampled_from(["id", "prompt", "ground_truth", "image_paths", "ability", "messages",
                                   "images", "solution", "task", "reward_model", "extra_info", "role",
                                   "content", "verifier", "data_source"]), _ANY_TEXT)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _ANY_TEXT)
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_KEYS, inner, max_size=4)),
                     max_leaves=30)
_IMAGE_REFS = st.one_of(
    st.sampled_from(["ok.png", "missing.png", "../outside.png", "/etc/hostname", "link.png", ".", "",
                     "data:image/png;base64,AAAA", "https://example.com/x.png", "ok.png/../ok.png"]),
    _ANY_TEXT, st.integers(), st.lists(_SCALARS, max_size=2), st.dictionaries(_KEYS, _SCALARS, max_size=2))
_TASKS = st.one_of(st.sampled_from(["counting", "math", "ocr", "grounding", "color", "multiple_choice",
                                    "astrology"]), _JSON)


def _deep(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def _record(draw: st.DrawFn) -> dict:
    layout = draw(st.sampled_from(LAYOUTS))
    question = draw(st.one_of(st.just("How many?\n<image>"), _ANY_TEXT, _JSON))
    truth = draw(st.one_of(st.just("3"), _JSON))
    images = draw(st.one_of(st.lists(_IMAGE_REFS, max_size=3), _IMAGE_REFS))
    task = draw(_TASKS)
    if layout == "difficulty_sampling":
        rec = {"id": draw(_JSON), "ability": task, "prompt": question, "ground_truth": truth, "image_paths": images}
    elif layout == "swift":
        rec = {"id": draw(_JSON), "messages": draw(st.one_of(
            st.just([{"role": "user", "content": question}]), _JSON)), "images": images, "solution": truth,
            "task": task}
    else:
        rec = {"prompt": draw(st.one_of(st.just([{"role": "user", "content": question}]), _JSON)),
               "images": images, "ability": task, "reward_model": {"ground_truth": truth},
               "extra_info": draw(st.one_of(st.dictionaries(st.just("id"), _JSON, max_size=1), _JSON))}
    for _ in range(draw(st.integers(0, 2))):  # keys dropped, or extra ones added
        if rec and draw(st.booleans()):
            rec.pop(draw(st.sampled_from(sorted(rec))))
        else:
            rec[draw(_KEYS)] = draw(st.one_of(_JSON, st.integers(30, 80).map(_deep)))
    return rec


LINES = st.lists(
    st.one_of(
        _record().map(lambda r: json.dumps(r, ensure_ascii=True).encode()),
        st.binary(max_size=60),
        _record().map(lambda r: json.dumps(r).encode()[: len(json.dumps(r)) // 2]),  # cut short
    ),
    min_size=1,
    max_size=6,
)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class ReaderWorld:
    """A directory with the image files the fuzzed references may name, reused across examples."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fuzz-readers-")))

    def __post_init__(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "ok.png").write_bytes(_png())
        (self.root / "outside.png").write_bytes(_png())
        link = data / "link.png"
        if not link.is_symlink():
            link.symlink_to(self.root / "outside.png")


def check_reader(world: ReaderWorld, lines: list[bytes], layout: str) -> float:
    """Read one fuzzed corpus; assert every line is one row, ids unique, errors explained. Returns seconds."""
    anchor = {
        "difficulty_sampling": {"id": "anchor", "ability": "counting", "prompt": "How many?\n<image>",
                                "ground_truth": "1", "image_paths": ["ok.png"]},
        "swift": {"id": "anchor", "messages": [{"role": "user", "content": "<image>How many?"}],
                  "images": ["ok.png"], "solution": "1", "task": "counting"},
        "verl": {"prompt": [{"role": "user", "content": "<image>How many?"}], "images": ["ok.png"],
                 "ability": "counting", "reward_model": {"ground_truth": "1"}, "extra_info": {"id": "anchor"}},
    }[layout]
    body = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    path = world.root / "data" / "corpus.jsonl"
    path.write_bytes(b"\n".join([json.dumps(anchor).encode(), *body]) + b"\n")
    started = time.perf_counter()
    corpus = open_corpus(DataConfig(path=str(path), format=layout))
    rows = [r for t in corpus.iter_tables(3) for r in t.to_pylist()]
    seconds = time.perf_counter() - started
    expected = 1 + sum(1 for line in body if line.strip())
    assert len(rows) == expected, (len(rows), expected)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), ids
    assert rows[0]["id"] == "anchor" and rows[0]["status"] == "ok", rows[0]["error"]
    for r in rows:
        assert (r["status"] == "ok") == (r["error"] is None), r
        for value in (r["question"], r["ground_truth"], r["error"], r["id"]):
            if value is not None:
                value.encode("utf-8")  # every string written is valid text
    return seconds
