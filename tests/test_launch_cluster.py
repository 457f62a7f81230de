"""A real head from launch/local.sh, a curate job through ``python -m launch submit``, and a stop that
ends exactly that cluster: a second cluster started beside it keeps running (``ray stop`` would
have killed both)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from curate import schema
from curate.config import load_config
from curate.toy.corpus import generate_corpus

ROOT = Path(__file__).resolve().parents[1]
TOY_JOB = ["data.format=toy", "data.toy.num_samples=6", "pism.ratios=[0.0,0.5]", "pism.k=2", "pism.tau=0.5",
           "sampling.max_tokens=24", "ray.batch_size=3", "output.rows_per_shard=3"]

# toy_model: runs last (tests/conftest.py); the timeout allows for training the model on a fresh machine
pytestmark = [pytest.mark.toy_model, pytest.mark.slow, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """A head started by launch/local.sh on free ports, in a short private temp dir."""

    def __init__(self, num_cpus: int):
        self.port, self.dashboard_port = _free_port(), _free_port()
        # Short: Ray's socket paths under it must stay below the 107-character Unix limit.
        self.temp_dir = tempfile.mkdtemp(prefix="hm-ray-", dir="/tmp")
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.start_args = ["start", "--num-cpus", str(num_cpus), "--dashboard-port", str(self.dashboard_port),
                           "--client-port", str(_free_port())]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def local_sh(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "launch/local.sh", *args, "--port", str(self.port), "--temp-dir",
                               self.temp_dir], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def pid(self) -> int:
        state = (Path(self.temp_dir) / "hardmode-node.state").read_text()
        return int(re.search(r"^pid=(\d+)$", state, re.M).group(1))

    def processes(self) -> set[psutil.Process]:
        """The head's process tree and everything in its session (Ray's workers, agents, job drivers)."""
        leader = psutil.Process(self.pid())
        procs = {leader, *leader.children(recursive=True)}
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == leader.pid:
                    procs.add(p)
            except (ProcessLookupError, psutil.Error):
                pass
        return procs


def _alive(procs: set[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(procs: set[psutil.Process], timeout: float = 15) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture
def two_heads() -> Iterator[tuple[LocalHead, LocalHead]]:
    job, bystander = LocalHead(num_cpus=4), LocalHead(num_cpus=1)
    starts = [subprocess.Popen(["bash", "launch/local.sh", *h.start_args, "--port", str(h.port), "--temp-dir",
                                h.temp_dir], cwd=ROOT, env=h.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for h in (job, bystander)]
    outputs = [p.communicate(timeout=180)[0] for p in starts]
    try:
        for p, out in zip(starts, outputs):
            assert p.returncode == 0, out
        yield job, bystander
    finally:
        for h in (job, bystander):
            h.local_sh("stop")
            subprocess.run(["rm", "-rf", h.temp_dir], check=False)


def test_local_head_runs_a_submitted_curate_job_and_stops_only_itself(two_heads, tmp_path: Path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    head, bystander = two_heads
    out = tmp_path / "curated"
    env = head.local_sh("env")
    assert f"export RAY_API_SERVER_ADDRESS={head.dashboard}" in env.stdout
    assert "export RAY_AUTH_MODE=disabled" in env.stdout

    submit = subprocess.run(
        [sys.executable, "-m", "launch", "submit", "--address", head.dashboard, "--",
         "python", "-m", "curate", "run", *TOY_JOB, f"output.path={out}", "--no-report"],
        cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=840)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    job_id = re.search(r"^job (raysubmit_\w+) submitted$", submit.stdout, re.M).group(1)
    assert f"ray job logs {job_id} --follow --address {head.dashboard}" in submit.stdout
    assert f"ray job stop {job_id} --address {head.dashboard}" in submit.stdout
    assert JobSubmissionClient(head.dashboard).get_job_status(job_id) == JobStatus.SUCCEEDED

    # Every input row exactly once, scored: the toy corpus the same config generates is the reference.
    toy = load_config(None, TOY_JOB).data.toy
    expected = generate_corpus(toy.num_samples, seed=toy.seed, tasks=toy.tasks)[schema.ID].to_pylist()
    annotated = pq.ParquetDataset(str(out / "annotated")).read(columns=[schema.ID, schema.STATUS])
    assert sorted(annotated[schema.ID].to_pylist()) == sorted(expected)
    assert set(annotated[schema.STATUS].to_pylist()) == {schema.STATUS_OK}

    procs = head.processes()
    assert len(procs) > 5  # gcs, raylet, dashboard, agents, workers
    bystander_procs = bystander.processes()
    bystander_core = [p for p in bystander_procs if p.name() in ("gcs_server", "raylet") or p.pid == bystander.pid()]
    assert len(bystander_core) >= 3
    stop = head.local_sh("stop")
    assert stop.returncode == 0 and "stopped the Ray head" in stop.stdout, stop.stdout + stop.stderr
    assert not _wait_gone(procs), "processes of the stopped cluster are still running"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", head.port)) != 0, "the stopped head's GCS port still accepts connections"

    assert all(p.is_running() for p in bystander_core), "stopping one cluster touched the other"
    status = bystander.local_sh("status")
    assert status.returncode == 0 and "/1.0 CPU" in status.stdout, status.stdout + status.stderr
    assert bystander.local_sh("stop").returncode == 0
    assert not _wait_gone(bystander_procs)
