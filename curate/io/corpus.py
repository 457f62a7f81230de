"""Open a corpus and turn its rows into canonical tables, locally or with Ray Data, by one code path.

``open_corpus`` lists the files, picks the container and layout, plans read units, runs the id
pre-pass (so duplicate ids are known before any row is normalised) and fixes the output schema.
``Normalizer`` is the pure per-batch function raw rows → canonical rows; ``Corpus.iter_tables``
calls it in a local loop, ``Corpus.to_ray_dataset`` hands it to ``map_batches``. See
``curate.io`` for the contract.
"""

from __future__ import annotations

import base64
import binascii
import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

import pyarrow as pa

from curate import schema as S
from curate.config import ConfigError, DataConfig, PromptConfig
from curate.grading import UnknownTaskError, check_ground_truth
from curate.images import ImageError, decode_image
from curate.io.containers import (
    CONTAINERS,
    FILE_COLUMN,
    LINE_COLUMN,
    PROVENANCE,
    ROW_COLUMN,
    CorpusError,
    ReadUnit,
)
from curate.io.paths import ImageRoot, PathError
from curate.io.readers import (
    LAYOUTS,
    CanonicalLayout,
    Fields,
    Layout,
    RowError,
    SourceFile,
    describe_layouts,
    detect_layout,
)
from curate.prompts import PromptError, build_messages

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".arrow": "arrow"}
_NO_SYSTEM_PROMPT = PromptConfig(system_prompt="")


# ---------------------------------------------------------------------------------------------
# Value checks shared by every layout
# ---------------------------------------------------------------------------------------------


def _text(value: Any, what: str) -> Optional[str]:
    """A text field: None stays None (the caller decides whether that is an error)."""
    if value is None or isinstance(value, str):
        return value
    raise RowError(f"{what} must be a string, got {type(value).__name__}")


def ground_truth_text(value: Any) -> Optional[str]:
    """Strings stay as they are; numbers, lists and dicts (box lists, ...) become JSON text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        raise RowError("ground truth must be text or JSON data, got bytes")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RowError(f"ground truth is not JSON-serialisable: {err}") from None


def _data_uri_bytes(ref: str) -> bytes:
    header, _, payload = ref.partition(",")
    if not header.endswith(";base64"):
        raise RowError("data: URI images must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RowError(f"invalid base64 in data: URI: {err}") from None


def _passthrough_text(value: Any) -> Optional[str]:
    """A pass-through value as text (strings as they are, anything else as JSON)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# The normalisation step
# ---------------------------------------------------------------------------------------------


@dataclass
class Normalizer:
    """Raw rows (a container's batch with provenance columns) → canonical rows. Pure and picklable.

    Every input row gives exactly one output row: a row that cannot be read keeps flowing with
    ``status="error"`` and ``error="read: <file>:<row>: <reason>"``. The only corpus-wide fact a
    row needs, whether its id was already used by an earlier row, is computed by ``open_corpus``
    beforehand and carried in ``duplicates``, so batches can be normalised in any order, anywhere.
    """

    layout: Layout
    container: str
    schema: pa.Schema
    passthrough: dict[str, str]  # source column -> output column
    passthrough_as_text: frozenset  # source columns passed through as text (non-strings as JSON)
    files: dict[str, SourceFile]  # by path
    # (path, row) of every row whose id an earlier row already has -> (its unique id, reason)
    duplicates: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    validate_images: bool = True

    def __call__(self, raw: pa.Table) -> pa.Table:
        records = CONTAINERS[self.container].records(raw)
        paths = raw.column(FILE_COLUMN).to_pylist()
        rows = raw.column(ROW_COLUMN).to_pylist()
        canonical: dict[str, list] = {name: [] for name in S.CANONICAL_COLUMNS}
        for rec, path, row in zip(records, paths, rows):
            for name, value in self._row(rec, self.files[path], row).items():
                canonical[name].append(value)
        columns: dict[str, Any] = {
            name: pa.array(values, S.CANONICAL_SCHEMA.field(name).type) for name, values in canonical.items()
        }
        for source, target in self.passthrough.items():
            typ = self.schema.field(target).type
            if source in self.passthrough_as_text:
                values = [_passthrough_text(r.get(source)) if isinstance(r, dict) else None for r in records]
                columns[target] = pa.array(values, typ)
            elif source in raw.column_names:
                columns[target] = raw.column(source).cast(typ)
            else:
                columns[target] = pa.nulls(raw.num_rows, typ)
        return pa.table(columns, schema=self.schema)

    def _row(self, rec: Mapping[str, Any] | RowError, file: SourceFile, row: int) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(S.CANONICAL_COLUMNS)
        out[S.ID] = f"{file.key}:{row}"
        out[S.DATA_SOURCE] = file.key
        out[S.STATUS] = S.STATUS_OK
        try:
            if isinstance(rec, RowError):
                raise rec
            missing = [key for key in self.layout.required if key not in rec]
            if missing:
                raise RowError(f"missing key(s) {missing}")
            out[S.ID] = self.layout.source_id(rec, file) or out[S.ID]
            fields = self.layout.extract(rec, file)
            if fields.prior_error is not None:
                self._copy_prior(out, fields)
            else:
                self._fill(out, fields, file)
        except RowError as err:
            out[S.STATUS] = S.STATUS_ERROR
            out[S.ERROR] = f"read: {file.path}:{row}: {err}"
        except Exception as err:  # noqa: BLE001 - a value no check foresaw must not stop the corpus
            out[S.STATUS] = S.STATUS_ERROR
            out[S.ERROR] = f"read: {file.path}:{row}: unexpected {type(err).__name__}: {err}"
        duplicate = self.duplicates.get((file.path, row))
        if duplicate is not None:  # a later row reusing an id: kept as an error under a unique id
            out[S.ID], reason = duplicate
            out[S.STATUS] = S.STATUS_ERROR
            out[S.ERROR] = f"read: {file.path}:{row}: {reason}"
        return out

    @staticmethod
    def _copy_prior(out: dict[str, Any], fields: Fields) -> None:
        """A canonical row an earlier stage marked as an error stays one, with its own message."""
        out.update(
            {
                S.DATA_SOURCE: fields.data_source,
                S.TASK: fields.task,
                S.QUESTION: fields.question,
                S.IMAGES: fields.images,
                S.IMAGE_PATHS: fields.image_paths,
                S.GROUND_TRUTH: fields.ground_truth,
                S.VERIFIER: fields.verifier,
                S.STATUS: S.STATUS_ERROR,
                S.ERROR: fields.prior_error,
            }
        )

    def _fill(self, out: dict[str, Any], fields: Fields, file: SourceFile) -> None:
        out[S.DATA_SOURCE] = _text(fields.data_source, "data_source") or file.key
        out[S.VERIFIER] = _text(fields.verifier, "verifier") or None
        out[S.TASK] = _text(fields.task, "task")
        out[S.QUESTION] = _text(fields.question, "question")
        out[S.GROUND_TRUTH] = ground_truth_text(fields.ground_truth)
        if not out[S.QUESTION] or not out[S.QUESTION].strip():
            raise RowError("missing question")
        if not out[S.GROUND_TRUTH] or not out[S.GROUND_TRUTH].strip():
            raise RowError("missing ground truth")
        if not out[S.TASK]:
            raise RowError("missing task")
        try:  # a task no grader serves, or an answer its grader cannot use, is a data error
            unusable = check_ground_truth(out[S.TASK], out[S.GROUND_TRUTH], out[S.VERIFIER])
        except UnknownTaskError as err:
            raise RowError(str(err)) from None
        if unusable:
            raise RowError(unusable)
        refs = fields.images
        refs = [] if refs is None else refs if isinstance(refs, list) else [refs]
        try:  # the placeholder rule lives in curate.prompts; checking it here fails the row early
            build_messages(out[S.QUESTION], len(refs), _NO_SYSTEM_PROMPT)
        except PromptError as err:
            raise RowError(str(err)) from None
        images, paths = [], []
        for k, ref in enumerate(refs):
            try:
                data, path = self._image_bytes(ref, file)
                if self.validate_images:
                    decode_image(data)
            except (RowError, PathError, ImageError) as err:
                raise RowError(f"image {k}: {err}") from None
            images.append(data)
            paths.append(path)
        out[S.IMAGES] = images
        out[S.IMAGE_PATHS] = fields.image_paths if fields.image_paths is not None else paths

    @staticmethod
    def _image_bytes(ref: Any, file: SourceFile) -> tuple[bytes, Optional[str]]:
        """(encoded image, the real path it was read from or None for inline bytes)."""
        if isinstance(ref, dict):  # the HF Image feature: {"bytes": ..., "path": ...}
            data, path = ref.get("bytes"), ref.get("path")
            if isinstance(data, (bytes, bytearray)) and (data or not path):
                return bytes(data), None
            if not path:
                raise RowError("image entry has neither bytes nor a path")
            ref = path
        if isinstance(ref, (bytes, bytearray)):
            return bytes(ref), None
        if isinstance(ref, str):
            if ref.startswith("data:"):
                return _data_uri_bytes(ref), None
            return ImageRoot(file.image_root).read(ref)
        raise RowError(f"image must be bytes, a path or a {{bytes, path}} dict, got {type(ref).__name__}")


# ---------------------------------------------------------------------------------------------
# Opening a corpus
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """An opened corpus: its files, read plan and normalisation step.

    ``iter_tables`` (local) and ``to_ray_dataset`` (distributed) read the same units with the same
    ``normalize`` and therefore give the same rows; only the local order is guaranteed (files
    sorted by path, rows in file order).
    """

    format: str  # the layout: canonical | verl | orsta | difficulty_sampling | swift
    container: str  # parquet | jsonl | arrow
    files: tuple[SourceFile, ...]
    units: tuple[ReadUnit, ...]
    normalize: Normalizer

    @property
    def schema(self) -> pa.Schema:
        return self.normalize.schema

    @property
    def num_rows(self) -> int:
        return sum(u.num_rows for u in self.units)

    def iter_raw(self, unit: ReadUnit, batch_rows: int) -> Iterator[pa.Table]:
        return CONTAINERS[self.container].read(unit, batch_rows)

    def iter_tables(self, batch_rows: int = 256) -> Iterator[pa.Table]:
        """Canonical tables of at most ``batch_rows`` rows, in a deterministic order."""
        for unit in self.units:
            for raw in self.iter_raw(unit, batch_rows):
                yield self.normalize(raw)

    def to_ray_dataset(self, batch_rows: int = 256) -> ray.data.Dataset:
        """The same rows as a Ray Dataset: one read task per unit, then ``map_batches(normalize)``."""
        import ray.data

        from curate.io.ray_source import CorpusDatasource

        source = CorpusDatasource(self.format, self.container, self.units, batch_rows)
        return ray.data.read_datasource(source).map_batches(
            self.normalize, batch_format="pyarrow", batch_size=batch_rows, zero_copy_batch=True
        )


def _glob_base(pattern: str) -> str:
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or "."


def _list_files(path: str, fmt: str) -> tuple[str, list[str], str]:
    """(container, files sorted, base directory for file keys)."""
    if os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "state.json"))
        or os.path.exists(os.path.join(path, "dataset_dict.json"))
    ):
        import datasets

        loaded = datasets.load_from_disk(path)
        parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
        files = [c["filename"] for part in parts for c in part.cache_files]
        return "arrow", files, path
    if fmt == "hf_disk":
        raise ConfigError(
            f"config key 'data.path': {path} is not a datasets.save_to_disk directory "
            "(no state.json or dataset_dict.json)"
        )
    if os.path.isdir(path):
        files, base = [os.path.join(path, n) for n in os.listdir(path)], path
    elif glob.has_magic(path):
        files, base = glob.glob(path, recursive=True), _glob_base(path)
    elif os.path.isfile(path):
        files, base = [path], os.path.dirname(path) or "."
    else:
        raise ConfigError(f"config key 'data.path': {path} does not exist")
    files = sorted(f for f in files if os.path.isfile(f) and os.path.splitext(f)[1] in _SUFFIXES)
    if not files:
        raise ConfigError(f"config key 'data.path': no {'/'.join(_SUFFIXES)} files at {path}")
    kinds = {_SUFFIXES[os.path.splitext(f)[1]] for f in files}
    if len(kinds) > 1:
        raise ConfigError(f"config key 'data.path': {path} mixes {sorted(kinds)} files; point it at one kind")
    return kinds.pop(), files, base


def _file_key(path: str, base: str) -> str:
    rel = os.path.relpath(path, base)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def _choose_layout(fmt: str, container: str, files: list[str]) -> type[Layout]:
    columns = {f: CONTAINERS[container].columns(f) for f in files}
    if fmt in LAYOUTS:
        cls = LAYOUTS[fmt]
        if cls is CanonicalLayout and container != "jsonl":
            for f in files:
                _check_canonical_types(f, CONTAINERS[container].arrow_schema(f))
        if container != "jsonl":  # JSONL keys vary per line: checked per row instead
            for f, cols in columns.items():
                missing = [c for c in cls.required if c not in cols]
                if missing:
                    raise CorpusError(
                        f"{f}: data.format={fmt} needs column(s) {missing}; it has {sorted(cols)}"
                    )
        return cls
    found = {f: detect_layout(cols) for f, cols in columns.items()}
    unknown = [f for f, cls in found.items() if cls is None]
    if unknown:
        raise ConfigError(
            f"config key 'data.format': cannot detect the layout of {unknown[0]} "
            f"(columns {sorted(columns[unknown[0]])}); layouts need: {describe_layouts()}. "
            "Set data.format explicitly"
        )
    if container != "jsonl" and any(cls is CanonicalLayout for cls in found.values()):
        for f in files:
            _check_canonical_types(f, CONTAINERS[container].arrow_schema(f))
    names = {cls.name for cls in found.values()}
    if len(names) > 1:
        raise ConfigError(
            f"config key 'data.path': files have different layouts "
            f"{ {f: cls.name for f, cls in found.items()} }; read them separately"
        )
    return next(iter(found.values()))


def _check_canonical_types(path: str, schema: pa.Schema) -> None:
    """A canonical file has the canonical column types (its error rows are copied as they are)."""
    for want in S.CANONICAL_SCHEMA:
        have = schema.field(want.name).type
        if have != want.type and not pa.types.is_null(have):
            raise CorpusError(f"{path}: column {want.name!r} has type {have}, expected {want.type}")


def _unique_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"orig_{name}"
    return name


def open_corpus(cfg: DataConfig, *, validate_images: bool = True, rows_per_unit: int = 1024) -> Corpus:
    """Open the corpus ``cfg`` describes; fail fast (naming the key or file) if it cannot be read.

    ``validate_images`` decodes every image once while normalising (the check that makes
    ``status="ok"`` mean "usable"); turn it off only to re-read output this project wrote.
    ``rows_per_unit`` sizes read units (Parquet units follow row groups; one Ray read task each).
    """
    if cfg.format == "toy":
        raise ConfigError(
            "config key 'data.format': format=toy is generated by curate.toy, not read from files"
        )
    if not cfg.path:
        raise ConfigError("config key 'data.path': is required")
    container_name, paths, base = _list_files(os.path.abspath(cfg.path), cfg.format)
    container = CONTAINERS[container_name]
    layout_cls = _choose_layout(cfg.format, container_name, paths)
    layout = layout_cls()
    if cfg.image_root is not None:
        try:
            fixed_root: Optional[str] = ImageRoot.at(cfg.image_root).root
        except NotADirectoryError as err:
            raise ConfigError(f"config key 'data.image_root': {err}") from None
    else:
        fixed_root = None
    hf_root = base if container_name == "arrow" else None
    files = [
        SourceFile(
            path=p,
            key=_file_key(p, base),
            image_root=fixed_root or ImageRoot.at(hf_root or os.path.dirname(p)).root,
        )
        for p in paths
    ]

    units: list[ReadUnit] = []
    remaining = cfg.limit
    for i, f in enumerate(files):
        if remaining is not None and remaining <= 0:  # data.limit reached: later files are not read
            del files[i:]
            break
        for unit in container.plan(f, rows_per_unit):
            if remaining is not None:
                if remaining <= 0:
                    break
                if unit.num_rows > remaining:
                    unit = container.truncate(unit, remaining)
                remaining -= unit.num_rows
            units.append(unit)

    by_path = {f.path: f for f in files}
    duplicates, jsonl_keys = _id_prepass(container_name, layout, units)
    schema, passthrough, as_text = _output_schema(container_name, layout, files, jsonl_keys)
    normalize = Normalizer(
        layout=layout,
        container=container_name,
        schema=schema,
        passthrough=passthrough,
        passthrough_as_text=as_text,
        files=by_path,
        duplicates=duplicates,
        validate_images=validate_images,
    )
    corpus = Corpus(
        format=layout.name,
        container=container_name,
        files=tuple(files),
        units=tuple(units),
        normalize=normalize,
    )
    logger.info(
        "corpus %s: %d %s file(s), layout %s, %d rows in %d units, %d duplicate ids",
        cfg.path,
        len(files),
        container_name,
        layout.name,
        corpus.num_rows,
        len(units),
        len(duplicates),
    )
    return corpus


def _id_prepass(
    container_name: str, layout: Layout, units: list[ReadUnit]
) -> tuple[dict[tuple[str, int], tuple[str, str]], list[str]]:
    """Rows reusing an earlier row's id (→ their own id ``<id>#<file key>:<row>`` and the reason) and,
    for JSONL, every key seen (in first-seen order)."""
    container = CONTAINERS[container_name]
    first_seen: dict[str, str] = {}
    duplicates: dict[tuple[str, int], tuple[str, str]] = {}
    keys: dict[str, None] = {}
    for unit in units:
        for raw in container.read(unit, 4096, columns=layout.id_columns):
            rows = raw.column(ROW_COLUMN).to_pylist()
            for rec, row in zip(container.records(raw), rows):
                sid = None
                if isinstance(rec, dict):
                    keys.update(dict.fromkeys(rec))
                    try:
                        sid = layout.source_id(rec, unit.file)
                    except RowError:
                        pass
                sid = sid or f"{unit.file.key}:{row}"
                where = f"{unit.file.path}:{row}"
                if sid in first_seen:
                    duplicates[(unit.file.path, row)] = (
                        f"{sid}#{unit.file.key}:{row}",
                        f"duplicate id {sid!r} (first used at {first_seen[sid]})",
                    )
                else:
                    first_seen[sid] = where
    return duplicates, list(keys)


def _output_schema(
    container_name: str, layout: Layout, files: list[SourceFile], jsonl_keys: list[str]
) -> tuple[pa.Schema, dict[str, str], frozenset]:
    """Canonical columns, then every other source column (renamed ``orig_<name>`` on a clash).

    Returns the schema, source → output column names, and the source columns passed through as
    text: all JSONL keys (they differ per line) and columns whose types differ across files.
    """
    container = CONTAINERS[container_name]
    skip = set(layout.consumed) | set(PROVENANCE) | {LINE_COLUMN}
    types: dict[str, list[pa.DataType]] = {}
    if container_name == "jsonl":
        types = {k: [] for k in jsonl_keys if k not in skip}
    else:
        for f in files:
            for col in container.arrow_schema(f.path):
                if col.name not in skip:
                    types.setdefault(col.name, []).append(col.type)
    taken = set(S.CANONICAL_COLUMNS)
    passthrough: dict[str, str] = {}
    as_text: set[str] = set()
    fields = list(S.CANONICAL_SCHEMA)
    for source, candidates in types.items():
        try:
            typ = (
                pa.unify_schemas([pa.schema([(source, t)]) for t in candidates], promote_options="permissive")
                .field(source)
                .type
                if candidates
                else None
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            typ = None  # the files disagree (e.g. a string vs a list answer): pass it through as text
        if typ is None:
            as_text.add(source)
        name = _unique_name(source, taken)
        taken.add(name)
        passthrough[source] = name
        fields.append(pa.field(name, typ or pa.string()))
    return pa.schema(fields), passthrough, frozenset(as_text)
