"""Score a corpus on this machine, without Ray: the quickest way to try a recipe or debug a scorer.

``python -m curate score --config configs/curate/pism.yaml data.path=... output.path=out key=value ...``
reads the corpus (``curate.io``; ``data.format=toy`` generates the demo corpus), scores it chunk by
chunk with ``curate.scorer.Scorer`` (the same code the Ray pipeline's actors run) and writes
``output.path/part-NNNNN.parquet`` — each shard written whole or not at all, so rerunning the same
command skips the ids already written (``output.resume``). For clusters, ``python -m curate run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.config import CurateConfig, load_config, to_yaml

log = logging.getLogger(__name__)


def read_corpus(cfg: CurateConfig) -> tuple[Iterator[pa.Table], int]:
    """Canonical tables of ``output.rows_per_shard`` rows, and the total row count."""
    rows = cfg.output.rows_per_shard
    if cfg.data.format == "toy":
        from curate.toy.corpus import generate_corpus

        t = cfg.data.toy
        table = generate_corpus(t.num_samples, seed=t.seed, tasks=t.tasks)
        if cfg.data.limit:
            table = table.slice(0, cfg.data.limit)
        return iter(table.to_batches(max_chunksize=rows)), table.num_rows
    from curate.io import open_corpus

    corpus = open_corpus(cfg.data)
    total = min(corpus.num_rows, cfg.data.limit or corpus.num_rows)

    def limited() -> Iterator[pa.Table]:
        left = total
        for table in corpus.iter_tables(rows):
            if left <= 0:
                return
            yield table.slice(0, left)
            left -= table.num_rows

    return limited(), total


def written_ids(out: Path) -> set[str]:
    shards = sorted(out.glob("part-*.parquet"))
    if not shards:
        return set()
    return set(pq.ParquetDataset([str(p) for p in shards]).read(columns=[schema.ID])[schema.ID].to_pylist())


def score_corpus(cfg: CurateConfig) -> dict[str, int]:
    """Score every row not yet written under ``output.path``; returns counts."""
    from tqdm import tqdm

    from curate.scorer import Scorer

    out = Path(cfg.output.path)
    out.mkdir(parents=True, exist_ok=True)
    done = written_ids(out) if cfg.output.resume else set()
    if done:
        log.info("resuming: %d ids already in %s are skipped", len(done), out)
    elif any(out.glob("part-*.parquet")):
        raise RuntimeError(f"{out} already has shards and output.resume=false; use a new output.path")
    metadata = json.dumps({"config": dataclasses.asdict(cfg)}, default=str).encode()
    tables, total = read_corpus(cfg)
    scorer = Scorer(cfg)
    counts = {"rows": 0, "scored": 0, "errors": 0, "skipped": 0}
    shard = len(list(out.glob("part-*.parquet")))
    started = time.monotonic()
    try:
        with tqdm(total=total, unit="row", desc="scoring") as bar:
            for table in tables:
                batch = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
                if done:
                    keep = [i not in done for i in batch[schema.ID].to_pylist()]
                    skipped = keep.count(False)
                    counts["skipped"] += skipped
                    bar.update(skipped)
                    batch = batch.filter(pa.array(keep))
                if batch.num_rows == 0:
                    continue
                scored = scorer.score_table(batch, progress=bar.update)
                errors = scored[schema.STATUS].to_pylist().count(schema.STATUS_ERROR)
                counts["rows"] += scored.num_rows
                counts["errors"] += errors
                counts["scored"] += scored.num_rows - errors
                path = out / f"part-{shard:05d}.parquet"
                tmp = path.with_suffix(".tmp")
                pq.write_table(scored.replace_schema_metadata({b"hardmode.run": metadata}), tmp)
                os.replace(tmp, path)
                shard += 1
    finally:
        scorer.close()
    log.info("scored %d rows (%d errors, %d skipped as already written) in %.1f s",
             counts["rows"], counts["errors"], counts["skipped"], time.monotonic() - started)
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="a curation recipe (configs/curate/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. pism.mode=full")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    log.info("config:\n%s", to_yaml(cfg))
    print(json.dumps(score_corpus(cfg)))
    return 0
