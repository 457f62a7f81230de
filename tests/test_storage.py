"""curate.storage: local paths as before, URIs through pyarrow filesystems (an S3 server on this machine),
the checks a cluster's storage must pass, and remote inputs copied to a local cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.s3 import s3_server

from curate import run_record, storage
from curate.config import ConfigError
from curate.shards import WRITE_OPTIONS, drop_damaged, shard_ids
from curate.storage import Location, stage

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3():
    with s3_server("bucket") as endpoint:
        yield endpoint


def _table(ids: list[str]) -> pa.Table:
    return pa.table({"id": ids, "x": list(range(len(ids)))})


# ---- local paths ----------------------------------------------------------------------------------


def test_local_paths_resolve_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = Location.parse("runs/a")
    assert loc.is_local and loc.local == (tmp_path / "runs" / "a").resolve() and str(loc) == str(loc.local)
    assert Location.parse(f"file://{tmp_path}/runs/a") == loc
    assert (loc / "annotated").path == os.path.join(loc.path, "annotated")
    assert (loc / "annotated").parent == loc and (loc / "x.parquet").stem == "x"


def test_local_files_written_whole_listed_and_deleted(tmp_path):
    loc = Location.parse(tmp_path / "run")
    assert not loc.exists() and loc.children(".parquet") == []
    (loc / "run.json").write_text('{"a": 1}')
    assert json.loads((loc / "run.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(loc.path)) == ["run.json"]  # no temporary file left beside it
    pq.write_table(_table(["1"]), (loc / "b.parquet").path)
    pq.write_table(_table(["2"]), (loc / "a.parquet").path)
    assert [c.name for c in loc.children(".parquet")] == ["a.parquet", "b.parquet"]
    (loc / "a.parquet").delete()
    (loc / "a.parquet").delete()  # nothing there: no error
    assert [c.name for c in loc.children(".parquet")] == ["b.parquet"]
    loc.delete_dir()
    assert not loc.exists()


# ---- URIs -------------------------------------------------------------------------------------------


def test_a_uri_is_not_a_local_folder_and_hides_its_query(s3):
    loc = Location.parse(f"s3://bucket/run?endpoint_override={s3.split('//')[1]}&scheme=http")
    assert not loc.is_local and str(loc) == "s3://bucket/run" and loc.path == "bucket/run"
    assert str(loc / "annotated") == "s3://bucket/run/annotated"
    with pytest.raises(ValueError):
        loc.local


def test_an_unknown_scheme_fails_naming_the_key():
    with pytest.raises(ConfigError, match="config key 'output.path'"):
        Location.parse("nosuchscheme://x/y", key="output.path")


def test_object_store_round_trip_of_run_files(s3):
    run = Location.parse("s3://bucket/unit/run")
    shards = run / "annotated"
    assert not run.exists() and shards.children(".parquet") == []
    for name, ids in (("a-0.parquet", ["1", "2"]), ("b-0.parquet", ["3"])):
        pq.write_table(_table(ids), (shards / name).path, filesystem=shards.filesystem, **WRITE_OPTIONS)
    (run / "run.json").write_text(json.dumps({"fingerprint": "f"}))
    assert run.is_dir() and shards.is_dir() and (run / "run.json").is_file()
    assert sorted(shard_ids(shards)) == ["1", "2", "3"]
    assert run_record.read(run) == {"fingerprint": "f"}
    assert run_record.locate(str(run)) == (shards, run)
    # A torn shard and its checkpoint entry are dropped, the intact one stays.
    checkpoint = run / "checkpoint"
    pq.write_table(_table(["1", "2"]), (checkpoint / "a.parquet").path, filesystem=run.filesystem)
    (shards / "a-0.parquet").write_bytes((shards / "a-0.parquet").read_bytes()[:-20])
    assert drop_damaged(shards, checkpoint) == ["a-0.parquet"]
    assert shard_ids(shards) == ["3"] and checkpoint.children(".parquet") == []
    run.delete_dir()
    assert not run.exists()


def test_select_reads_an_annotated_dataset_at_a_uri(s3):
    from curate.selection.export import AnnotatedDataset

    run = Location.parse("s3://bucket/unit/dataset")
    pq.write_table(_table(["1", "2"]), (run / "annotated" / "part-0.parquet").path, filesystem=run.filesystem)
    dataset = AnnotatedDataset("s3://bucket/unit/dataset")
    assert str(dataset.path) == "s3://bucket/unit/dataset/annotated" and dataset.schema.names == ["id", "x"]
    assert [t.num_rows for t in dataset.iter_rows(["2"], 10)] == [1]
    with pytest.raises(ConfigError, match="config key 'input': s3://bucket/unit/nothing does not exist"):
        AnnotatedDataset("s3://bucket/unit/nothing")


# ---- checks before any work -------------------------------------------------------------------------


def test_a_relative_output_path_under_a_ray_job_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    assert storage.ray_job_id() == "raysubmit_1"
    with pytest.raises(ConfigError, match=r"config key 'output.path': 'outputs/x' is a relative path .*raysubmit_1"):
        Location.parse("outputs/x", key="output.path", output=True)
    assert Location.parse(str(tmp_path / "x"), key="output.path", output=True).is_local  # absolute: fine
    assert Location.parse("outputs/x", key="data.path").is_local  # read, not written: not refused
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert storage.ray_job_id() is None and Location.parse("outputs/x", output=True).is_local


def test_curate_run_refuses_a_relative_output_under_a_job_before_ray_starts(monkeypatch):
    import ray

    from curate.config import load_config
    from curate.pipeline import run

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_2"}}))
    cfg = load_config(overrides=["data.format=toy", "output.path=outputs/relative-run"])
    with pytest.raises(ConfigError, match="config key 'output.path'"):
        run(cfg)
    assert not ray.is_initialized()


def test_a_local_output_some_nodes_cannot_see_is_refused_naming_them(tmp_path, monkeypatch):
    nodes = [{"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "Alive": True},
             {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2", "Alive": True}]
    seen = {}

    def failing(nodes_, paths, token, timeout_s):
        seen["probe"] = Path(paths[0]).read_text() == token  # the driver wrote the probe file
        return nodes_[1:]

    monkeypatch.setattr(storage, "_alive_nodes", lambda: nodes)
    monkeypatch.setattr(storage, "_nodes_failing", failing)
    with pytest.raises(ConfigError, match=r"config key 'output.path': .* 1 of 2 nodes .*10\.0\.0\.2 \(node bbbb"):
        storage.check_visible_from_every_node(Location.parse(tmp_path), "output.path")
    assert seen["probe"] and os.listdir(tmp_path) == []  # the probe file is removed
    monkeypatch.setattr(storage, "_nodes_failing", lambda *a: [])
    storage.check_visible_from_every_node(Location.parse(tmp_path), "output.path")
    monkeypatch.setattr(storage, "_alive_nodes", lambda: nodes[:1])  # one node: nothing to probe
    monkeypatch.setattr(storage, "_nodes_failing", None)
    storage.check_visible_from_every_node(Location.parse(tmp_path), "output.path")


@pytest.mark.slow
def test_the_probe_runs_on_every_node_of_a_two_node_cluster(tmp_path):
    """Two raylets on this machine (they share its filesystem): the probe reaches both; a path that
    exists nowhere is missing on both."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        storage.check_visible_from_every_node(Location.parse(tmp_path / "out"), "output.path")
        missing, alive = storage.nodes_missing([str(tmp_path / "nowhere")])
        assert alive == 2 and len(missing) == 2
        assert storage.nodes_missing([str(tmp_path)]) == ([], 2)
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---- remote inputs -----------------------------------------------------------------------------------


def test_a_remote_input_is_copied_once_and_refreshed_when_it_changes(s3, tmp_path):
    src = Location.parse("s3://bucket/unit/corpus")
    pq.write_table(_table(["1"]), (src / "a.parquet").path, filesystem=src.filesystem)
    pq.write_table(_table(["2"]), (src / "sub" / "b.parquet").path, filesystem=src.filesystem)
    (src / "images" / "x.png").write_bytes(b"png")
    cache = tmp_path / "cache"

    local = Path(stage("s3://bucket/unit/corpus", "data.path", cache))
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "a.parquet", "images/x.png", "sub/b.parquet"]
    mtime = (local / "a.parquet").stat().st_mtime_ns
    assert mtime == src.filesystem.get_file_info((src / "a.parquet").path).mtime_ns  # the source's time
    (local / "a.parquet").write_bytes(b"touched")  # a second call with nothing changed downloads nothing
    assert Path(stage("s3://bucket/unit/corpus", "data.path", cache)) == local
    assert (local / "a.parquet").read_bytes() == b"touched"
    time.sleep(1.1)
    pq.write_table(_table(["1", "3"]), (src / "a.parquet").path, filesystem=src.filesystem)  # changed: copied again
    stage("s3://bucket/unit/corpus", "data.path", cache)
    assert pq.read_table(local / "a.parquet")["id"].to_pylist() == ["1", "3"]

    one = Path(stage("s3://bucket/unit/corpus/sub/b.parquet", "data.path", cache))
    assert one.name == "b.parquet" and pq.read_table(one)["id"].to_pylist() == ["2"]
    pattern = stage("s3://bucket/unit/corpus/**/*.parquet", "data.path", cache)
    assert pattern.endswith("/**/*.parquet")
    import glob

    assert sorted(os.path.basename(p) for p in glob.glob(pattern, recursive=True)) == ["a.parquet", "b.parquet"]
    assert stage(str(tmp_path), "data.path") == str(tmp_path)  # a local path is used where it is
    with pytest.raises(ConfigError, match="config key 'data.path': s3://bucket/unit/none does not exist"):
        stage("s3://bucket/unit/none", "data.path", cache)


def test_rl_train_hands_verl_local_copies_of_s3_data_files(s3, tmp_path, monkeypatch):
    """verl 0.9.1 copies only hdfs:// files: s3:// train/val files are downloaded first."""
    from rl.train import localize_data_files, plan_training, verl_config

    src = Location.parse("s3://bucket/unit/sel/grpo/verl")
    pq.write_table(_table(["1", "2"]), (src / "train.parquet").path, filesystem=src.filesystem)
    monkeypatch.setenv("HARDMODE_CACHE", str(tmp_path / "cache"))
    recipe = REPO / "configs" / "rl" / "toy_cpu.yaml"
    plan = plan_training(recipe, ["data.train_files=s3://bucket/unit/sel/grpo/verl/train.parquet",
                                  "actor_rollout_ref.model.path=/m"], environ={})
    cfg = verl_config(localize_data_files(plan, verl_config(plan)))
    train = Path(cfg.data.train_files)
    assert train.is_relative_to(tmp_path / "cache" / "inputs") and train.name == "train.parquet"
    assert pq.read_table(train)["id"].to_pylist() == ["1", "2"]
    assert cfg.data.val_files == str(train)  # the recipe's ${data.train_files}, as verl will see it
    local = plan_training(recipe, ["data.train_files=/data/t.parquet", "actor_rollout_ref.model.path=/m"], environ={})
    assert localize_data_files(local, verl_config(local)) is local  # nothing to copy: unchanged
    hdfs = plan_training(recipe, ["data.train_files=[hdfs://nn/t.parquet]", "actor_rollout_ref.model.path=/m"],
                         environ={})
    assert localize_data_files(hdfs, verl_config(hdfs)) is hdfs  # verl copies hdfs:// itself
