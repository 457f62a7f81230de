"""An object-store round trip, served on this machine (moto's S3 server): ``curate run`` reading its input
from and writing its run directory to ``s3://`` (every id once, the same annotations as a run on local
paths, a rerun resumes from what is in the bucket), ``curate report`` and ``curate select`` from s3 to
s3, and ``rl train``'s data path handing verl a local copy of the selection's s3 files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
from support.s3 import s3_server

from curate.config import load_config, load_structured
from curate.io import open_corpus
from curate.modeling import resolve_model_path
from curate.pipeline import ANNOTATED_DIR, run
from curate.report import write_report
from curate.scoring.scorer import Scorer
from curate.select import select
from curate.selection.config import SelectConfig
from curate.storage import Location
from curate.toy.corpus import generate_corpus

REPO = Path(__file__).resolve().parents[1]
SCORING = ["pism.ratios=[0.0,0.5]", "pism.k=2", "pism.tau=0.5", "sampling.max_tokens=24", "pism.seed=3",
           "sampling.temperature=0.7", "ray.batch_size=3", "output.rows_per_shard=3", "ray.address=local"]
COMPARED = ["id", "status", "error", "pism_pc", "pism_attempts", "pism_correct", "pism_generations",
            "pism_lambda_star", "pism_bucket"]

# toy_model: runs last (tests/conftest.py); the timeout allows for training the model on a fresh machine
pytestmark = [pytest.mark.toy_model, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def s3():
    with s3_server("bucket") as endpoint:
        # After the server: the local cluster's workers inherit the AWS_* variables, as a cluster's
        # nodes would have them in their environment.
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            yield endpoint
        finally:
            ray.shutdown()


def _rows(where: Location) -> list[dict]:
    table = pq.ParquetDataset((where / ANNOTATED_DIR).path, filesystem=where.filesystem).read(columns=COMPARED)
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_curate_run_select_and_rl_data_through_s3(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would show up here as a folder "s3:"
    model = resolve_model_path("toy")  # from the shared cache, before the test's own cache takes over
    monkeypatch.setenv("HARDMODE_CACHE", str(tmp_path / "cache"))
    corpus = generate_corpus(12, seed=4)
    local_corpus = tmp_path / "corpus" / "toy.parquet"
    local_corpus.parent.mkdir()
    pq.write_table(corpus, local_corpus)
    bucket = Location.parse("s3://bucket/")
    (bucket / "corpus" / "toy.parquet").write_bytes(local_corpus.read_bytes())

    # curate run: input and run directory in the bucket; the bare scorer on the local file as reference.
    cfg = load_config(overrides=["data.format=canonical", "data.path=s3://bucket/corpus/toy.parquet",
                                 "output.path=s3://bucket/run", f"engine.model={model}", *SCORING])
    remote = run(cfg)
    scorer = Scorer(cfg)
    local_data = load_config(overrides=["data.format=canonical", f"data.path={local_corpus}"]).data
    reference = sorted((r for t in open_corpus(local_data).iter_tables(64)
                        for r in scorer.score_table(t).select(COMPARED).to_pylist()), key=lambda r: r["id"])
    scorer.close()
    out = Location.parse("s3://bucket/run")
    rows = _rows(out)
    assert [r["id"] for r in rows] == sorted(corpus["id"].to_pylist())  # every id exactly once
    assert rows == reference  # the same annotations as without Ray and buckets
    assert remote["rows_in"] == remote["rows_out"] == 12
    # The same run directory copied to a local path: what select and report must read alike.
    pafs.copy_files("bucket/run", str(tmp_path / "local"), source_filesystem=out.filesystem)
    record = json.loads((out / "run.json").read_text())
    assert record["summary"]["rows_out"] == 12 and record["config"]["output"]["path"] == "s3://bucket/run"
    assert (out / "corpus" / "_HARDMODE_COMPLETE.json").is_file() and out.is_dir()
    assert (out / "checkpoint").children(".parquet")  # Ray Data's id checkpoint went to the bucket too
    assert not (tmp_path / "s3:").exists() and sorted(os.listdir(tmp_path)) == ["cache", "corpus", "local"]

    # A rerun resumes from what is in the bucket: nothing is scored again, nothing written twice.
    again = run(cfg)
    assert again["rows_out"] == 12 and _rows(out) == rows

    report = write_report("s3://bucket/run")
    assert str(report) == "s3://bucket/run/report"
    assert "rows" in (report / "report.md").read_text() and (report / "lambda_star.png").is_file()

    # curate select, s3 to s3, and the same selection from the local run.
    def chosen(input_: str, output: str) -> dict:
        cfg = load_structured(SelectConfig, REPO / "configs" / "select" / "full.yaml",
                              [f"input={input_}", f"output={output}"])
        return select(cfg)

    manifest = chosen("s3://bucket/run", "s3://bucket/sel")
    mine = chosen(str(tmp_path / "local"), str(tmp_path / "sel"))
    sel = Location.parse("s3://bucket/sel")
    assert json.loads((sel / "manifest.json").read_text())["subsets"] == manifest["subsets"]
    assert manifest["subsets"]["grpo"]["rows"] == mine["subsets"]["grpo"]["rows"] > 0
    assert manifest["input"]["path"] == "s3://bucket/run/annotated"
    train = sel / manifest["subsets"]["grpo"]["files"]["verl"]["train"]
    ids = lambda t: sorted(r["id"] for r in t["extra_info"].to_pylist())  # noqa: E731
    remote_train = pq.read_table(train.path, filesystem=train.filesystem)
    assert ids(remote_train) == ids(pq.read_table(tmp_path / "sel" / mine["subsets"]["grpo"]["files"]["verl"]["train"]))
    with pytest.raises(Exception, match="exists"):  # an existing selection is not overwritten unasked
        chosen("s3://bucket/run", "s3://bucket/sel")

    # rl train's data path: verl gets a local copy of the s3 file, byte for byte.
    from rl.train import localize_data_files, plan_training, verl_config

    plan = plan_training(REPO / "configs" / "rl" / "toy_cpu.yaml",
                         [f"data.train_files={train}", "actor_rollout_ref.model.path=/m"], environ={})
    cfg = verl_config(localize_data_files(plan, verl_config(plan)))
    copy = Path(cfg.data.train_files)
    assert copy.is_relative_to(tmp_path / "cache") and copy.read_bytes() == train.read_bytes()
    assert cfg.data.val_files == str(copy)
