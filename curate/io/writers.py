"""Export canonical (possibly difficulty-annotated) tables to the formats trainers read.

* ``write_verl_parquet``: verl's RL layout, loadable by ``verl.utils.dataset.RLHFDataset``.
  ``images`` is a list of HF Image values ``{"bytes": ..., "path": None}`` and the file carries the
  HF ``datasets`` feature metadata, so ``datasets.load_dataset("parquet")`` (what verl calls) hands
  verl PIL images; ``extra_info`` holds ``index, id, task, verifier, split, image_size`` plus the annotation
  columns the caller names (verl passes ``extra_info`` to ``compute_score``).
* ``write_swift_grpo_jsonl``: ms-swift GRPO rows ``{"messages", "images", "solution", ...}``; extra
  keys (``id, task, verifier, data_source`` and the named columns) reach ms-swift reward functions
  as keyword arguments.
* ``write_sft_jsonl``: the same plus the assistant turn (= ground truth), the ``messages`` +
  ``images`` layout both ms-swift and LLaMA-Factory (sharegpt with role/content tags) read.

The user turn is the prompt the model saw while being scored: ``curate.scoring.prompts.build_messages``
(one ``<image>`` per image; a question without placeholders gets its images first), flattened
back to text with ``<image>`` markers. Pass the scoring ``PromptConfig`` as ``prompt`` to keep its
template and system prompt; the default is the bare question.

JSONL exports need image files: they are written as ``<dir of the JSONL>/images/<hash of id>-<k>.<ext>``
with the original encoded bytes (PNG, JPEG, WebP, GIF, BMP kept as they are; anything else
re-encoded to PNG) and referenced relative to the JSONL's directory. LLaMA-Factory resolves them
against its dataset dir; ms-swift resolves relative paths against the working directory, so run it
from that directory or pass ``absolute_image_paths=True``.

Rows with ``status="error"`` are refused by default: the export fails with their count and nothing
is left behind. ``skip_errors=True`` leaves them out and logs the count. Output files are written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from curate import schema as S
from curate.config import PromptConfig
from curate.images import decode_image, encode_png, image_size
from curate.scoring.prompts import PromptError, build_messages

logger = logging.getLogger(__name__)

Tables = pa.Table | Iterable[pa.Table]

_BARE_PROMPT = PromptConfig(system_prompt="", template="{question}")
_KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
_VERL_EXTRA_INFO = ("index", "id", "task", "verifier", "split", "image_size")


class ExportError(ValueError):
    """The tables cannot be exported as asked (error rows, a missing column, a bad question)."""


@dataclass(frozen=True)
class ExportSummary:
    path: str
    rows: int  # rows written
    skipped_errors: int  # error rows left out (skip_errors=True)
    image_files: int = 0  # image files written (JSONL exports)


def _iter_tables(tables: Tables) -> Iterator[pa.Table]:
    if isinstance(tables, pa.Table):
        yield tables
    else:
        yield from tables


def chat_messages(
    question: str, num_images: int, prompt: Optional[PromptConfig], sample_id: str
) -> list[dict]:
    """The scoring prompt as text messages: ``<image>`` markers where build_messages puts images."""
    try:
        messages = build_messages(question, num_images, prompt or _BARE_PROMPT)
    except PromptError as err:
        raise ExportError(f"sample {sample_id!r}: {err}") from None
    return text_turns(messages)


def text_turns(messages: list[dict]) -> list[dict]:
    """Engine messages (content parts) as text turns, an ``<image>`` marker for each image part."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(S.IMAGE_PLACEHOLDER if p["type"] == "image" else p["text"] for p in content)
        out.append({"role": m["role"], "content": content})
    return out


class _RowFilter:
    """Counts error rows; refuses them (stop writing, fail at the end) unless told to skip them."""

    def __init__(self, skip_errors: bool, what: str):
        self.skip_errors, self.what = skip_errors, what
        self.errors = 0
        self.first_error: Optional[str] = None

    def ok_rows(self, table: pa.Table) -> list[dict[str, Any]]:
        ok = pc.fill_null(pc.equal(table.column(S.STATUS), S.STATUS_OK), False)
        bad = table.filter(pc.invert(ok))
        if bad.num_rows and self.first_error is None:
            self.first_error = f"{bad.column(S.ID)[0].as_py()!r}: {bad.column(S.ERROR)[0].as_py()}"
        self.errors += bad.num_rows
        return [] if self.refusing else table.filter(ok).to_pylist()

    @property
    def refusing(self) -> bool:
        return self.errors > 0 and not self.skip_errors

    def finish(self) -> None:
        if self.refusing:
            raise ExportError(
                f"{self.errors} row(s) have status=error (first: {self.first_error}); refusing to "
                f"export them to {self.what}. Pass skip_errors=True to leave them out"
            )
        if self.errors:
            logger.warning("%s: left out %d row(s) with status=error", self.what, self.errors)


def _require_columns(table: pa.Table, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ExportError(f"the table has no column(s) {missing}")


def _commit(tmp: str, path: str, ok: bool) -> None:
    if ok:
        os.replace(tmp, path)
    elif os.path.exists(tmp):
        os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# verl
# ---------------------------------------------------------------------------------------------


def _verl_schema(extra_fields: Sequence[pa.Field]) -> pa.Schema:
    """verl's columns as an Arrow schema with the HF feature metadata (images = List(Image()))."""
    import datasets

    extra_info = pa.schema(
        [
            pa.field("index", pa.int64()),
            pa.field("id", pa.string()),
            pa.field("task", pa.string()),
            pa.field("verifier", pa.string()),
            pa.field("split", pa.string()),
            # (width, height) of the first image: the reward compares boxes across coordinate conventions
            pa.field("image_size", pa.list_(pa.int32())),
            *extra_fields,
        ]
    )
    features = datasets.Features(
        {
            "data_source": datasets.Value("string"),
            "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "images": datasets.List(datasets.Image()),
            "ability": datasets.Value("string"),
            "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
            "extra_info": dict(datasets.Features.from_arrow_schema(extra_info)),
        }
    )
    return features.arrow_schema


def write_verl_parquet(
    tables: Tables,
    path: str | os.PathLike[str],
    *,
    split: str = "train",
    extra_info_columns: Sequence[str] = (),
    skip_errors: bool = False,
    prompt: Optional[PromptConfig] = None,
    row_group_rows: int = 128,
) -> ExportSummary:
    """Write verl RL parquet; ``extra_info_columns`` (e.g. ``pism_bucket``) are copied into extra_info."""
    clash = sorted(set(extra_info_columns) & set(_VERL_EXTRA_INFO))
    if clash:
        raise ExportError(
            f"extra_info_columns {clash} clash with verl's own extra_info keys {_VERL_EXTRA_INFO}"
        )
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    rows_filter = _RowFilter(skip_errors, path)
    writer: Optional[pq.ParquetWriter] = None
    written = 0
    try:
        for table in _iter_tables(tables):
            _require_columns(table, [*S.CANONICAL_COLUMNS, *extra_info_columns])
            if writer is None:
                schema = _verl_schema([table.schema.field(c) for c in extra_info_columns])
                writer = pq.ParquetWriter(tmp, schema)
            rows = rows_filter.ok_rows(table)
            if rows_filter.refusing or not rows:
                continue
            out = []
            for r in rows:
                n = len(r[S.IMAGES] or [])
                extra = {
                    "index": written + len(out),
                    "id": r[S.ID],
                    "task": r[S.TASK],
                    "verifier": r[S.VERIFIER],
                    "split": split,
                    "image_size": image_size((r[S.IMAGES] or [None])[0]),
                }
                extra.update({c: r[c] for c in extra_info_columns})
                out.append(
                    {
                        "data_source": r[S.DATA_SOURCE],
                        "prompt": chat_messages(r[S.QUESTION], n, prompt, r[S.ID]),
                        "images": [{"bytes": b, "path": None} for b in r[S.IMAGES] or []],
                        "ability": r[S.TASK],
                        "reward_model": {"style": "rule", "ground_truth": r[S.GROUND_TRUTH]},
                        "extra_info": extra,
                    }
                )
            writer.write_table(pa.Table.from_pylist(out, schema=writer.schema), row_group_size=row_group_rows)
            written += len(out)
        if writer is None:
            raise ExportError("nothing to export: no tables given")
        writer.close()
        rows_filter.finish()
    except BaseException:
        if writer is not None:
            writer.close()
        _commit(tmp, path, ok=False)
        raise
    _commit(tmp, path, ok=True)
    logger.info("wrote %d rows to %s", written, path)
    return ExportSummary(path, written, rows_filter.errors)


# ---------------------------------------------------------------------------------------------
# ms-swift / LLaMA-Factory JSONL
# ---------------------------------------------------------------------------------------------


def _image_file(data: bytes) -> tuple[bytes, str]:
    """(bytes to write, extension): the original encoding when it is a common one, else PNG."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
    if fmt in _KEPT_FORMATS:
        return data, _KEPT_FORMATS[fmt]
    return encode_png(decode_image(data)), "png"


class _ImageFiles:
    """Writes a sample's images under ``<root>/images/`` and remembers new files for cleanup."""

    def __init__(self, root: str, absolute: bool):
        self.root, self.absolute = root, absolute
        self.created: list[str] = []

    def write(self, sample_id: str, images: Sequence[bytes]) -> list[str]:
        digest = hashlib.blake2b(sample_id.encode(), digest_size=16).hexdigest()
        refs = []
        for k, data in enumerate(images):
            payload, ext = _image_file(data)
            rel = f"images/{digest}-{k}.{ext}"
            full = os.path.join(self.root, rel)
            if not os.path.exists(full):
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(payload)
                self.created.append(full)
            refs.append(os.path.abspath(full) if self.absolute else rel)
        return refs

    def remove_created(self) -> None:
        for p in self.created:
            os.remove(p)


def _write_jsonl(
    tables: Tables,
    path: str | os.PathLike[str],
    make: Callable[[dict, list[str]], dict],
    extra_columns: Sequence[str],
    skip_errors: bool,
    absolute_image_paths: bool,
) -> ExportSummary:
    path = os.fspath(path)
    root = os.path.dirname(os.path.abspath(path))
    os.makedirs(root, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    rows_filter = _RowFilter(skip_errors, path)
    files = _ImageFiles(root, absolute_image_paths)
    written = 0
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for table in _iter_tables(tables):
                _require_columns(table, [*S.CANONICAL_COLUMNS, *extra_columns])
                rows = rows_filter.ok_rows(table)
                if rows_filter.refusing:
                    continue
                for r in rows:
                    record = make(r, files.write(r[S.ID], r[S.IMAGES] or []))
                    record.update({c: r[c] for c in extra_columns})
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    written += 1
        rows_filter.finish()
    except BaseException:
        files.remove_created()
        _commit(tmp, path, ok=False)
        raise
    _commit(tmp, path, ok=True)
    logger.info("wrote %d rows and %d new image files to %s", written, len(files.created), path)
    return ExportSummary(path, written, rows_filter.errors, len(files.created))


def write_swift_grpo_jsonl(
    tables: Tables,
    path: str | os.PathLike[str],
    *,
    extra_columns: Sequence[str] = (),
    skip_errors: bool = False,
    prompt: Optional[PromptConfig] = None,
    absolute_image_paths: bool = False,
) -> ExportSummary:
    """ms-swift GRPO JSONL; ``solution`` is the ground truth, extra keys reach the reward functions."""

    def make(r: dict, images: list[str]) -> dict:
        return {
            "id": r[S.ID],
            "messages": chat_messages(r[S.QUESTION], len(images), prompt, r[S.ID]),
            "images": images,
            "solution": r[S.GROUND_TRUTH],
            "task": r[S.TASK],
            "verifier": r[S.VERIFIER],
            "data_source": r[S.DATA_SOURCE],
        }

    return _write_jsonl(tables, path, make, extra_columns, skip_errors, absolute_image_paths)


def write_sft_jsonl(
    tables: Tables,
    path: str | os.PathLike[str],
    *,
    extra_columns: Sequence[str] = (),
    skip_errors: bool = False,
    prompt: Optional[PromptConfig] = None,
    absolute_image_paths: bool = False,
) -> ExportSummary:
    """SFT JSONL (ms-swift / LLaMA-Factory ``messages`` + ``images``); the assistant turn = ground truth."""

    def make(r: dict, images: list[str]) -> dict:
        messages = chat_messages(r[S.QUESTION], len(images), prompt, r[S.ID])
        messages.append({"role": "assistant", "content": r[S.GROUND_TRUTH]})
        return {
            "id": r[S.ID],
            "messages": messages,
            "images": images,
            "task": r[S.TASK],
            "verifier": r[S.VERIFIER],
            "data_source": r[S.DATA_SOURCE],
        }

    return _write_jsonl(tables, path, make, extra_columns, skip_errors, absolute_image_paths)
