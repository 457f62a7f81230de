"""Score a corpus on this machine, without Ray: the quickest way to try a recipe or debug a scorer.

``python -m curate score --config configs/curate/pism.yaml data.path=... output.path=out key=value ...``
reads the corpus (``curate.io``; ``data.format=toy`` generates the demo corpus), scores it chunk by
chunk with ``curate.scoring.scorer.Scorer`` (the same code the Ray pipeline's actors run) and writes
``output.path/annotated/part-NNNNN.parquet`` — each shard written whole or not at all, so rerunning
the same command skips the ids already written (``output.resume``; refused if the scoring config
changed) — and ``output.path/run.json``: the layout ``python -m curate run`` writes, so ``report`` and
``select`` read either. For clusters, ``python -m curate run``. ``output.path`` and ``data.path`` may
be URIs (``s3://bucket/run``; ``curate.storage``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curate import run_record, schema
from curate.config import CurateConfig, load_config, to_yaml
from curate.shards import WRITE_OPTIONS, drop_damaged
from curate.storage import Location, stage

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
    import dataclasses

    from curate.io import open_corpus

    data = cfg.data
    if data.path:  # a URI is read from a local copy (curate.storage.stage)
        data = dataclasses.replace(data, path=stage(data.path, "data.path"),
                                   image_root=stage(data.image_root, "data.image_root") if data.image_root else None)
    corpus = open_corpus(data)
    total = min(corpus.num_rows, cfg.data.limit or corpus.num_rows)

    def limited() -> Iterator[pa.Table]:
        left = total
        for table in corpus.iter_tables(rows):
            if left <= 0:
                return
            yield table.slice(0, left)
            left -= table.num_rows

    return limited(), total


def _parts(out: Location) -> list[Location]:
    return [p for p in out.children(".parquet") if p.name.startswith("part-")]


def written_ids(out: Location) -> set[str]:
    shards = _parts(out)
    if not shards:
        return set()
    return set(pq.ParquetDataset([p.path for p in shards], filesystem=out.filesystem)
               .read(columns=[schema.ID])[schema.ID].to_pylist())


def score_corpus(cfg: CurateConfig) -> dict[str, int]:
    """Score every row not yet written under ``output.path``; returns counts."""
    from tqdm import tqdm

    from curate.scoring.scorer import Scorer

    out = Location.parse(cfg.output.path, key="output.path", output=True)
    shards = out / run_record.ANNOTATED_DIR
    record = run_record.begin(cfg, out, shards)
    shards.mkdir()
    drop_damaged(shards)
    done = written_ids(shards)
    if done:
        log.info("resuming: %d ids already in %s are skipped", len(done), shards)
    metadata = json.dumps(record, default=str).encode()
    tables, total = read_corpus(cfg)
    scorer = Scorer(cfg)
    counts = {"rows": 0, "scored": 0, "errors": 0, "skipped": 0}
    shard = 1 + max((int(p.stem.split("-")[1]) for p in _parts(shards)), default=-1)
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
                path = shards / f"part-{shard:05d}.parquet"
                # Whole or not at all: a temporary name renamed locally; one upload on an object store.
                tmp = path.parent / f"part-{shard:05d}.tmp" if path.is_local else path
                pq.write_table(scored.replace_schema_metadata({run_record.RUN_METADATA_KEY: metadata}), tmp.path,
                               filesystem=tmp.filesystem, **WRITE_OPTIONS)
                if tmp != path:
                    tmp.move(path)
                shard += 1
    finally:
        scorer.close()
    seconds = time.monotonic() - started
    log.info("scored %d rows (%d errors, %d skipped as already written) in %.1f s",
             counts["rows"], counts["errors"], counts["skipped"], seconds)
    run_record.finish(out, record, run_record.summarize(shards, total, seconds, record))
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
