"""Output shards that can be trusted after a crash: written with Parquet page checksums, verified on resume.

A shard committed before a power loss can still be damaged on disk (a truncated tail, zeroed pages).
Resume must not trust it: its ids would count as done while its rows cannot be read, so every rerun
would fail on the file or lose the rows. :func:`drop_damaged` finds such shards (footer, every page's
CRC, every value decoded) and removes them, together with the Ray Data checkpoint entry that names
them, so that their rows are scored again.

Directories are :class:`curate.storage.Location` (a local path or a URI such as ``s3://bucket/run/annotated``);
a ``Path`` or string is taken as one.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.storage import Location, location

log = logging.getLogger(__name__)

# Keyword arguments for every Parquet writer of shards (pq.write_table, Ray Data's write_parquet).
WRITE_OPTIONS = {"write_page_checksum": True}

Where = Union[Location, str, "os.PathLike[str]"]


def is_intact(path: Where) -> bool:
    """Whether the whole shard reads back: footer, page checksums (where written) and values."""
    loc = location(path)
    try:
        pq.read_table(loc.path, filesystem=loc.filesystem, page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError):
        return False
    return True


def shard_ids(directory: Where) -> list[str]:
    """Ids in the readable shards of ``directory`` (a shard a killed run left half-written is passed
    over: Ray Data's checkpoint recovery deletes it and its rows are scored again)."""
    ids: list[str] = []
    for file in location(directory).children(".parquet"):
        try:
            ids += pq.read_table(file.path, filesystem=file.filesystem, columns=[schema.ID])[schema.ID].to_pylist()
        except (pa.ArrowException, OSError) as err:
            log.warning("passing over an incomplete shard %s (%s)", file.name, err)
    return ids


def drop_damaged(directory: Where, checkpoint: Optional[Where] = None) -> list[str]:
    """Delete the shards of ``directory`` that do not read back, and the Ray Data checkpoint files
    that record them (``<checkpoint>/<prefix>.parquet`` for the shards named ``<prefix>*``, with
    every other shard of that prefix, since the checkpoint entry covers them all). Returns the names
    of the deleted shards."""
    shards = location(directory).children(".parquet")
    damaged = [f for f in shards if not is_intact(f)]
    if not damaged:
        return []
    entries = location(checkpoint).children(".parquet") if checkpoint is not None else []
    doomed: set[Location] = set(damaged)
    for entry in entries:
        if any(f.name.startswith(entry.stem) for f in damaged):
            doomed.update(f for f in shards if f.name.startswith(entry.stem))
            entry.delete()
    for f in sorted(doomed, key=lambda f: f.path):
        log.warning("shard %s is damaged on disk (%s); its rows are scored again",
                    f.name, "unreadable" if f in damaged else "shares its checkpoint entry with a damaged one")
        f.delete()
    return sorted(f.name for f in doomed)
