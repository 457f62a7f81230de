"""Output shards that can be trusted after a crash: written with Parquet page checksums, verified on resume.

A shard committed before a power loss can still be damaged on disk (a truncated tail, zeroed pages).
Resume must not trust it: its ids would count as done while its rows cannot be read, so every rerun
would fail on the file or lose the rows. :func:`drop_damaged` finds such shards (footer, every page's
CRC, every value decoded) and removes them, together with the Ray Data checkpoint entry that names
them, so that their rows are scored again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema

log = logging.getLogger(__name__)

# Keyword arguments for every Parquet writer of shards (pq.write_table, Ray Data's write_parquet).
WRITE_OPTIONS = {"write_page_checksum": True}


def is_intact(path: Path) -> bool:
    """Whether the whole shard reads back: footer, page checksums (where written) and values."""
    try:
        pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError):
        return False
    return True


def shard_ids(directory: Path) -> list[str]:
    """Ids in the readable shards of ``directory`` (a shard a killed run left half-written is passed
    over: Ray Data's checkpoint recovery deletes it and its rows are scored again)."""
    ids: list[str] = []
    for file in sorted(directory.glob("*.parquet")) if directory.exists() else []:
        try:
            ids += pq.read_table(file, columns=[schema.ID])[schema.ID].to_pylist()
        except (pa.ArrowException, OSError) as err:
            log.warning("passing over an incomplete shard %s (%s)", file.name, err)
    return ids


def drop_damaged(directory: Path, checkpoint: Optional[Path] = None) -> list[str]:
    """Delete the shards of ``directory`` that do not read back, and the Ray Data checkpoint files
    that record them (``<checkpoint>/<prefix>.parquet`` for the shards named ``<prefix>*``, with
    every other shard of that prefix, since the checkpoint entry covers them all). Returns the names
    of the deleted shards."""
    if not directory.exists():
        return []
    damaged = [f for f in sorted(directory.glob("*.parquet")) if not is_intact(f)]
    entries = sorted(checkpoint.glob("*.parquet")) if checkpoint is not None and checkpoint.exists() else []
    doomed: set[Path] = set(damaged)
    for entry in entries:
        if any(f.name.startswith(entry.stem) for f in damaged):
            doomed.update(directory.glob(f"{entry.stem}*.parquet"))
            entry.unlink()
    for f in sorted(doomed):
        log.warning("shard %s is damaged on disk (%s); its rows are scored again",
                    f.name, "unreadable" if f in damaged else "shares its checkpoint entry with a damaged one")
        f.unlink()
    return sorted(f.name for f in doomed)
