"""The score columns of an annotated dataset, read without the images: what run.json's summary,
``curate report`` and the tests read, and how their error messages are grouped."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.scoring.registry import SCORERS
from curate.storage import Location, location

# Every scorer's columns but kept answer texts (the only ones that grow with the responses).
SCORE_COLUMNS = [schema.ID, schema.TASK, schema.STATUS, schema.ERROR] + [
    f.name for spec in SCORERS for f in spec.schema if f.type != pa.list_(pa.string())
]


def read_scores(output: str | Path | Location) -> pa.Table:
    """The score columns of every shard under ``output``."""
    where = location(output)
    dataset = pq.ParquetDataset(where.path, filesystem=where.filesystem)
    present = set(dataset.schema.names)
    return dataset.read(columns=[c for c in SCORE_COLUMNS if c in present])


def error_reason(message: str) -> str:
    """Group error messages: stage plus the message with numbers and quoted names blurred."""
    head = message.split(":", 1)[0] if ":" in message else "error"
    rest = message.split(":", 1)[1] if ":" in message else message
    rest = re.sub(r"'[^']*'|\"[^\"]*\"", "…", rest)
    rest = re.sub(r"\d+", "N", rest).strip()
    return f"{head}: {rest[:80]}"
