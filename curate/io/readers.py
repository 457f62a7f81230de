"""One small reader per corpus layout: how a source record maps onto the canonical fields.

A layout only *locates* values (which key holds the question, the images, the answer, the id); it
does not check them. Type and content checks, image loading and error rows are done once for every
layout by ``curate.io.corpus.Normalizer``, so all formats fail the same way with the same messages.

Layouts are independent of the container: a verl-layout table can arrive as Parquet, as JSONL or as
an HF ``save_to_disk`` directory; ``detect_layout`` looks at column names (and the field names of
struct/dict columns) only, never at row values, so detection is cheap and deterministic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from curate import schema as S


class RowError(ValueError):
    """Why one source row cannot become a canonical sample (the row is kept, marked as an error).

    ``partial`` holds the row's values that could be decoded when others could not (so that its id
    is still the one the source gives).
    """

    def __init__(self, message: str, partial: Optional[dict] = None):
        super().__init__(message)
        self.partial = partial


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) escaped, for messages and names."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class ValueLimits:
    """Bounds on one source record's values (``data.max_depth``, ``data.max_text_chars``)."""

    max_depth: int = 32
    max_text_chars: int = 1_000_000

    def check(self, record: Mapping[str, Any]) -> None:
        """Raise ``RowError`` naming the field if a value is nested too deep, a text is too long or is
        not valid Unicode (a lone surrogate such as ``\\ud800`` is valid JSON but no UTF-8 text).
        Iterative: a pathological value cannot exhaust the stack."""
        stack: list[tuple[Any, int, str]] = [(record, 0, "")]
        while stack:
            value, depth, where = stack.pop()
            if isinstance(value, str):
                self._check_text(value, where or "value")
            elif isinstance(value, (dict, list, tuple)):
                if depth >= self.max_depth:
                    where = where if len(where) <= 80 else where[:77] + "..."
                    raise RowError(f"{where or 'the row'} is nested deeper than data.max_depth={self.max_depth}")
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for key, item in items:
                    if isinstance(key, str):
                        self._check_text(key, f"a key of {where or 'the row'}")
                        name = printable(key[:64])
                        stack.append((item, depth + 1, f"{where}.{name}" if where else name))
                    else:
                        stack.append((item, depth + 1, f"{where}[{key!r}]"))

    def _check_text(self, text: str, where: str) -> None:
        if len(text) > self.max_text_chars:
            raise RowError(f"{where}: {len(text)} characters > data.max_text_chars={self.max_text_chars}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RowError(f"{where}: not valid Unicode text ({err.reason} at character {err.start})") from None


@dataclass(frozen=True)
class SourceFile:
    """One data file of a corpus.

    ``key`` is the file's path relative to the corpus base directory without its suffix (just the
    stem for a single file): it makes fallback ids ``<key>:<row>`` unique across files and is the
    default ``data_source``. ``image_root`` confines the file's image paths (``curate.io.paths``).
    """

    path: str
    key: str
    image_root: str


# Column name -> field names when the column is a struct (Parquet/Arrow) or a dict (JSONL), else None.
ColumnInfo = Mapping[str, Optional[frozenset]]


@dataclass
class Fields:
    """Raw values a layout found in one record; ``Normalizer`` validates and converts them."""

    question: Any
    images: Any  # list of image refs (bytes | path | {"bytes", "path"}), one ref, or None
    ground_truth: Any
    task: Any
    data_source: Any
    verifier: Any = None
    image_paths: Optional[list] = None  # provenance carried over from a canonical file
    notes: Optional[str] = None  # read notes carried over from a canonical file
    prior_error: Optional[str] = None  # canonical rows that an earlier stage already marked as errors


def require(rec: Mapping[str, Any], key: str) -> Any:
    value = rec.get(key)
    if value is None:
        raise RowError(f"missing {key!r}")
    return value


def id_text(value: Any, what: str) -> Optional[str]:
    """A source id as text; None when absent (the caller falls back to ``<file key>:<row>``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RowError(f"{what} is not valid Unicode text: {printable(value)[:80]!r}") from None
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise RowError(f"{what} must be a string or an integer, got {type(value).__name__}")


def single_turn(messages: Any, what: str) -> tuple[Any, Any]:
    """(user content, assistant content or None) of a one-question chat; system turns are dropped.

    The curation prompt's system message comes from ``PromptConfig`` (and verl recipes set theirs in
    the trainer), so a dataset's own system turn is not part of the sample. Multi-turn chats are
    refused: one question, one answer is what difficulty scoring means.
    """
    if isinstance(messages, str):
        return messages, None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RowError(f"{what} must be a list of chat messages, got {type(messages).__name__}")
    roles = [m.get("role") for m in messages if m.get("role") != "system"]
    if roles not in (["user"], ["user", "assistant"]):
        raise RowError(
            f"{what} must be one user turn (optionally followed by one assistant turn), got roles {roles}"
        )
    turns = [m for m in messages if m.get("role") != "system"]
    return turns[0].get("content"), (turns[1].get("content") if len(turns) == 2 else None)


def _dict(rec: Mapping[str, Any], key: str) -> dict:
    value = rec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RowError(f"{key!r} must be a dict, got {type(value).__name__}")
    return value


class Layout:
    """How one corpus layout stores a sample. Subclasses set the class attributes and ``extract``."""

    name: ClassVar[str]
    # Columns every file must have (checked per file at open time; per row for JSONL).
    required: ClassVar[tuple[str, ...]]
    # Source columns whose content the canonical row carries; all others pass through.
    consumed: ClassVar[frozenset]
    # Columns ``source_id`` reads (the id pre-pass reads only these).
    id_columns: ClassVar[tuple[str, ...]]
    # What detection looks for, in words (for "cannot detect" errors).
    needs: ClassVar[str]

    @classmethod
    def matches(cls, columns: ColumnInfo) -> bool:
        return set(cls.required) <= set(columns)

    def source_id(self, rec: Mapping[str, Any], file: SourceFile) -> Optional[str]:
        return id_text(rec.get("id"), "id")

    def extract(self, rec: Mapping[str, Any], file: SourceFile) -> Fields:
        raise NotImplementedError


class CanonicalLayout(Layout):
    """Our own Parquet (``curate.schema``): resume input and annotated output read back."""

    name = "canonical"
    required = S.CANONICAL_COLUMNS
    consumed = frozenset([*S.CANONICAL_COLUMNS, S.READ_NOTES])
    id_columns = (S.ID,)
    needs = "the curate.schema columns"

    def extract(self, rec: Mapping[str, Any], file: SourceFile) -> Fields:
        status = rec.get(S.STATUS)
        if status not in (S.STATUS_OK, S.STATUS_ERROR):
            raise RowError(f"status must be {S.STATUS_OK!r} or {S.STATUS_ERROR!r}, got {status!r}")
        prior = (rec.get(S.ERROR) or "error (no message)") if status == S.STATUS_ERROR else None
        return Fields(
            question=rec.get(S.QUESTION),
            images=rec.get(S.IMAGES) or [],
            ground_truth=rec.get(S.GROUND_TRUTH),
            task=rec.get(S.TASK),
            data_source=rec.get(S.DATA_SOURCE),
            verifier=rec.get(S.VERIFIER),
            image_paths=rec.get(S.IMAGE_PATHS),
            notes=rec.get(S.READ_NOTES),
            prior_error=prior,
        )


class VerlLayout(Layout):
    """verl RL parquet: ``prompt`` chat, ``images``, ``ability``, ``reward_model.ground_truth``.

    Id: ``extra_info.id``, else a top-level ``id``, else ``<file key>:<extra_info.index>`` (verl's
    index counts rows per split file, so it is qualified by the file to stay unique in a corpus).
    """

    name = "verl"
    required = ("prompt", "reward_model")
    consumed = frozenset({"data_source", "prompt", "images", "ability"})
    id_columns = ("extra_info", "id")
    needs = "prompt, reward_model"

    def source_id(self, rec: Mapping[str, Any], file: SourceFile) -> Optional[str]:
        extra = _dict(rec, "extra_info")
        found = id_text(extra.get("id"), "extra_info.id") or id_text(rec.get("id"), "id")
        if found is None:
            index = id_text(extra.get("index"), "extra_info.index")
            found = f"{file.key}:{index}" if index is not None else None
        return found

    def extract(self, rec: Mapping[str, Any], file: SourceFile) -> Fields:
        question, _ = single_turn(require(rec, "prompt"), "prompt")
        reward = _dict(rec, "reward_model")
        return Fields(
            question=question,
            images=rec.get("images"),
            ground_truth=reward.get("ground_truth"),
            task=rec.get("ability"),
            data_source=rec.get("data_source") or file.key,
            verifier=self._verifier(rec),
        )

    def _verifier(self, rec: Mapping[str, Any]) -> Any:
        # Not a verl field: our exporter stores the per-sample grader override in extra_info.
        return _dict(rec, "extra_info").get("verifier")


_ORSTA_FILE = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<task>[A-Za-z0-9]+)_(?P<source>.+)_(?P<num>\d+)$")


class OrstaLayout(VerlLayout):
    """Orsta / V-Triune: verl's layout plus per-sample verifier routing in ``reward_model``.

    Files are named ``{split}_{task}_{source}_{num}.parquet``; the task comes from the file name
    (the most reliable label in that release), else from ``ability``. ``reward_model.verifier``
    becomes the canonical ``verifier``; ``reward_model`` and ``extra_info`` (answer, ratios,
    verifier_parm, image_path) pass through unchanged for graders that need them.
    """

    name = "orsta"
    needs = "prompt, reward_model with a verifier field"

    @classmethod
    def matches(cls, columns: ColumnInfo) -> bool:
        return super().matches(columns) and "verifier" in (columns.get("reward_model") or ())

    def extract(self, rec: Mapping[str, Any], file: SourceFile) -> Fields:
        fields = super().extract(rec, file)
        parsed = _ORSTA_FILE.match(file.key.rsplit("/", 1)[-1])
        if parsed:
            fields.task = parsed["task"]
            if not rec.get("data_source"):
                fields.data_source = parsed["source"]
        return fields

    def _verifier(self, rec: Mapping[str, Any]) -> Any:
        return _dict(rec, "reward_model").get("verifier")


class DifficultySamplingLayout(Layout):
    """DifficultySampling JSONL: ``{"id", "ability", "prompt", "ground_truth", "image_paths"}``."""

    name = "difficulty_sampling"
    required = ("prompt", "ground_truth", "image_paths")
    consumed = frozenset(
        {"id", "ability", "prompt", "ground_truth", "image_paths", "verifier", "data_source"}
    )
    id_columns = ("id",)
    needs = "prompt, ground_truth, image_paths"

    def extract(self, rec: Mapping[str, Any], file: SourceFile) -> Fields:
        return Fields(
            question=require(rec, "prompt"),
            images=rec.get("image_paths"),
            ground_truth=require(rec, "ground_truth"),
            task=rec.get("ability"),
            data_source=rec.get("data_source") or file.key,
            verifier=rec.get("verifier"),
        )


class SwiftLayout(Layout):
    """ms-swift GRPO JSONL ``{"images", "messages", "solution"}`` (SFT files: the assistant turn).

    ms-swift has no task field; the task is read from ``task`` (our exports write it), else from
    ``task_type`` (the key DifficultySampling's swift reward plugin reads). ``task_type`` itself
    passes through.
    """

    name = "swift"
    required = ("messages",)
    consumed = frozenset({"id", "images", "messages", "solution", "task", "verifier", "data_source"})
    id_columns = ("id",)
    needs = "messages"

    def extract(self, rec: Mapping[str, Any], file: SourceFile) -> Fields:
        question, answer = single_turn(require(rec, "messages"), "messages")
        solution = rec.get("solution")
        return Fields(
            question=question,
            images=rec.get("images"),
            ground_truth=solution if solution is not None else answer,
            task=rec.get("task") or rec.get("task_type"),
            data_source=rec.get("data_source") or file.key,
            verifier=rec.get("verifier"),
        )


# Detection order matters: the first layout whose columns match wins (orsta before verl).
LAYOUTS: dict[str, type[Layout]] = {
    cls.name: cls for cls in (CanonicalLayout, OrstaLayout, VerlLayout, DifficultySamplingLayout, SwiftLayout)
}


def detect_layout(columns: ColumnInfo) -> Optional[type[Layout]]:
    return next((cls for cls in LAYOUTS.values() if cls.matches(columns)), None)


def describe_layouts() -> str:
    """What each layout needs, for 'cannot detect' errors."""
    return "; ".join(f"{name}: {cls.needs}" for name, cls in LAYOUTS.items())
