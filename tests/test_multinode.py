"""A cluster that loses a node: the job finishes with every id once and a clean run's annotations, or
fails naming the nodes within a bounded time; Ray Data's I/O failures are never swallowed.

The two-node cluster is two raylets on this machine (``ray.cluster_utils.Cluster``, each with its own
session); the worker node is removed without warning (its raylet and workers killed) mid-run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from curate.config import load_config
from curate.elastic import ClusterCapacityError, StepErrors, pool_bounds, wait_for_pool
from curate.pipeline import ANNOTATED_DIR
from curate.placement import NodeResources
from curate.scoring.scorer import Scorer
from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
ROWS = 40
SCORING = ["pism.ratios=[0.0,0.3,0.6]", "pism.k=4", "pism.tau=0.25", "sampling.max_tokens=32",
           "sampling.temperature=0.7", "pism.seed=5", "engine.max_model_len=2048"]
COMPARED = ["status", "error", "pism_pc", "pism_attempts", "pism_correct", "pism_generations",
            "pism_lambda_star", "pism_bucket"]


def _cfg(*extra: str):
    return load_config(overrides=["data.format=toy", f"data.toy.num_samples={ROWS}", *SCORING, *extra])


@pytest.mark.parametrize(
    "nodes, gpus, bounds",
    [
        ([NodeResources("a", 8, 0), NodeResources("b", 8, 0)], 0, (2, 4)),  # room for all
        ([NodeResources("a", 4, 0)], 0, (2, 2)),  # 2 CPU kept for Ray Data's reads and writes
        ([NodeResources("a", 3, 0)], 0, (1, 1)),
        ([NodeResources("a", 2, 0)], 0, (0, 0)),
        ([NodeResources("a", 16, 1), NodeResources("b", 16, 0)], 1, (1, 1)),  # one GPU left
    ],
)
def test_the_pool_is_sized_to_the_nodes_alive(nodes, gpus, bounds):
    cfg = _cfg("ray.min_actors=2", "ray.max_actors=4")
    cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_gpus=gpus))
    assert pool_bounds(cfg, nodes) == bounds


@pytest.fixture
def small_local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_no_room_for_an_actor_fails_in_bounded_time_naming_the_nodes(small_local_ray):
    started = time.monotonic()
    with pytest.raises(ClusterCapacityError) as caught:
        wait_for_pool(_cfg("ray.capacity_wait_s=6"), lost=["10.0.0.7"])
    assert time.monotonic() - started < 6 + 40  # the wait, plus one round of node pings
    message = str(caught.value)
    assert "alive nodes:" in message and "2 CPU, 0 GPU" in message and "lost during this run: 10.0.0.7" in message
    assert "ray.capacity_wait_s" in message


def test_an_io_step_error_is_raised_with_its_cause_and_a_scoring_error_is_not(small_local_ray):
    def broken_io(batch):
        raise OSError("No such file or directory: /only/on/the/head")

    def broken_scoring(batch):
        raise RuntimeError("an actor died")

    ctx = ray.data.DataContext.get_current()
    saved, ctx.max_errored_blocks = ctx.max_errored_blocks, -1
    try:
        with StepErrors(scoring_step="broken_scoring") as errors:
            ray.data.range(4).map_batches(broken_scoring).materialize()
        errors.raise_first()  # a scoring failure: its rows are retried, nothing raised
        with StepErrors(scoring_step="broken_scoring") as errors:
            ray.data.range(4).map_batches(broken_io).materialize()
        with pytest.raises(RuntimeError, match=r"broken_io\) step failed.*only/on/the/head"):
            errors.raise_first()
    finally:
        ctx.max_errored_blocks = saved
    assert not any(isinstance(h, StepErrors) for h in logging.getLogger(StepErrors.LOGGER).handlers)


@pytest.fixture(scope="module")
def reference() -> dict[str, dict]:
    """The bare scorer, no Ray, on the same rows and config."""
    cfg = _cfg()
    scorer = Scorer(cfg)
    table = generate_corpus(ROWS, seed=cfg.data.toy.seed, tasks=cfg.data.toy.tasks)
    rows = {r["id"]: r for r in scorer.score_table(table).to_pylist()}
    scorer.close()
    return rows


@pytest.mark.slow
def test_a_worker_node_lost_mid_run_costs_no_row(reference, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    out = tmp_path / "run"
    command = [sys.executable, "-m", "curate", "run", "--no-report", f"ray.address={cluster.address}",
               "data.format=toy", f"data.toy.num_samples={ROWS}", *SCORING, f"output.path={out}",
               # the documented sizing, one actor per node; short waits keep the test short
               "ray.min_actors=2", "ray.max_actors=2", "ray.batch_size=4", "output.rows_per_shard=4",
               "ray.log_every_s=2", "ray.restart_grace_s=10", "ray.capacity_wait_s=60"]
    log_path = tmp_path / "run.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        removed = False
        while job.poll() is None and time.monotonic() - started < 600:
            time.sleep(1)
            scored = [int(n) for n in re.findall(r"progress: (\d+)/", log_path.read_text())]
            if not removed and scored and scored[-1] >= 8:
                cluster.remove_node(worker, allow_graceful=False)  # kill -9 of the raylet and its workers
                removed = True
        if job.poll() is None:
            job.kill()
        output = log_path.read_text()
        assert removed, "the run ended before the node could be lost:\n" + output[-3000:]
        assert job.returncode == 0, output[-5000:]
    finally:
        cluster.shutdown()
    assert "lost" in output  # it noticed, and said so
    rows = pq.ParquetDataset(str(out / ANNOTATED_DIR)).read(columns=["id", *COMPARED]).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == ROWS and set(ids) == set(reference)
    for r in rows:
        assert {k: r[k] for k in COMPARED} == {k: reference[r["id"]][k] for k in COMPARED}, r["id"]
