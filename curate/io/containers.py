"""File containers a corpus can arrive in: Parquet, JSON Lines, and HF ``save_to_disk`` Arrow files.

A container knows how to count a file's rows, cut it into read units (row ranges that one Ray read
task or one local loop step reads), and stream a unit as *raw* Arrow batches. A raw batch holds the
file's own columns (JSONL: the undecoded line) plus two provenance columns, the file path and the
row index, so that the normalisation step can name the file and row of every error and build
fallback ids without any state. Raw batches are bounded by ``batch_rows``: a corpus is never held in
memory at once.

Row indices are 0-based positions in the file; for JSONL they are 0-based line numbers (blank lines
are not rows but keep their number, so ``file:row`` points at the right line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.readers import ColumnInfo, RowError, SourceFile

FILE_COLUMN = "__hm_file"
ROW_COLUMN = "__hm_row"
LINE_COLUMN = "__hm_line"
PROVENANCE = (FILE_COLUMN, ROW_COLUMN)

# JSONL detection looks at the keys of this many leading records.
_DETECT_RECORDS = 100


# What turning stored values into Python objects can raise for one bad value.
_UNDECODABLE = (UnicodeDecodeError, ValueError, RecursionError, pa.ArrowException)


def _decode_row(row: pa.Table) -> dict[str, Any] | RowError:
    """One row as a dict, or a ``RowError`` naming the columns that cannot be decoded (with the
    values that can, so the row keeps its source id)."""
    try:
        return row.to_pylist()[0]
    except _UNDECODABLE:
        partial: dict[str, Any] = {}
        bad: list[str] = []
        for name in row.column_names:
            try:
                partial[name] = row.column(name).to_pylist()[0]
            except _UNDECODABLE as err:
                bad.append(f"{name} ({type(err).__name__}: {err})")
        return RowError(f"cannot decode column(s) {'; '.join(bad)}", partial)


class CorpusError(ValueError):
    """A corpus that cannot be opened at all (unreadable file, incompatible columns, ...)."""


@dataclass(frozen=True)
class ReadUnit:
    """Rows ``[start, stop)`` of one file: the unit of work of a read task."""

    file: SourceFile
    start: int
    stop: int
    num_rows: int  # rows in the unit (JSONL: non-blank lines)
    offset: int = 0  # JSONL: byte offset of line ``start``
    row_groups: tuple[int, ...] = ()  # Parquet: the row groups that cover [start, stop)


def _column_info(schema: pa.Schema) -> dict[str, Optional[frozenset]]:
    return {f.name: frozenset(f.type.names) if pa.types.is_struct(f.type) else None for f in schema}


def _with_provenance(batch: pa.RecordBatch | pa.Table, path: str, first_row: int) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = table.num_rows
    table = table.append_column(FILE_COLUMN, pa.array([path] * n, pa.string()))
    return table.append_column(ROW_COLUMN, pa.array(range(first_row, first_row + n), pa.int64()))


class Container:
    """A file format: row counting, unit planning and raw batch reading."""

    name: ClassVar[str]

    def columns(self, path: str) -> ColumnInfo:
        raise NotImplementedError

    def arrow_schema(self, path: str) -> Optional[pa.Schema]:
        """The file's column types (None for JSONL, whose pass-through columns are text)."""
        return None

    def plan(self, file: SourceFile, rows_per_unit: int) -> list[ReadUnit]:
        raise NotImplementedError

    def read(
        self, unit: ReadUnit, batch_rows: int, columns: Optional[Sequence[str]] = None
    ) -> Iterator[pa.Table]:
        """Raw batches of at most ``batch_rows`` rows; ``columns`` projects where the format allows."""
        raise NotImplementedError

    def truncate(self, unit: ReadUnit, num_rows: int) -> ReadUnit:
        """The first ``num_rows`` rows of ``unit`` (for ``data.limit``)."""
        return replace(unit, stop=unit.start + num_rows, num_rows=num_rows)

    def records(self, raw: pa.Table) -> list[dict[str, Any] | RowError]:
        """Raw rows as Python dicts (or the reason a row could not be parsed)."""
        table = raw.drop_columns(list(PROVENANCE))
        try:
            return table.to_pylist()
        except _UNDECODABLE:  # e.g. a string column holding invalid UTF-8: find the row(s)
            return [_decode_row(table.slice(i, 1)) for i in range(table.num_rows)]


def _contiguous_ranges(sizes: Sequence[int], rows_per_unit: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """Group consecutive chunks (row groups) into (start, stop, chunk indices) of >= rows_per_unit rows."""
    out, start, row, members = [], 0, 0, []
    for i, size in enumerate(sizes):
        members.append(i)
        row += size
        if row - start >= rows_per_unit:
            out.append((start, row, tuple(members)))
            start, members = row, []
    if members and row > start:
        out.append((start, row, tuple(members)))
    return out


class ParquetContainer(Container):
    name = "parquet"

    def _open(self, path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as err:
            raise CorpusError(f"cannot read Parquet file {path}: {err}") from None

    def columns(self, path: str) -> ColumnInfo:
        return _column_info(self._open(path).schema_arrow)

    def arrow_schema(self, path: str) -> pa.Schema:
        return self._open(path).schema_arrow

    def plan(self, file: SourceFile, rows_per_unit: int) -> list[ReadUnit]:
        meta = self._open(file.path).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        return [
            ReadUnit(file, start, stop, stop - start, row_groups=groups)
            for start, stop, groups in _contiguous_ranges(sizes, rows_per_unit)
        ]

    def read(
        self, unit: ReadUnit, batch_rows: int, columns: Optional[Sequence[str]] = None
    ) -> Iterator[pa.Table]:
        pf = self._open(unit.file.path)
        present = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        meta = pf.metadata
        row = sum(meta.row_group(i).num_rows for i in range(unit.row_groups[0])) if unit.row_groups else 0
        for batch in pf.iter_batches(
            batch_size=batch_rows, row_groups=list(unit.row_groups), columns=present
        ):
            lo, hi = max(row, unit.start), min(row + batch.num_rows, unit.stop)
            if hi > lo:
                yield _with_provenance(batch.slice(lo - row, hi - lo), unit.file.path, lo)
            row += batch.num_rows
            if row >= unit.stop:
                return


class JsonlContainer(Container):
    """JSON Lines; lines are parsed in ``records`` so that a bad line becomes one error row."""

    name = "jsonl"

    def columns(self, path: str) -> ColumnInfo:
        info: dict[str, Optional[frozenset]] = {}
        seen = 0
        with open(path, "rb") as f:
            for line in f:
                if seen >= _DETECT_RECORDS:
                    break
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(rec, dict):
                    seen += 1
                    for key, value in rec.items():
                        if isinstance(value, dict):
                            info[key] = (info.get(key) or frozenset()) | frozenset(value)
                        else:
                            info.setdefault(key, None)
        return info

    def plan(self, file: SourceFile, rows_per_unit: int) -> list[ReadUnit]:
        units: list[ReadUnit] = []
        start = offset = start_offset = rows = line_no = 0
        with open(file.path, "rb") as f:
            for line_no, line in enumerate(f):
                if line_no == 0 and line.lstrip().startswith(b"["):
                    raise CorpusError(f"{file.path} is a JSON array, not JSON Lines (one object per line)")
                if line.strip():
                    rows += 1
                offset += len(line)
                if rows >= rows_per_unit:
                    units.append(ReadUnit(file, start, line_no + 1, rows, offset=start_offset))
                    start, start_offset, rows = line_no + 1, offset, 0
            if rows:
                units.append(ReadUnit(file, start, line_no + 1, rows, offset=start_offset))
        return units

    def truncate(self, unit: ReadUnit, num_rows: int) -> ReadUnit:
        # Blank lines make the last line number unknown without a scan: cap the row count instead.
        return replace(unit, num_rows=num_rows)

    def read(
        self, unit: ReadUnit, batch_rows: int, columns: Optional[Sequence[str]] = None
    ) -> Iterator[pa.Table]:
        lines: list[bytes] = []
        rows: list[int] = []

        def flush() -> pa.Table:
            table = pa.table(
                {
                    LINE_COLUMN: pa.array(lines, pa.binary()),
                    FILE_COLUMN: [unit.file.path] * len(lines),
                    ROW_COLUMN: pa.array(rows, pa.int64()),
                }
            )
            lines.clear()
            rows.clear()
            return table

        emitted = 0
        with open(unit.file.path, "rb") as f:
            f.seek(unit.offset)
            for line_no in range(unit.start, unit.stop):
                line = f.readline()
                if not line or emitted >= unit.num_rows:
                    break
                if line.strip():
                    emitted += 1
                    lines.append(line)
                    rows.append(line_no)
                    if len(lines) >= batch_rows:
                        yield flush()
        if lines:
            yield flush()

    def records(self, raw: pa.Table) -> list[dict[str, Any] | RowError]:
        out: list[dict[str, Any] | RowError] = []
        for line in raw.column(LINE_COLUMN).to_pylist():
            try:
                rec = json.loads(line)
            except UnicodeDecodeError as err:
                out.append(RowError(f"line is not valid UTF-8 text: {err.reason}"))
                continue
            except ValueError as err:
                out.append(RowError(f"invalid JSON: {err}"))
                continue
            except RecursionError:
                out.append(RowError("JSON nested too deeply to parse"))
                continue
            out.append(
                rec
                if isinstance(rec, dict)
                else RowError(f"JSON line is a {type(rec).__name__}, not an object")
            )
        return out


class ArrowContainer(Container):
    """The Arrow stream files of an HF ``datasets`` ``save_to_disk`` directory (memory-mapped)."""

    name = "arrow"

    def _table(self, path: str) -> pa.Table:
        # Zero-copy: the table's buffers point into the memory map, nothing is loaded eagerly.
        try:
            return pa.ipc.open_stream(pa.memory_map(path)).read_all()
        except (OSError, pa.ArrowException) as err:
            raise CorpusError(f"cannot read Arrow file {path}: {err}") from None

    def columns(self, path: str) -> ColumnInfo:
        return _column_info(self.arrow_schema(path))

    def arrow_schema(self, path: str) -> pa.Schema:
        return self._table(path).schema

    def plan(self, file: SourceFile, rows_per_unit: int) -> list[ReadUnit]:
        n = self._table(file.path).num_rows
        return [
            ReadUnit(file, s, min(s + rows_per_unit, n), min(s + rows_per_unit, n) - s)
            for s in range(0, n, rows_per_unit)
        ]

    def read(
        self, unit: ReadUnit, batch_rows: int, columns: Optional[Sequence[str]] = None
    ) -> Iterator[pa.Table]:
        table = self._table(unit.file.path).slice(unit.start, unit.stop - unit.start)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        for first in range(0, table.num_rows, batch_rows):
            yield _with_provenance(table.slice(first, batch_rows), unit.file.path, unit.start + first)


CONTAINERS: dict[str, Container] = {
    c.name: c for c in (ParquetContainer(), JsonlContainer(), ArrowContainer())
}
