"""Distributed curation on Ray Data: read → validate → score on an actor pool → annotated Parquet.

``python -m curate run --config configs/curate/<recipe>.yaml key=value ...`` connects to the Ray
cluster in ``ray.address`` / ``RAY_ADDRESS`` (as under ``ray job submit``), else starts a private local
one; it never joins a cluster merely because it runs on this machine. The output directory holds:

    corpus/      the input in the canonical schema (stage 1: read + normalise + validate images, CPU)
    annotated/   the product: every input row once, original columns + score columns + status/error
    checkpoint/  Ray Data's id checkpoint of annotated/ (what resume skips)
    run.json     the resolved config, versions and the run summary
    report/      plots and report.md (``python -m curate report``)

Stage 2 reads ``corpus/`` and streams it through ``map_batches(ScoringActor)``: each actor loads the
engine once and runs whole batches through ``curate.scoring.scorer.Scorer`` (PISM waves across the batch's
samples keep one engine busy), then Ray Data writes the shards. Guarantees:

- **Resume.** Ray Data's checkpointing (``CheckpointConfig`` on the ``id`` column, two-phase commit
  of each written file) records every committed shard; rerunning the same command skips those ids,
  so a run killed with SIGKILL loses at most its in-flight batches and never writes a row twice.
  Masks and seeds are pure functions of (id, λ, k, seed), so resumed annotations equal an
  uninterrupted run's. A resume with a different scoring config is refused.
- **No row lost.** Actor crashes are retried (``ray.max_restarts`` / ``ray.max_task_retries``); a
  batch that still fails is set aside (``max_errored_blocks``) and its rows are retried one per
  batch, one task per actor at a time, until a pass makes no progress (a crash also fails the
  tasks queued behind it, so an innocent row can need a second pass); a row that crashes the
  actor even alone, pass after pass, is written as an error row. The run ends by
  checking that every input id appears exactly once.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import run_record, schema
from curate.config import ConfigError, CurateConfig, DataConfig, load_config, to_yaml
from curate.elastic import RESERVED_CPUS, NodeWatch, StepErrors, wait_for_pool
from curate.placement import check_cluster, cluster_nodes
from curate.run_record import ANNOTATED_DIR, RUN_METADATA_KEY
from curate.scoring import registry
from curate.shards import WRITE_OPTIONS, drop_damaged, shard_ids
from curate.storage import (
    Location,
    check_visible_from_every_node,
    describe_nodes,
    is_uri,
    nodes_missing,
    stage,
)

log = logging.getLogger(__name__)

CORPUS_DIR = "corpus"
CHECKPOINT_DIR = "checkpoint"
INGEST_MARKER = "_HARDMODE_COMPLETE.json"
CRASH_ERROR = "score: the scoring actor died on this row on every retry (see the Ray worker logs)"


# ---- progress --------------------------------------------------------------------------------


class ProgressCounter:
    """A Ray actor the scoring actors report to: their totals, which the driver logs periodically,
    and their handles and nodes, so the driver can stop every actor of a pass when it ends and those
    left on a lost node (``curate.elastic.NodeWatch``). It lives on the driver's node: losing any
    other node leaves it intact."""

    def __init__(self) -> None:
        self.rows = self.errors = self.generations = self.tokens = 0
        self.actors: dict[str, tuple[Any, str]] = {}

    def register(self, actor_id: str, actor: Any, node_id: str) -> None:
        self.actors[actor_id] = (actor, node_id)  # a restarted actor registers again, from its new node

    def placements(self) -> list[tuple[Any, str]]:
        return list(self.actors.values())

    def take_actors(self) -> list[Any]:
        actors, self.actors = [a for a, _ in self.actors.values()], {}
        return actors

    def add(self, rows: int, errors: int, generations: int, tokens: int) -> None:
        self.rows += rows
        self.errors += errors
        self.generations += generations
        self.tokens += tokens

    def totals(self) -> dict[str, int]:
        return {"rows": self.rows, "errors": self.errors, "generations": self.generations, "tokens": self.tokens}


class _ProgressLogger(threading.Thread):
    def __init__(self, counter: Any, total: int, every_s: float):
        super().__init__(daemon=True)
        self.counter, self.total, self.every_s = counter, total, every_s
        self.stopped = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        import ray

        while not self.stopped.wait(self.every_s):
            t = ray.get(self.counter.totals.remote())
            dt = max(1e-9, time.monotonic() - self.start_time)
            log.info("progress: %d/%d rows scored (%d errors), %.2f rows/s, %d generations (%.1f/s), %d tokens (%.0f/s)",
                     t["rows"], self.total, t["errors"], t["rows"] / dt, t["generations"], t["generations"] / dt,
                     t["tokens"], t["tokens"] / dt)


# ---- the scoring actor -----------------------------------------------------------------------


class ScoringActor:
    """Ray Data callable class: loads the engine once, scores whole batches."""

    def __init__(self, cfg: CurateConfig, counter: Any = None, run_metadata: bytes = b""):
        from curate.scoring.scorer import Scorer

        if cfg.engine.backend == "vllm":
            # vLLM's engine core runs in this process, not in a child: a child outlives an actor
            # killed by Ray or the OOM killer (vLLM 0.24 has no parent-death watch for it) and keeps
            # the GPU memory every restart of this actor then fails to get. Tensor-parallel workers
            # watch their parent, which is then this actor.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.scorer = Scorer(cfg)
        self.counter = counter
        self.run_metadata = run_metadata
        if counter is not None:
            import ray

            context = ray.get_runtime_context()
            counter.register.remote(context.get_actor_id(), context.current_actor, context.get_node_id())

    def __del__(self) -> None:
        # Ray Data drops this object when it lets its actor go (MapWorker.__ray_shutdown__): the
        # engines shut down cleanly then. A killed actor takes its in-process engine with it.
        scorer = getattr(self, "scorer", None)
        if scorer is not None:
            scorer.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.scorer.score_table(batch)
        if self.counter is not None:
            errors = pc.sum(pc.equal(out[schema.STATUS], schema.STATUS_ERROR)).as_py() or 0
            gens = sum(_column_sum(out, c) for c in registry.generation_columns())
            tokens = sum(_column_sum(out, c) for c in registry.token_columns())
            self.counter.add.remote(out.num_rows, errors, gens, tokens)
        return out.replace_schema_metadata({**(out.schema.metadata or {}), RUN_METADATA_KEY: self.run_metadata})


def _column_sum(table: pa.Table, name: str) -> int:
    if name not in table.column_names:
        return 0
    return int(pc.sum(table[name]).as_py() or 0)


# ---- the run ---------------------------------------------------------------------------------


def cpus_needed(cfg: CurateConfig) -> float:
    """Logical CPUs the scoring pass holds at once: the actors, Ray Data's checkpoint-filter actor
    (one CPU) and one read/write task. Fewer and Ray waits forever instead of failing."""
    return cfg.ray.min_actors * cfg.ray.num_cpus + RESERVED_CPUS


def connect(cfg: CurateConfig) -> None:
    """Connect to the cluster in ``ray.address``, else in RAY_ADDRESS, else start a private local one.

    Only an address asked for is joined (``auto`` included): another cluster found on the machine may
    be someone else's. ``local`` always starts a private one.

    A cluster this function starts declares at least ``cpus_needed`` logical CPUs (they are
    scheduling slots, not cores); an existing cluster that cannot host the pipeline is refused with
    the key to change, since Ray would otherwise wait forever for resources that never come.
    """
    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address and address != "local":
            ray.init(address=address)
        else:
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg))),
                     include_dashboard=False)
    resources = ray.cluster_resources()
    log.info("ray: %s", {k: v for k, v in resources.items() if not k.startswith("node:")})
    check_cluster(cfg, cluster_nodes(ray.nodes()))
    if resources.get("CPU", 0) < cpus_needed(cfg):
        raise ConfigError(
            f"config key 'ray.min_actors': {cfg.ray.min_actors} actor(s) × {cfg.ray.num_cpus} CPU plus 2 for reading, "
            f"writing and Ray Data's checkpoint filter need {cpus_needed(cfg):g} CPUs, the cluster has "
            f"{resources.get('CPU', 0):g}; lower ray.min_actors or ray.num_cpus")


def local_input(data: DataConfig) -> DataConfig:
    """``data`` with a URI ``data.path`` / ``data.image_root`` replaced by its local copy
    (``curate.storage.stage``: downloaded once into the cache, refreshed when the source changes)."""
    if data.format == "toy" or not (is_uri(data.path or "") or is_uri(data.image_root or "")):
        return data
    return dataclasses.replace(data, path=stage(data.path, "data.path") if data.path else None,
                               image_root=stage(data.image_root, "data.image_root") if data.image_root else None)


def check_storage(cfg: CurateConfig, out: Location, data: DataConfig) -> Optional[str]:
    """Storage checks on the connected cluster, before any Ray work. A local ``output.path`` must be
    visible from every node (``curate.storage.check_visible_from_every_node``: refused otherwise).
    An input on this machine only (a local ``data.path`` some node cannot see, or a URI's local copy)
    is read on the driver's node: returns that node's id then, else None."""
    import ray

    check_visible_from_every_node(out, "output.path")
    if cfg.data.format == "toy":
        return None
    paths = [os.path.abspath(_glob_root(p)) for p in (data.path, data.image_root) if p]
    staged = data != cfg.data
    blind, nodes = nodes_missing(paths)
    if nodes > 1 and (staged or blind):
        why = "a local copy of " + str(cfg.data.path) if staged else f"not visible from {describe_nodes(blind)}"
        log.warning("data.path %s (%s): the input is read on the driver's node only", data.path, why)
        return ray.get_runtime_context().get_node_id()
    return None


def _glob_root(path: str) -> str:
    import glob

    parts = path.split(os.sep)
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return os.sep.join(parts[:i]) or os.sep
    return path


def ingest(cfg: CurateConfig, out: Path | Location, read_on: Optional[str] = None) -> int:
    """Stage 1: the input in the canonical schema under ``out/corpus`` (skipped when already done).
    ``read_on``: the id of the node whose Ray tasks read the input (None: any)."""
    out = Location.parse(out)
    target = out / CORPUS_DIR
    marker = target / INGEST_MARKER
    source = {"data": dataclasses.asdict(cfg.data)}
    if cfg.data.format != "toy":
        from curate.io import open_corpus
        from curate.storage import cache_root

        data = local_input(cfg.data)
        corpus = open_corpus(data)
        # A URI's local copy is keyed by the URI, not by where this machine's cache is.
        shown = (lambda p: p) if data == cfg.data else (lambda p: os.path.relpath(p, cache_root()))
        source["files"] = [(shown(f.path), os.path.getsize(f.path), os.path.getmtime(f.path)) for f in corpus.files]
    fingerprint = hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if marker.exists() and drop_damaged(target):
        marker.delete()  # stage 1's output is damaged on disk: read the input again
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fingerprint:
            log.info("stage 1: %s already holds this input (%d rows); skipping", target, done["rows"])
            return int(done["rows"])
        raise RuntimeError(
            f"{target} holds a different input (data config or files changed); use a new output.path"
        )
    target.delete_dir()  # an ingest that never finished
    target.mkdir()
    started = time.monotonic()
    if cfg.data.format == "toy":
        from curate.toy.corpus import generate_corpus

        t = cfg.data.toy
        table = generate_corpus(t.num_samples, seed=t.seed, tasks=t.tasks)
        if cfg.data.limit:
            table = table.slice(0, cfg.data.limit)
        step = cfg.output.rows_per_shard
        for n, start in enumerate(range(0, table.num_rows, step)):
            pq.write_table(table.slice(start, step), (target / f"part-{n:05d}.parquet").path,
                           filesystem=target.filesystem, **WRITE_OPTIONS)
        rows = table.num_rows
    else:
        from ray.data.context import DataContext
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Stage 2's checkpoint config stays in this process's DataContext: an earlier run's (in the
        # same process) would filter this input by the ids that run wrote.
        DataContext.get_current().checkpoint_config = None
        pinned = {"scheduling_strategy": NodeAffinitySchedulingStrategy(read_on, soft=False)} if read_on else None
        ds = corpus.to_ray_dataset(batch_rows=cfg.ray.batch_size * 4, ray_remote_args=pinned)
        if cfg.data.limit:
            ds = ds.limit(cfg.data.limit)
        ds.write_parquet(target.path, filesystem=target.ray_filesystem, min_rows_per_file=cfg.output.rows_per_shard,
                         max_rows_per_file=cfg.output.rows_per_shard, **WRITE_OPTIONS)
        rows = pq.ParquetDataset(target.path, filesystem=target.filesystem).read(columns=[schema.ID]).num_rows
    marker.write_text(json.dumps({"fingerprint": fingerprint, "rows": rows}))
    log.info("stage 1: %d rows in the canonical schema at %s (%.1f s)", rows, target, time.monotonic() - started)
    return rows


def _score_pass(cfg: CurateConfig, out: Path, pool: tuple[int, int, set[str]], batch_size: int, counter: Any,
                metadata: bytes, actor_cls: type = ScoringActor, isolate: bool = False) -> NodeWatch:
    """One streaming pass over the corpus rows not yet in annotated/ (Ray Data checkpoint filter),
    on ``pool`` (``curate.elastic.wait_for_pool``); returns the pass's node watch.

    ``isolate`` runs one task per actor at a time, so a row that kills its actor takes no queued
    neighbour down with it.
    """
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    _stop_actors(counter)
    low, high, _ = pool
    ctx = ray.data.DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(
        id_column=schema.ID, **(out / CHECKPOINT_DIR).checkpoint_args(), delete_checkpoint_on_success=False
    )
    ctx.max_errored_blocks = -1  # a batch that keeps failing is retried row by row below
    ctx.wait_for_min_actors_s = cfg.ray.capacity_wait_s  # never wait forever for actors no node can host
    r = cfg.ray
    remote_args: dict[str, Any] = {"max_restarts": r.max_restarts, "max_task_retries": r.max_task_retries}
    # Blocks of one batch each: every batch is its own actor task, and written files close at
    # output.rows_per_shard rows, which bounds what a killed run loses.
    ds = ray.data.read_parquet(str(out / CORPUS_DIR), filesystem=out.ray_filesystem, file_extensions=["parquet"])
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    ds = ds.map_batches(
        actor_cls,
        fn_constructor_kwargs={"cfg": cfg, "counter": counter, "run_metadata": metadata},
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high,
                                           max_tasks_in_flight_per_actor=1 if isolate else None),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=r.num_cpus,
        num_gpus=r.num_gpus,
        **remote_args,
    )
    watch = NodeWatch(counter, grace_s=cfg.ray.restart_grace_s)
    watch.start()
    try:
        with StepErrors(scoring_step=actor_cls.__name__) as step_errors:
            ds.write_parquet(str(out / ANNOTATED_DIR), filesystem=out.ray_filesystem,
                             min_rows_per_file=cfg.output.rows_per_shard, **WRITE_OPTIONS)
    finally:
        watch.stopped.set()
    step_errors.raise_first()
    _stop_actors(counter)
    return watch


def _stop_actors(counter: Any) -> None:
    """Kill the scoring actors registered so far.

    Ray Data lets its actors go by dropping its handles, but an actor restarted after a crash is
    still referenced by the failed task's traceback (kept by any log handler that holds records) and
    would keep its CPU/GPU from the next pass. Called at both ends of a pass, so that an actor that
    finished loading only after its pass ended is stopped too.
    """
    import ray

    for actor in ray.get(counter.take_actors.remote()):
        ray.kill(actor, no_restart=True)


def _write_crash_rows(out: Path | Location, missing: set[str], metadata: bytes) -> None:
    """Rows that killed the actor on every retry, even alone: written as error rows."""
    out = Location.parse(out)
    corpus = pq.ParquetDataset((out / CORPUS_DIR).path, filesystem=out.filesystem).read()
    mask = pc.is_in(corpus[schema.ID], value_set=pa.array(sorted(missing)))
    rows = corpus.filter(mask)
    annotated = pq.ParquetDataset((out / ANNOTATED_DIR).path, filesystem=out.filesystem).schema
    for f in annotated:
        if f.name not in rows.column_names:
            rows = rows.append_column(f, pa.nulls(rows.num_rows, f.type))
    rows = rows.set_column(rows.schema.get_field_index(schema.STATUS), schema.STATUS,
                           pa.array([schema.STATUS_ERROR] * rows.num_rows))
    rows = rows.set_column(rows.schema.get_field_index(schema.ERROR), schema.ERROR,
                           pa.array([CRASH_ERROR] * rows.num_rows))
    rows = rows.select(annotated.names).cast(annotated.remove_metadata())
    rows = rows.replace_schema_metadata({RUN_METADATA_KEY: metadata})
    pq.write_table(rows, (out / ANNOTATED_DIR / f"crashed-{int(time.time())}.parquet").path,
                   filesystem=out.filesystem, **WRITE_OPTIONS)


def run(cfg: CurateConfig, actor_cls: type = ScoringActor) -> dict[str, Any]:
    """The whole curation job; returns its summary (also written to run.json).

    ``actor_cls`` is the Ray Data callable class that scores batches (a ``ScoringActor`` subclass can
    add instrumentation).
    """
    import ray

    from curate.modeling import resolve_model_path

    data = local_input(cfg.data)  # a URI's files are copied to this machine's cache first
    if cfg.data.format != "toy":
        from curate.io import open_corpus

        open_corpus(data)  # a missing or unreadable input fails here, before Ray starts
    # A local path or a URI (s3://...; curate.storage); a relative path under a Ray job is refused.
    out = Location.parse(cfg.output.path, key="output.path", output=True)
    out.mkdir()
    connect(cfg)
    read_on = check_storage(cfg, out, data)
    # Resolve (and for "toy", build) the model once here, not in every actor.
    if cfg.engine.backend != "openai":
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, model=resolve_model_path(cfg.engine.model)))
    meta = run_record.begin(cfg, out, out / ANNOTATED_DIR)
    metadata = json.dumps(meta, default=str).encode()

    started = time.monotonic()
    total = ingest(cfg, out, read_on)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    counter = ray.remote(num_cpus=0, scheduling_strategy=here)(ProgressCounter).remote()
    reporter = _ProgressLogger(counter, total, cfg.ray.log_every_s)
    reporter.start()
    try:
        drop_damaged(out / ANNOTATED_DIR, out / CHECKPOINT_DIR)
        corpus_ids = set(shard_ids(out / CORPUS_DIR))
        missing = corpus_ids - set(shard_ids(out / ANNOTATED_DIR))
        if missing:
            log.info("stage 2: scoring %d of %d rows (ids already written are skipped)", len(missing), total)
            pool = wait_for_pool(cfg)
            watch = _score_pass(cfg, out, pool, cfg.ray.batch_size, counter, metadata, actor_cls)
            missing = corpus_ids - set(shard_ids(out / ANNOTATED_DIR))
        else:
            log.info("stage 2: every row is already in %s", out / ANNOTATED_DIR)
        # Rows of batches whose node was lost are scored again in whole batches; rows of batches that
        # kept crashing their actor, once more one per batch, one task per actor (a row that fails
        # there, with no node lost, crashed its actor alone: an error row). Whether the last pass
        # lost nodes is known once the next pool is sized on the nodes that answer now.
        lost: list[str] = []
        batched: Optional[bool] = None
        while missing:
            sized_on, pool = pool[2], wait_for_pool(cfg, [*lost, *watch.seen_lost()])
            lost_now = watch.lost_since(sized_on, pool[2])
            lost += lost_now
            if lost_now:
                batched = True
            elif batched is False:
                break
            else:
                batched = False  # the first retry, or a whole-batch retry after lost nodes
            if batched:
                log.warning("%d rows were on lost node(s) %s; scoring them again", len(missing), ", ".join(lost))
            else:
                log.warning("%d rows were in batches that failed; retrying them one per batch", len(missing))
            watch = _score_pass(cfg, out, pool, cfg.ray.batch_size if batched else 1, counter, metadata, actor_cls,
                                isolate=not batched)
            missing = corpus_ids - set(shard_ids(out / ANNOTATED_DIR))
        if missing:
            log.error("%d rows crashed the scoring actor even alone; writing them as error rows", len(missing))
            _write_crash_rows(out, missing, metadata)
    finally:
        reporter.stopped.set()
    check_exactly_once(shard_ids(out / ANNOTATED_DIR), corpus_ids, out / ANNOTATED_DIR)
    summary = run_record.summarize(out / ANNOTATED_DIR, total, time.monotonic() - started, meta)
    run_record.finish(out, meta, summary)
    return summary


def check_exactly_once(written: list[str], expected: set[str], where: Path) -> None:
    """Raise naming the ids written twice, missing or unexpected, if ``written`` is not ``expected``
    exactly once each."""
    counts = collections.Counter(written)
    twice = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(expected - counts.keys())
    extra = sorted(counts.keys() - expected)
    if twice or missing or extra:
        said = [f"{what} {len(ids)} ({', '.join(map(repr, ids[:5]))}{', ...' if len(ids) > 5 else ''})"
                for what, ids in (("written twice:", twice), ("missing:", missing), ("not in the input:", extra)) if ids]
        raise RuntimeError(f"{where} does not hold every input id exactly once: {'; '.join(said)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="a curation recipe (configs/curate/*.yaml)")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write the plots and report.md after the run (default: on)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. pism.mode=full")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    log.info("config:\n%s", to_yaml(cfg))
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
    if args.report:
        from curate.report import write_report

        out = Location.parse(cfg.output.path)
        print(write_report(out / ANNOTATED_DIR, out / "report") / "report.md")
    return 0
