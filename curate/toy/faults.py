"""A corpus of bad rows mixed into good toy rows: the input of the fault suite and its benchmark.

``write_fault_corpus(root)`` writes ``root/corpus.jsonl`` (DifficultySampling layout, images as files
under ``root/images``) holding the toy corpus's good rows with one line per kind of bad input in
between, and ``root/clean.jsonl`` holding the good rows alone. Scoring both must give the good rows
the same annotations, every line exactly one output row, and each bad line an error row whose
message contains its kind's reason. Nothing here may read outside ``root``: ``root/../secret.png``
and a symlink to it are bait that the path rules must refuse.

Kinds cover the ways real corpora break: undecodable text (invalid UTF-8, lone surrogates), broken or
pathological JSON (truncated, nested past any sane depth, not an object), wrong types and missing
values, answers a grader cannot use, every way an image reference can be wrong or dangerous, image
files that lie about their content or size, and ids that collide with others or with generated ones.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from curate.toy.corpus import generate_corpus

CORPUS_FILE = "corpus.jsonl"
CLEAN_FILE = "clean.jsonl"
SECRET = "secret.png"  # written beside root: must never be read
# Config overrides the fault suite scores with: the toy model, PISM on a small grid and CMAB, so that
# a run takes seconds and both scorers see every good row.
SCORING = ["data.format=difficulty_sampling", "engine.max_model_len=2048", "pism.ratios=[0.0,0.3,0.6]",
           "pism.k=4", "pism.tau=0.25", "sampling.max_tokens=32", "sampling.temperature=0.7", "pism.seed=5",
           "cmab.enabled=true", "cmab.k=2"]


@dataclass(frozen=True)
class BadRow:
    kind: str
    line: bytes
    reason: str  # a substring of the row's error message ("" for a row that must score fine)
    row_id: Optional[str] = None  # the id the row must keep (None: the reader's positional id)


@dataclass(frozen=True)
class FaultCorpus:
    root: Path
    corpus: Path
    clean: Path
    good_ids: list[str]
    bad: dict[int, BadRow]  # by line number in ``corpus``
    ids: dict[int, str]  # the id each bad line's output row must have
    lines: int


def _png(array: np.ndarray, mode: Optional[str] = None, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A valid PNG header claiming 30000x30000 pixels over a few bytes of data."""
    data = _png(np.zeros((8, 8, 3), np.uint8))
    ihdr = data.index(b"IHDR")
    import zlib

    header = (30000).to_bytes(4, "big") * 2 + data[ihdr + 12 : ihdr + 17]
    chunk = b"IHDR" + header
    crc = zlib.crc32(chunk).to_bytes(4, "big")
    return data[: ihdr - 4] + len(header).to_bytes(4, "big") + chunk + crc + data[ihdr + 4 + 13 + 4 :]


def _line(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=True).encode() + b"\n"


def _record(row_id: str, question: str, truth: Any, images: Any, task: Any = "counting") -> dict[str, Any]:
    return {"id": row_id, "ability": task, "prompt": question, "ground_truth": truth, "image_paths": images}


def _bad_rows(first_good: str, generated_dup_line: int) -> list[BadRow]:
    """Every bad kind; ``first_good`` is a good row's id (to duplicate), ``generated_dup_line`` the
    line the duplicate lands on (its generated id is then taken by a later row)."""
    q, ok = "How many red circles are there?\n<image>", ["images/good-0.png"]

    def rec(kind: str, reason: str, **changes: Any) -> BadRow:
        record = {**_record(f"bad-{kind}", q, "2", ok), **changes}
        record = {k: v for k, v in record.items() if v is not ...}
        return BadRow(kind, _line(record), reason, record.get("id") if isinstance(record.get("id"), str) else None)

    deep = "[" * 100_000 + "]" * 100_000
    rows = [
        BadRow("truncated-json", b'{"id": "bad-truncated", "prompt": \n', "invalid JSON"),
        BadRow("json-array-line", b"[1, 2, 3]\n", "JSON line is a list"),
        BadRow("json-null-line", b"null\n", "JSON line is a NoneType"),
        BadRow("json-string-line", b'"just text"\n', "JSON line is a str"),
        BadRow("invalid-utf8", b'{"id": "bad-utf8", "prompt": "\xff\xfe<image>"}\n', "not valid UTF-8"),
        BadRow("json-deeper-than-python", b'{"id": "bad-deep-line", "x": ' + deep.encode() + b"}\n",
               "nested too deeply"),
        rec("deep-field", "nested deeper than data.max_depth", meta=json.loads("[" * 200 + "]" * 200)),
        rec("surrogate-question", "prompt: not valid Unicode", prompt="How many\ud800?\n<image>"),
        rec("surrogate-truth", "ground_truth: not valid Unicode", ground_truth="2\udfff"),
        rec("surrogate-key", "a key of the row: not valid Unicode", **{"note\udc80": 1}),
        BadRow("surrogate-id", _line(_record("bad-\ud800id", q, "2", ok)), "id: not valid Unicode"),
        rec("surrogate-image-path", "image_paths[0]: not valid Unicode", image_paths=["images/\udcff.png"]),
        rec("huge-text-field", "data.max_text_chars", extra="x" * 1_000_001),
        rec("missing-prompt", "missing key(s) ['prompt']", prompt=...),
        rec("blank-prompt", "missing question", prompt="   "),
        rec("number-prompt", "question must be a string, got int", prompt=42),
        rec("list-prompt", "question must be a string, got list", prompt=["a", "b"]),
        rec("null-truth", "missing 'ground_truth'", ground_truth=None),
        rec("blank-truth", "missing ground truth", ground_truth="  "),
        rec("bool-truth", "ground truth must be text or a number, got bool", ground_truth=True),
        rec("dict-truth", "must be text or a number for this task's grader, got a dict", ground_truth={"n": 2}),
        rec("list-truth", "must be text or a number for this task's grader, got a list", ground_truth=[2]),
        BadRow("nan-truth", b'{"id": "bad-nan", "ability": "counting", "prompt": "How many?\\n<image>", '
               b'"ground_truth": NaN, "image_paths": ["images/good-0.png"]}\n', "not JSON-serialisable",
               "bad-nan"),
        rec("unusable-truth", "counting ground truth has no single non-negative integer", ground_truth="many"),
        rec("unknown-task", "no grader for task 'astrology'", ability="astrology"),
        rec("list-task", "task must be a string, got list", ability=["counting"]),
        rec("missing-image-file", "image file not found", image_paths=["images/nope.png"]),
        rec("dotdot-path", "contains '..'", image_paths=["../" + SECRET]),
        rec("absolute-path-outside", "outside the image root", image_paths=["/etc/hostname"]),
        rec("symlink-outside", "through a symlink", image_paths=["images/link.png"]),
        rec("url-image", "is not supported", image_paths=["https://example.com/a.png"]),
        rec("directory-image", "image 0:", image_paths=["images"]),
        rec("text-as-png", "not a recognised image format", image_paths=["images/text.png"]),
        rec("truncated-png", "cannot decode image", image_paths=["images/truncated.png"]),
        rec("empty-image-file", "empty image (zero bytes)", image_paths=["images/empty.png"]),
        rec("decompression-bomb", "image too large", image_paths=["images/bomb.png"]),
        rec("extreme-aspect", "aspect ratio", image_paths=["images/sliver.png"]),
        rec("bad-base64", "invalid base64", image_paths=["data:image/png;base64,@@@@"]),
        rec("image-wrong-type", "image must be bytes, a path", image_paths=[12345]),
        rec("placeholder-mismatch", "2 <image> placeholders but 1 images", prompt="<image> and <image>?"),
        rec("no-image", "image", image_paths=[]),
        rec("number-id", "id must be a string or an integer, got list", id=["x"]),
        rec("duplicate-id", f"duplicate id {first_good!r}", id=first_good),
        rec("prompt-too-long", "max_model_len", prompt="How many red circles? " + "very " * 3000 + "\n<image>"),
        # Takes the id the reader generates for the duplicate above: the two must still differ.
        rec("generated-id-taken", "", id=f"{first_good}#corpus:{generated_dup_line}"),
    ]
    return rows


def _write_images(root: Path) -> None:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    (root.parent / SECRET).write_bytes(_png(np.full((8, 8, 3), 200, np.uint8)))
    link = images / "link.png"
    if not link.is_symlink():
        os.symlink(root.parent / SECRET, link)
    (images / "text.png").write_bytes(b"this is a text file wearing a .png name\n")
    (images / "truncated.png").write_bytes(_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[:300])
    (images / "empty.png").write_bytes(b"")
    (images / "bomb.png").write_bytes(_bomb_png())
    (images / "sliver.png").write_bytes(_png(np.zeros((1, 400, 3), np.uint8)))


def write_fault_corpus(root: Path, good: int = 12, seed: int = 3) -> FaultCorpus:
    """Write the fault corpus and its clean twin under ``root`` (see the module doc)."""
    root.mkdir(parents=True, exist_ok=True)
    _write_images(root)
    table = generate_corpus(good, seed=seed)
    good_lines = []
    for i, row in enumerate(table.to_pylist()):
        path = f"images/good-{i}.png"
        (root / path).write_bytes(row["images"][0])
        good_lines.append(_line(_record(row["id"], row["question"], row["ground_truth"], [path], row["task"])))
    # Bad rows go between the good ones: every batch mixes both.
    lines: list[bytes] = []
    bad: dict[int, BadRow] = {}
    first_good = table["id"][0].as_py()
    placeholder = _bad_rows(first_good, 0)
    dup_line = None
    order: list[Any] = []
    for i in range(max(len(good_lines), len(placeholder))):
        if i < len(good_lines):
            order.append(good_lines[i])
        if i < len(placeholder):
            order.append(placeholder[i])
    for item in order:
        if isinstance(item, BadRow) and item.kind == "duplicate-id":
            dup_line = len(lines)
        lines.append(item.line if isinstance(item, BadRow) else item)
    assert dup_line is not None
    final = {b.kind: b for b in _bad_rows(first_good, dup_line)}
    for n, item in enumerate(order):
        if isinstance(item, BadRow):
            row = final[item.kind]
            lines[n] = row.line
            bad[n] = row
    (root / CORPUS_FILE).write_bytes(b"".join(lines))
    (root / CLEAN_FILE).write_bytes(b"".join(good_lines))
    key = CORPUS_FILE.rsplit(".", 1)[0]
    ids = {n: b.row_id or f"{key}:{n}" for n, b in bad.items()}
    # The duplicate's generated id is taken by a later row's own id: it gets the next free one.
    ids[dup_line] = f"{first_good}#{key}:{dup_line}~2"
    return FaultCorpus(root, root / CORPUS_FILE, root / CLEAN_FILE, table["id"].to_pylist(), bad, ids, len(lines))


# Score columns whose values must equal the clean run's exactly; ρ̄ comes from a batched forward pass,
# where the other rows of the batch move it by float rounding only (compared to 1e-5).
EXACT_COLUMNS = ("status", "error", "grader", "pism_pc", "pism_attempts", "pism_correct", "pism_generations",
                 "pism_lambda_star", "pism_bucket", "cmab_bucket", "cmab_correct")


@dataclass
class Tally:
    """How an annotated output of the fault corpus compares with what it must be."""

    lines: int = 0
    rows_out: int = 0
    bad_kinds: int = 0
    bad_rows_explained: int = 0  # error rows whose message has their kind's reason (or ok where due)
    good_rows_equal: int = 0  # good rows whose annotations equal the clean run's
    problems: list[str] = field(default_factory=list)

    @property
    def rows_lost(self) -> int:
        return self.lines - self.rows_out


def tally(rows: list[dict[str, Any]], faults: FaultCorpus, clean: dict[str, dict[str, Any]]) -> Tally:
    """Compare an annotated output (``rows``) with the fault corpus's expectations and the clean run."""
    import math

    t = Tally(lines=faults.lines, bad_kinds=len(faults.bad))
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["id"] in by_id:
            t.problems.append(f"id {r['id']!r} written twice")
        by_id[r["id"]] = r
    t.rows_out = len(by_id)
    for line, bad in faults.bad.items():
        row = by_id.get(faults.ids[line])
        if row is None:
            t.problems.append(f"{bad.kind}: no row {faults.ids[line]!r}")
        elif bad.reason and not (row["status"] == "error" and bad.reason in (row["error"] or "")):
            t.problems.append(f"{bad.kind}: status {row['status']}, error {row['error']!r}")
        elif not bad.reason and row["status"] != "ok":
            t.problems.append(f"{bad.kind}: must score fine, got {row['error']!r}")
        else:
            t.bad_rows_explained += 1
    for rid, want in clean.items():
        got = by_id.get(rid)
        if got is None:
            t.problems.append(f"good row {rid!r} missing")
            continue
        differs = [c for c in EXACT_COLUMNS if got.get(c) != want.get(c)]
        rho, want_rho = got.get("cmab_rho"), want.get("cmab_rho")
        if rho != want_rho and not (rho is not None and want_rho is not None
                                    and math.isclose(rho, want_rho, rel_tol=1e-5)):
            differs.append("cmab_rho")
        if differs:
            t.problems.append(f"good row {rid!r} differs from the clean run in {differs}")
        else:
            t.good_rows_equal += 1
    for r in by_id.values():
        if any(SECRET in (p or "") for p in r["image_paths"] or []):
            t.problems.append(f"row {r['id']!r} names {SECRET}, a file outside the root")
    return t
