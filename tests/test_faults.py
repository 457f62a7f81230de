"""The fault suite: a corpus of every kind of bad row (``curate.toy.faults``) mixed into good toy rows,
through the reader, ``curate score`` and ``curate run`` with kills, a torn shard and an interrupted
commit. Every line must come out exactly once; each bad line as an error row with its reason; the
good rows with the annotations a clean corpus of only them gets; no file outside the root read.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.config import load_config
from curate.io import open_corpus
from curate.pipeline import ANNOTATED_DIR, CHECKPOINT_DIR
from curate.score import score_corpus
from curate.toy.faults import SCORING, SECRET, FaultCorpus, tally, write_fault_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]

_opened: list[str] = []
_auditing = False


def _audit(event: str, args: tuple) -> None:
    if _auditing and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> FaultCorpus:
    return write_fault_corpus(tmp_path_factory.mktemp("faults") / "root")


@pytest.fixture(scope="module")
def clean(faults, tmp_path_factory) -> dict[str, dict]:
    """The good rows alone, scored by ``curate score``: the reference every faulty run must match."""
    out = tmp_path_factory.mktemp("clean")
    score_corpus(load_config(overrides=[f"data.path={faults.clean}", f"output.path={out}", *SCORING]))
    rows = _annotated(out)
    assert sorted(rows) == sorted(faults.good_ids) and all(r["status"] == "ok" for r in rows.values())
    return rows


def _annotated(out: Path) -> dict[str, dict]:
    rows = pq.ParquetDataset(str(out / ANNOTATED_DIR)).read().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


def _check_output(rows: dict[str, dict], faults: FaultCorpus, clean: dict[str, dict]) -> None:
    t = tally(list(rows.values()), faults, clean)
    assert t.problems == [] and t.rows_lost == 0 and t.good_rows_equal == len(clean)


def test_reader_turns_every_bad_line_into_its_error_row_and_reads_nothing_outside_the_root(faults):
    global _auditing
    _opened.clear()
    _auditing = True
    try:
        corpus = open_corpus(load_config(overrides=[f"data.path={faults.corpus}", *SCORING]).data)
        rows = {r["id"]: r for t in corpus.iter_tables(7) for r in t.to_pylist()}
    finally:
        _auditing = False
    assert len(rows) == faults.lines
    for line, bad in faults.bad.items():
        row = rows[faults.ids[line]]
        if bad.kind == "prompt-too-long" or not bad.reason:  # only scoring can tell
            assert row["status"] == "ok", (bad.kind, row["error"])
        else:
            assert row["error"].startswith(f"read: {faults.corpus}:{line}: "), (bad.kind, row["error"])
            assert bad.reason in row["error"], (bad.kind, row["error"])
    assert len(faults.bad) >= 40 and len({b.kind for b in faults.bad.values()}) == len(faults.bad)
    root = str(faults.root)
    outside = [p for p in _opened if os.path.isabs(p) and p.startswith(str(faults.root.parent))
               and not (p == root or p.startswith(root + os.sep))]
    assert outside == [] and not any(p.endswith(SECRET) for p in _opened)


def test_score_survives_every_bad_row_and_a_torn_shard(faults, clean, tmp_path):
    cfg = load_config(overrides=[f"data.path={faults.corpus}", f"output.path={tmp_path}", *SCORING,
                                 "output.rows_per_shard=8"])
    score_corpus(cfg)
    first = _annotated(tmp_path)
    _check_output(first, faults, clean)
    # Power loss after a commit: a shard cut short on disk. The rerun redoes exactly its rows.
    shards = sorted((tmp_path / ANNOTATED_DIR).glob("*.parquet"))
    torn = shards[len(shards) // 2]
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    counts = score_corpus(cfg)
    assert 0 < counts["rows"] <= 8 and counts["skipped"] == faults.lines - counts["rows"]
    again = _annotated(tmp_path)
    _check_output(again, faults, clean)
    _check_output(again, faults, first)  # the rows not rescored are the first run's, byte for byte


def _run_args(faults: FaultCorpus, out: Path) -> list[str]:
    return [sys.executable, "-m", "curate", "run", "--no-report", f"data.path={faults.corpus}",
            f"output.path={out}", "ray.batch_size=2", "output.rows_per_shard=2", "ray.address=local",
            "ray.max_restarts=3", *SCORING]


def _wait_for(predicate, proc: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen (run exited {proc.poll()})")


def _scoring_actor_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ScoringActor"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if int(p) != os.getpid()]


@pytest.mark.slow
def test_run_survives_bad_rows_kills_a_torn_shard_and_an_interrupted_commit(faults, clean, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    annotated, checkpoint = tmp_path / ANNOTATED_DIR, tmp_path / CHECKPOINT_DIR
    log = io.open(tmp_path / "run.log", "w")

    def start() -> subprocess.Popen:
        return subprocess.Popen(_run_args(faults, tmp_path), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    # 1. kill -9 the driver and its cluster once a few shards are committed
    first = start()
    _wait_for(lambda: len(list(checkpoint.glob("*[!g].parquet"))) >= 3, first, 300, "three commits")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # 2. a committed shard torn on disk, and a commit interrupted between data write and checkpoint
    #    rename (the state a kill in that window leaves)
    committed = sorted(p for p in checkpoint.glob("*.parquet") if not p.name.endswith(".pending.parquet"))
    torn = next(f for f in sorted(annotated.glob("*.parquet")) if f.name.startswith(committed[0].stem))
    torn.write_bytes(torn.read_bytes()[:200])
    committed[1].rename(committed[1].with_name(committed[1].stem + ".pending.parquet"))
    # 3. rerun, killing a scoring actor with SIGKILL while it works
    second = start()
    _wait_for(lambda: bool(_scoring_actor_pids()), second, 240, "a scoring actor")
    time.sleep(2)
    for pid in _scoring_actor_pids()[:1]:
        os.kill(pid, signal.SIGKILL)
    assert second.wait(timeout=420) == 0, (tmp_path / "run.log").read_text()[-4000:]
    text = (tmp_path / "run.log").read_text()
    assert "is damaged on disk" in text and re.search(r"stage 2: scoring (\d+) of", text)
    _check_output(_annotated(tmp_path), faults, clean)


def test_the_exactly_once_check_names_the_ids():
    from curate.pipeline import check_exactly_once

    check_exactly_once(["a", "b"], {"a", "b"}, Path("out"))
    with pytest.raises(RuntimeError) as err:
        check_exactly_once(["a", "a", "c", "x#1"], {"a", "b", "c"}, Path("out"))
    assert str(err.value) == ("out does not hold every input id exactly once: written twice: 1 ('a'); "
                              "missing: 1 ('b'); not in the input: 1 ('x#1')")
