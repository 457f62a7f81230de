"""The Ray Data pipeline: the bare scorer's annotations, every row exactly once, crashes survived.

Resuming after the driver is killed with SIGKILL (and a torn shard, an interrupted commit, a killed
scoring actor) is test_faults.py's end-to-end test.

All runs use a private local Ray cluster, the trained toy model and a small PISM grid so that each
pipeline run stays within seconds on two cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from support import poison
from support.bad_rows import corpus_with_bad_rows

from curate import schema
from curate.config import load_config
from curate.io import open_corpus
from curate.pipeline import ANNOTATED_DIR, CRASH_ERROR, run
from curate.scoring.scorer import Scorer
from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
SCORING = ["pism.ratios=[0.0,0.3,0.6]", "pism.k=4", "pism.tau=0.25", "sampling.max_tokens=32",
           "sampling.temperature=0.7", "pism.seed=5"]
# CMAB and RAP beside PISM in one pass.
ALL_METHODS = ["cmab.enabled=true", "cmab.k=2", "rap.enabled=true", "rap.m=3"]
APPROX = ("cmab_rho", "rap_ace_log_psi", "rap_ace_log_psi_norm")
COMPARED = ["status", "error", "pism_pc", "pism_attempts", "pism_correct", "pism_generations",
            "pism_lambda_star", "pism_bucket", "cmab_rho", "cmab_bucket", "cmab_correct",
            *(f.name for f in schema.RAP_SCHEMA)]


@pytest.fixture(scope="module")
def cluster():
    # Workers import the test-only actor from tests/support, like the driver does.
    path = os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return corpus_with_bad_rows(tmp_path_factory.mktemp("corpus") / "corpus.parquet")


@pytest.fixture(scope="module")
def reference(corpus) -> dict[str, dict]:
    """The bare scorer, no Ray, on the same corpus and config."""
    cfg = load_config(overrides=[f"data.path={corpus}", "data.format=canonical", "engine.max_model_len=2048",
                                 *SCORING, *ALL_METHODS])
    scorer = Scorer(cfg)
    rows = {}
    for table in open_corpus(cfg.data).iter_tables(64):
        for r in scorer.score_table(table).to_pylist():
            rows[r["id"]] = r
    scorer.close()
    return rows


def _annotated(out: Path) -> list[dict]:
    return pq.ParquetDataset(str(out / ANNOTATED_DIR)).read(columns=["id", *COMPARED]).to_pylist()


def _config(corpus: Path, out: Path, *extra: str):
    return load_config(overrides=[f"data.path={corpus}", "data.format=canonical", f"output.path={out}",
                                  "engine.max_model_len=2048", "ray.batch_size=4", "output.rows_per_shard=4",
                                  *SCORING, *extra])


def _assert_matches(rows: list[dict], reference: dict[str, dict]) -> None:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(reference)  # every input row exactly once
    assert set(ids) == set(reference)
    for r in rows:
        expected = {k: reference[r["id"]][k] for k in COMPARED}
        # Probe outputs are floats summed over other batch paddings than the reference's.
        expected.update({k: pytest.approx(expected[k], rel=1e-6) for k in APPROX if expected[k] is not None})
        assert {k: r[k] for k in COMPARED} == expected, r["id"]


def test_two_actors_give_the_bare_scorers_annotations(cluster, corpus, reference, tmp_path):
    summary = run(_config(corpus, tmp_path, "ray.min_actors=2", "ray.max_actors=2", "ray.address=local",
                          *ALL_METHODS))
    rows = _annotated(tmp_path)
    _assert_matches(rows, reference)
    errors = {r["id"]: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"bad-corrupt", "bad-empty-image", "bad-no-image", "bad-question", "bad-task",
                           "bad-counting-truth", "bad-huge-prompt"}
    assert "read:" in errors["bad-corrupt"] and "corpus.parquet" in errors["bad-corrupt"]
    assert "max_model_len" in errors["bad-huge-prompt"]
    assert summary["rows_in"] == summary["rows_out"] == 23 and summary["errored"] == 7
    assert len({r["pism_bucket"] for r in rows if r["status"] == "ok"}) >= 2
    ok = [r for r in rows if r["status"] == "ok"]
    assert summary["rap_generations"] == sum(r["rap_generations"] for r in ok) > 0
    assert sum(r["rap_img_reused"] for r in ok) > 0  # PISM's unmasked attempts were not paid twice


def test_an_actor_crashing_on_a_row_is_survived(cluster, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(generate_corpus(8, seed=2), corpus)
    # No task retries: each pass crashes the actor once (the retry path after an actor's death is
    # test_faults.py's, where a scoring actor is killed mid-run).
    summary = run(_config(corpus, tmp_path / "out", "ray.max_task_retries=0"), actor_cls=poison.PoisonedActor)
    rows = pq.ParquetDataset(str(tmp_path / "out" / ANNOTATED_DIR)).read(columns=["id", "status", "error"]).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(generate_corpus(8, seed=2)["id"].to_pylist())
    crashed = [r for r in rows if r["status"] == "error"]
    assert [(r["id"], r["error"]) for r in crashed] == [(poison.POISON_ID, CRASH_ERROR)]
    assert summary["scored"] == 7
    # Every pass let go of its actors, the ones restarted after a crash included (one left behind
    # holds a CPU or GPU the next pass waits for).
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


def test_a_missing_input_fails_before_ray_starts(tmp_path):
    from curate.config import ConfigError

    if ray.is_initialized():
        ray.shutdown()
    cfg = load_config(overrides=[f"data.path={tmp_path / 'nothing.parquet'}", f"output.path={tmp_path / 'out'}"])
    with pytest.raises((ConfigError, FileNotFoundError), match="nothing.parquet"):
        run(cfg)
    assert not ray.is_initialized()
