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
import pyarrow.compute as pc

from curate import schema as S
from curate.config import ConfigError, DataConfig, PromptConfig
from curate.grading import GRADERS, UnknownTaskError, check_ground_truth, resolve_grader
from curate.images import ImageError, ImageOptions, normalize_image
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
    ValueLimits,
    describe_layouts,
    detect_layout,
    printable,
)
from curate.scoring.prompts import PromptError, build_messages

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


def ground_truth_text(value: Any, structured: bool = True) -> Optional[str]:
    """Strings stay as they are; numbers and, where the grader takes them (``structured``: box lists),
    lists and dicts become JSON text. Anything else is the row's error: a list or dict where one
    answer is expected would become a nonsense truth ("[3]" counted as 3, a dict's words as a colour)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or isinstance(value, (bytes, bytearray)):
        raise RowError(f"ground truth must be text or a number, got {type(value).__name__}")
    if isinstance(value, (list, dict)) and not structured:
        raise RowError(f"ground truth must be text or a number for this task's grader, got a {type(value).__name__}")
    if not isinstance(value, (int, float, list, dict)):
        raise RowError(f"ground truth must be text, a number or JSON data, got {type(value).__name__}")
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


def _valid_text(value: Any) -> bool:
    """None, or a string UTF-8 can carry."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def source_id(layout: Layout, rec: Mapping[str, Any] | RowError, file: SourceFile) -> Optional[str]:
    """The id the source gives a row, or None (no id, or one that cannot be used as text). Only the
    id's own values count: a row whose other values are bad keeps its id."""
    values = rec.partial if isinstance(rec, RowError) else rec
    if values is None:
        return None
    try:
        return layout.source_id(values, file)
    except RowError:
        return None


def row_id(layout: Layout, rec: Mapping[str, Any] | RowError, file: SourceFile, row: int) -> str:
    """The source id, else ``<file key>:<row>`` (the id pre-pass renames those that collide)."""
    return source_id(layout, rec, file) or f"{file.key}:{row}"


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
    beforehand and carried in ``renamed``, so batches can be normalised in any order, anywhere.
    """

    layout: Layout
    container: str
    schema: pa.Schema
    passthrough: dict[str, str]  # source column -> output column
    passthrough_as_text: frozenset  # source columns passed through as text (non-strings as JSON)
    files: dict[str, SourceFile]  # by path
    # (path, row) of every row whose id an earlier row already has -> (its unique id, reason)
    # (path, row) of every row whose id must change -> (its unique id, the error or None): a reused
    # id (an error), or a generated id another row already has as its source id (not an error)
    renamed: dict[tuple[str, int], tuple[str, Optional[str]]] = field(default_factory=dict)
    validate_images: bool = True
    limits: ValueLimits = field(default_factory=ValueLimits)
    images: ImageOptions = field(default_factory=ImageOptions)

    def __call__(self, raw: pa.Table) -> pa.Table:
        records = CONTAINERS[self.container].records(raw)
        paths = raw.column(FILE_COLUMN).to_pylist()
        rows = raw.column(ROW_COLUMN).to_pylist()
        canonical: dict[str, list] = {name: [] for name in (*S.CANONICAL_COLUMNS, S.READ_NOTES)}
        usable: list[bool] = []
        for k, (rec, path, row) in enumerate(zip(records, paths, rows)):
            out, records[k] = self._row(rec, self.files[path], row)
            usable.append(isinstance(records[k], dict))
            for name, value in out.items():
                canonical[name].append(value)
        columns: dict[str, Any] = {
            name: pa.array(values, self.schema.field(name).type) for name, values in canonical.items()
        }
        unusable = pa.array([not u for u in usable])
        for source, target in self.passthrough.items():
            typ = self.schema.field(target).type
            if source in self.passthrough_as_text:
                values = [_passthrough_text(r.get(source)) if isinstance(r, dict) else None for r in records]
                columns[target] = pa.array(values, typ)
            elif source in raw.column_names:  # values of rows that failed their checks are not carried
                columns[target] = pc.if_else(unusable, pa.nulls(raw.num_rows, typ), raw.column(source).cast(typ))
            else:
                columns[target] = pa.nulls(raw.num_rows, typ)
        return pa.table(columns, schema=self.schema)

    def _row(
        self, rec: Mapping[str, Any] | RowError, file: SourceFile, row: int
    ) -> tuple[dict[str, Any], Mapping[str, Any] | RowError]:
        """(the canonical row, the record, or the ``RowError`` that makes its values unusable)."""
        out: dict[str, Any] = dict.fromkeys((*S.CANONICAL_COLUMNS, S.READ_NOTES))
        out[S.ID] = row_id(self.layout, rec, file, row)
        out[S.DATA_SOURCE] = file.key
        out[S.STATUS] = S.STATUS_OK
        try:
            if isinstance(rec, RowError):
                raise rec
            try:
                self.limits.check(rec)
            except RowError as err:
                rec = err
                raise
            self.layout.source_id(rec, file)  # an id of the wrong type is the row's error
            missing = [key for key in self.layout.required if key not in rec]
            if missing:
                raise RowError(f"missing key(s) {missing}")
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
        renamed = self.renamed.get((file.path, row))
        if renamed is not None:
            out[S.ID], reason = renamed
            if reason is not None:  # a later row reusing an id: kept as an error under a unique id
                out[S.STATUS] = S.STATUS_ERROR
                out[S.ERROR] = f"read: {file.path}:{row}: {reason}"
        if out[S.STATUS] == S.STATUS_ERROR:
            out[S.ERROR] = printable(out[S.ERROR])
            out[S.READ_NOTES] = None
            # Values of an error row are kept only where they are valid text (a lone surrogate in
            # the question must not fail the batch that carries the row's error).
            for name in (S.DATA_SOURCE, S.TASK, S.QUESTION, S.GROUND_TRUTH, S.VERIFIER):
                if not _valid_text(out[name]):
                    out[name] = None
            if not (isinstance(out[S.IMAGES], list) and all(isinstance(b, bytes) for b in out[S.IMAGES])):
                out[S.IMAGES] = None
            if not (isinstance(out[S.IMAGE_PATHS], list) and all(_valid_text(p) for p in out[S.IMAGE_PATHS])):
                out[S.IMAGE_PATHS] = None
        return out, rec

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
        if not out[S.QUESTION] or not out[S.QUESTION].strip():
            raise RowError("missing question")
        if not out[S.TASK]:
            raise RowError("missing task")
        try:  # a task no grader serves, or an answer its grader cannot use, is a data error
            grader = GRADERS[resolve_grader(out[S.TASK], out[S.VERIFIER])]
            out[S.GROUND_TRUTH] = ground_truth_text(fields.ground_truth, grader.structured_truth)
            if not out[S.GROUND_TRUTH] or not out[S.GROUND_TRUTH].strip():
                raise RowError("missing ground truth")
            unusable = check_ground_truth(out[S.TASK], out[S.GROUND_TRUTH], out[S.VERIFIER])
        except UnknownTaskError as err:
            raise RowError(str(err)) from None
        if unusable:
            raise RowError(unusable)
        refs = fields.images
        refs = [] if refs is None else refs if isinstance(refs, list) else [refs]
        try:  # the placeholder rule lives in curate.scoring.prompts; checking it here fails the row early
            build_messages(out[S.QUESTION], len(refs), _NO_SYSTEM_PROMPT)
        except PromptError as err:
            raise RowError(str(err)) from None
        images, paths, notes = [], [], []
        for k, ref in enumerate(refs):
            try:
                data, path = self._image_bytes(ref, file)
                if self.validate_images:
                    data, said = normalize_image(data, self.images)
                    notes += [f"image {k}: {note}" for note in said]
            except (RowError, PathError, ImageError) as err:
                raise RowError(f"image {k}: {err}") from None
            images.append(data)
            paths.append(path)
        out[S.IMAGES] = images
        out[S.IMAGE_PATHS] = fields.image_paths if fields.image_paths is not None else paths
        out[S.READ_NOTES] = "; ".join(notes) if notes else fields.notes

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

    def to_ray_dataset(
        self, batch_rows: int = 256, ray_remote_args: Optional[dict[str, Any]] = None
    ) -> ray.data.Dataset:
        """The same rows as a Ray Dataset: one read task per unit, then ``map_batches(normalize)``.

        ``ray_remote_args`` go to both steps (e.g. a scheduling strategy that keeps them on the node
        that holds the files)."""
        import ray.data

        from curate.io.ray_source import CorpusDatasource

        remote_args = dict(ray_remote_args or {})
        source = CorpusDatasource(self.format, self.container, self.units, batch_rows)
        return ray.data.read_datasource(source, ray_remote_args=remote_args or None).map_batches(
            self.normalize, batch_format="pyarrow", batch_size=batch_rows, zero_copy_batch=True, **remote_args
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
    for f in files:
        if not _valid_text(f):
            raise CorpusError(f"{printable(f)}: the file name is not valid UTF-8; rename it")
    stray = [f for f in files if f.endswith(".json")]
    if stray and any(f.endswith((".parquet", ".arrow")) for f in files):  # metadata beside the data
        logger.warning("ignoring %d .json file(s) beside the data files: %s", len(stray), stray[:3])
        files = [f for f in files if not f.endswith(".json")]
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

    if not units:
        raise ConfigError(f"config key 'data.path': the corpus at {cfg.path} has no rows")
    layout = _choose_layout(cfg.format, container_name, [f.path for f in files])()
    by_path = {f.path: f for f in files}
    limits = ValueLimits(max_depth=cfg.max_depth, max_text_chars=cfg.max_text_chars)
    renamed, jsonl_keys = _id_prepass(container_name, layout, units, limits)
    schema, passthrough, as_text = _output_schema(container_name, layout, files, jsonl_keys)
    normalize = Normalizer(
        layout=layout,
        container=container_name,
        schema=schema,
        passthrough=passthrough,
        passthrough_as_text=as_text,
        files=by_path,
        renamed=renamed,
        validate_images=validate_images,
        limits=limits,
        images=cfg.images,
    )
    corpus = Corpus(
        format=layout.name,
        container=container_name,
        files=tuple(files),
        units=tuple(units),
        normalize=normalize,
    )
    logger.info(
        "corpus %s: %d %s file(s), layout %s, %d rows in %d units, %d ids renamed (duplicates or collisions)",
        cfg.path,
        len(files),
        container_name,
        layout.name,
        corpus.num_rows,
        len(units),
        len(renamed),
    )
    return corpus


def _id_prepass(
    container_name: str, layout: Layout, units: list[ReadUnit], limits: ValueLimits
) -> tuple[dict[tuple[str, int], tuple[str, Optional[str]]], list[str]]:
    """Rows whose id must change, ``(path, row) -> (unique id, error or None)``, and for JSONL every
    key of the usable records (in first-seen order).

    A row reusing an earlier row's id becomes an error row under ``<id>#<file key>:<row>``; a row
    without an id whose fallback ``<file key>:<row>`` another row has as its source id gets a fresh
    one. Generated ids never equal any source id, fallback id or other generated id.
    """
    container = CONTAINERS[container_name]
    rows: list[tuple[SourceFile, int, Optional[str]]] = []
    keys: dict[str, None] = {}
    for unit in units:
        for raw in container.read(unit, 4096, columns=layout.id_columns):
            for rec, row in zip(container.records(raw), raw.column(ROW_COLUMN).to_pylist()):
                rows.append((unit.file, row, source_id(layout, rec, unit.file)))
                if container_name == "jsonl" and isinstance(rec, dict):
                    try:
                        limits.check(rec)
                    except RowError:
                        continue
                    keys.update(dict.fromkeys(rec))
    given = {sid for _, _, sid in rows if sid is not None}
    taken = given | {f"{f.key}:{row}" for f, row, sid in rows if sid is None}

    def fresh(candidate: str) -> str:
        base, n = candidate, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}~{n}"
        taken.add(candidate)
        return candidate

    first_seen: dict[str, str] = {}
    renamed: dict[tuple[str, int], tuple[str, Optional[str]]] = {}
    for file, row, sid in rows:
        where = f"{file.path}:{row}"
        if sid is None:
            fallback = f"{file.key}:{row}"
            if fallback in given:
                renamed[(file.path, row)] = (fresh(f"{fallback}#row"), None)
        elif sid in first_seen:
            renamed[(file.path, row)] = (
                fresh(f"{sid}#{file.key}:{row}"),
                f"duplicate id {sid!r} (first used at {printable(first_seen[sid])})",
            )
        else:
            first_seen[sid] = where
    return renamed, list(keys)


def _output_schema(
    container_name: str, layout: Layout, files: list[SourceFile], jsonl_keys: list[str]
) -> tuple[pa.Schema, dict[str, str], frozenset]:
    """Canonical columns and read notes, then every other source column (renamed ``orig_<name>``
    when hardmode writes a column of that name: a source ``pism_bucket`` is never read as a score).

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
    taken = set(S.RESERVED_COLUMNS)
    passthrough: dict[str, str] = {}
    as_text: set[str] = set()
    fields = [*S.CANONICAL_SCHEMA, S.READ_NOTES_FIELD]
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
