"""Pipeline overhead: the Ray Data pipeline (1 and 2 scoring actors) against the bare scorer, same rows.

Sides, each in a fresh subprocess, one after the other (so they never share the CPU):

* ``bare`` — ``curate.scoring.scorer.Scorer`` in-process: the toy corpus stage 1 writes, scored in chunks of
  ``ray.batch_size`` rows (the pipeline's batches), one torch thread per scorer like a 1-CPU actor,
  written as one Parquet file. Nothing of Ray is imported.
* ``bare-2t`` — the same with two torch threads: what one process gets from both cores.
* ``ray-1`` / ``ray-2`` — ``curate.pipeline.run`` (``python -m curate run``'s job) on a private local
  Ray cluster (``ray.init(address="local")``) with a fixed pool of 1 or 2 scoring actors: ingest,
  Ray Data read → repartition → ``map_batches(ScoringActor)`` → write, the exactly-once check and
  the summary. A ``ScoringActor`` subclass records each actor's start-up (engine load) and the time
  spent inside ``Scorer.score_table``, so the table separates Ray's own overhead from scoring.

Every side uses the same recipe (the demo's ``configs/curate/toy.yaml`` — PISM early exit and CMAB
on the trained toy model), so the annotations must be equal row by row: the benchmark compares every
score column, ``status`` and ``error`` of each Ray side with the bare scorer's and fails otherwise.
Ray's start-up (``ray.init``) is timed apart; the ratio ``ray/bare`` compares the pipeline's
``run`` with the bare side's engine load + scoring + write.

    .venv/bin/python benchmarks/bench_pipeline.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_pipeline.py --quick    # 40 rows, ~1.5 min
    # GPU (NOT RUN here: no GPU on this machine): the 7B recipe, one actor holding the GPU, against the
    # same Scorer in-process (the engine's raw throughput on the pipeline's batches)
    .venv/bin/python benchmarks/bench_pipeline.py --recipe configs/curate/single_gpu.yaml --sides bare ray-1 \\
        engine.model=Qwen/Qwen2.5-VL-7B-Instruct data.path=DATA   # DATA: a corpus of ~2,000 rows
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    ROOT,
    TOY_RECIPE,
    machine,
    run_worker,
    serve_worker,
    table,
    toy_model_key,
    write_results,
)
from curate.pipeline import ScoringActor

SIDES = ("bare", "bare-2t", "ray-1", "ray-2")


# ---- worker side -------------------------------------------------------------------------------


class TimedScoringActor(ScoringActor):
    """The pipeline's actor, plus a JSON line per start-up and per batch in ``log_path``.

    Defined in the script run as ``__main__``, so Ray pickles the class by value with ``log_path``
    set; lines are short single ``write`` calls in append mode, so two actors never interleave them.
    """

    log_path = ""

    def __init__(self, *args: Any, **kwargs: Any):
        started = time.perf_counter()
        super().__init__(*args, **kwargs)
        self._record(event="init", seconds=time.perf_counter() - started)

    def __call__(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = super().__call__(batch)
        self._record(event="batch", seconds=time.perf_counter() - started, rows=batch.num_rows)
        return out

    def _record(self, **fields: Any) -> None:
        import torch

        line = json.dumps({**fields, "pid": os.getpid(), "torch_threads": torch.get_num_threads()})
        with open(self.log_path, "a") as f:
            f.write(line + "\n")


def load(spec: dict[str, Any], out: Path, *extra: str) -> Any:
    from curate.config import load_config

    return load_config(
        spec["recipe"], [*spec["overrides"], f"output.path={out}", "ray.address=local", *extra]
    )


def bare(spec: dict[str, Any], out: Path, threads: int) -> dict[str, Any]:
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from curate.modeling import resolve_model_path
    from curate.pipeline import ANNOTATED_DIR, CORPUS_DIR, ingest
    from curate.scoring.scorer import Scorer

    torch.set_num_threads(threads)
    cfg = load(spec, out)
    started = time.perf_counter()  # what pipeline.run also does: resolve the model, ingest, score, write
    cfg = dataclasses.replace(
        cfg, engine=dataclasses.replace(cfg.engine, model=resolve_model_path(cfg.engine.model))
    )
    if cfg.data.format == "toy":
        ingest(cfg, out)  # the same canonical rows the pipeline reads
        corpus = pq.ParquetDataset(str(out / CORPUS_DIR)).read()
    else:  # ingest reads other formats with Ray Data; the bare side reads them without Ray
        from curate.io import open_corpus

        corpus = pa.concat_tables(open_corpus(cfg.data).iter_tables(cfg.ray.batch_size))
        corpus = corpus.slice(0, cfg.data.limit) if cfg.data.limit else corpus
    loading = time.perf_counter()
    scorer = Scorer(cfg)
    load_s = time.perf_counter() - loading
    step = cfg.ray.batch_size
    try:
        parts = [scorer.score_table(corpus.slice(start, step)) for start in range(0, corpus.num_rows, step)]
    finally:
        scorer.close()
    score_s = time.perf_counter() - loading - load_s
    (out / ANNOTATED_DIR).mkdir()
    pq.write_table(pa.concat_tables(parts), out / ANNOTATED_DIR / "part-0.parquet")
    total_s = time.perf_counter() - started
    return {
        "rows": corpus.num_rows,
        "run_s": total_s,
        "load_s": load_s,
        "score_s": score_s,
        "scoring_critical_s": score_s,
        "torch_threads": [torch.get_num_threads()],
    }


def pipeline(spec: dict[str, Any], out: Path, actors: int) -> dict[str, Any]:
    import ray

    from curate.pipeline import cpus_needed, run

    cfg = load(spec, out / "run", f"ray.min_actors={actors}", f"ray.max_actors={actors}")
    timings = out / "actors.jsonl"
    TimedScoringActor.log_path = str(timings)
    started = time.perf_counter()
    # A private cluster sized as curate.pipeline.connect sizes one; workers import the project like
    # the driver does.
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg))),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    init_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        summary = run(cfg, actor_cls=TimedScoringActor)
        run_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    events = [json.loads(line) for line in timings.read_text().splitlines()]
    inits = [e for e in events if e["event"] == "init"]
    batches = [e for e in events if e["event"] == "batch"]
    busy: dict[int, float] = {}
    for e in batches:
        busy[e["pid"]] = busy.get(e["pid"], 0.0) + e["seconds"]
    shutil.move(str(out / "run" / "annotated"), str(out / "annotated"))
    return {
        "rows": summary["rows_out"],
        "run_s": run_s,
        "ray_init_s": init_s,
        "actor_pids": sorted({e["pid"] for e in inits}),
        "load_s": max((e["seconds"] for e in inits), default=None),
        "score_s": sum(busy.values()),
        "scoring_critical_s": max(busy.values(), default=0.0),
        "rows_per_actor": {str(pid): sum(e["rows"] for e in batches if e["pid"] == pid) for pid in busy},
        "batches": len(batches),
        "torch_threads": sorted({e["torch_threads"] for e in events}),
        "summary": summary,
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    out = Path(spec["out"])
    side = spec["side"]
    if side.startswith("bare"):
        row = bare(spec, out, spec["threads"] if side == "bare-2t" else 1)
    else:
        row = pipeline(spec, out, int(side.split("-")[1]))
    return {"side": side, **row}


# ---- driver ------------------------------------------------------------------------------------


def annotations(path: Path, columns: list[str]) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    rows = pq.ParquetDataset(str(path)).read(columns=["id", *columns]).to_pylist()
    return {r.pop("id"): r for r in rows}


def differences(reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Row-by-row comparison: ids missing or extra, and rows that differ, per column."""
    per_column: dict[str, int] = {}
    for rid in reference.keys() & other.keys():
        for column, value in reference[rid].items():
            if other[rid][column] != value:
                per_column[column] = per_column.get(column, 0) + 1
    return {
        "missing": len(reference.keys() - other.keys()),
        "extra": len(other.keys() - reference.keys()),
        "rows_differing_by_column": per_column,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default=str(TOY_RECIPE))
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the bare-2t side")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="40 toy rows")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every side")
    args = parser.parse_args()
    if args.worker:
        return serve_worker(args.worker, worker)
    from curate.config import load_config
    from curate.scoring.registry import output_schema

    overrides = list(args.overrides) + (["data.toy.num_samples=40"] if args.quick else [])
    cfg = load_config(args.recipe, overrides)
    compared = [f.name for f in output_schema(cfg)] + ["status", "error"]
    print(
        f"pipeline overhead: recipe {args.recipe} {overrides}, sides {args.sides}; PISM {cfg.pism.enabled} "
        f"({cfg.pism.mode}), CMAB {cfg.cmab.enabled}; batches of {cfg.ray.batch_size} rows",
        flush=True,
    )
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for side in args.sides:
            out = Path(tmp) / side
            out.mkdir()
            spec = {
                "side": side,
                "recipe": args.recipe,
                "overrides": overrides,
                "out": str(out),
                "threads": args.threads,
            }
            row = run_worker(__file__, spec, what=side)
            row["rows_per_s"] = row["rows"] / row["run_s"]
            row["annotations"] = annotations(out / "annotated", compared)
            rows[side] = row
            print(
                f"  {side:8s} {row['run_s']:6.1f} s  {row['rows_per_s']:5.2f} rows/s  "
                f"(load {row['load_s']:.1f} s, scoring {row['score_s']:.1f} s)",
                flush=True,
            )
    reference = rows.get("bare") or next(iter(rows.values()))
    for row in rows.values():
        row["differences_from_bare"] = differences(reference["annotations"], row["annotations"])
    equal = all(
        not d["missing"] and not d["extra"] and not d["rows_differing_by_column"]
        for d in (r["differences_from_bare"] for r in rows.values())
    )
    ordered = [{k: v for k, v in rows[s].items() if k != "annotations"} for s in SIDES if s in rows]
    base = rows.get("bare")
    for r in ordered:
        r["over_bare"] = r["run_s"] / base["run_s"] if base else None
    payload = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "toy_model_key": toy_model_key(),
        "config": {
            "recipe": args.recipe,
            "overrides": overrides,
            "batch_size": cfg.ray.batch_size,
            "compared_columns": compared,
        },
        "annotations_equal": equal,
        "rows": ordered,
    }
    json_path = write_results("pipeline_quick" if args.quick else "pipeline", payload, args.out_dir)
    print(f"\nresults: {json_path}; annotations equal to the bare scorer's on every side: {equal}")
    for r in ordered:
        if r["differences_from_bare"] != {"missing": 0, "extra": 0, "rows_differing_by_column": {}}:
            print(f"  {r['side']}: {r['differences_from_bare']}")
    print()
    print(
        table(
            [
                "side",
                "rows",
                "ray.init s",
                "run s",
                "rows/s",
                "× bare",
                "engine load s",
                "in scorer s",
                "busiest actor s",
                "run − busiest s",
                "torch thr",
                "load avg",
            ],
            [
                [
                    r["side"],
                    r["rows"],
                    r.get("ray_init_s"),
                    r["run_s"],
                    r["rows_per_s"],
                    r["over_bare"],
                    r["load_s"],
                    r["score_s"],
                    r["scoring_critical_s"],
                    r["run_s"] - r["scoring_critical_s"],
                    ",".join(map(str, r["torch_threads"])),
                    r["load_avg_1min_before"],
                ]
                for r in ordered
            ],
        )
    )
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
