"""``python -m curate score`` (in-process, no Ray): run.json, resume, and refusals that keep a
directory's annotations from mixing."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curate import schema
from curate.config import load_config
from curate.report import write_report
from curate.run_record import ANNOTATED_DIR, RUN_FILE, RUN_METADATA_KEY, scoring_fingerprint
from curate.score import score_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

SMALL = ["data.format=toy", "data.toy.num_samples=6", "engine.model=toy", "engine.max_model_len=512",
         "pism.ratios=[0.0,0.5]", "pism.k=2", "sampling.max_tokens=32", "output.rows_per_shard=4"]


def _cfg(out, *extra):
    return load_config(None, [*SMALL, f"output.path={out}", *extra])


def _rows(out):
    table = pq.ParquetDataset(str(out / ANNOTATED_DIR)).read()
    return sorted(table.to_pylist(), key=lambda r: r[schema.ID])


def test_run_json_records_config_and_summary_and_resume_rescores_nothing(tmp_path):
    cfg = _cfg(tmp_path)
    first = score_corpus(cfg)
    assert first == {"rows": 6, "scored": 6, "errors": 0, "skipped": 0}
    record = json.loads((tmp_path / RUN_FILE).read_text())
    assert record["fingerprint"] == scoring_fingerprint(cfg)
    assert record["summary"]["rows_out"] == 6 and record["summary"]["scored"] == 6
    assert sum(record["summary"]["pism_buckets"].values()) == 6
    shard = sorted((tmp_path / ANNOTATED_DIR).glob("part-*.parquet"))[0]
    assert json.loads(pq.read_schema(shard).metadata[RUN_METADATA_KEY])["fingerprint"] == record["fingerprint"]
    before = _rows(tmp_path)

    # The same command again: every id is already written; the shards are untouched.
    assert score_corpus(_cfg(tmp_path)) == {"rows": 0, "scored": 0, "errors": 0, "skipped": 6}
    assert _rows(tmp_path) == before
    assert json.loads((tmp_path / RUN_FILE).read_text())["summary"]["rows_out"] == 6

    # The report finds the shards and run.json from the run directory and writes beside annotated/.
    report = write_report(tmp_path)
    assert report == tmp_path / "report"
    finished = json.loads((tmp_path / RUN_FILE).read_text())["finished_at"]  # the resumed run's
    assert f"written {finished}" in (report / "report.md").read_text()
    assert _rows(tmp_path) == before  # nothing the report wrote is read back as a shard


def test_resume_with_another_scoring_config_or_resume_off_is_refused(tmp_path):
    score_corpus(_cfg(tmp_path, "data.toy.num_samples=2"))
    with pytest.raises(RuntimeError, match="different scoring config"):
        score_corpus(_cfg(tmp_path, "data.toy.num_samples=2", "pism.seed=1"))
    with pytest.raises(RuntimeError, match="output.resume=false"):
        score_corpus(_cfg(tmp_path, "data.toy.num_samples=2", "output.resume=false"))
    assert len(_rows(tmp_path)) == 2
