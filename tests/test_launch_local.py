"""launch/local.sh's safety and ``curate run``'s choice of cluster: a stale state file never gets another
process signalled, the Ray Client port stays out of Ray's and Linux's port ranges, token auth is the
default (clients without the token are refused; ``run``, ``env`` and ``python -m launch submit`` work),
the commands it prints find the node again (``--temp-dir`` included), ``start --address`` returns once
the head lists the worker alive, and ``connect`` joins a cluster only when asked."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """This environment without Ray's variables (conftest sets RAY_AUTH_MODE) or HARDMODE_RAY_TMP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "HARDMODE_RAY_TMP"}
    return {**env, **extra}


def _local_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "launch/local.sh", *args], cwd=ROOT, env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: the process's start time in clock ticks after boot."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19])


def _write_state(temp_dir: Path, **fields: object) -> Path:
    path = temp_dir / "hardmode-node.state"
    base = {"role": "head", "address": "127.0.0.1:1", "dashboard": "", "auth": "disabled", "temp_dir": temp_dir,
            "log": temp_dir / "ray-start.log"}
    path.write_text("".join(f"{k}={v}\n" for k, v in {**base, **fields}.items()))
    return path


def _dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


# ---- stop: a stale state file (no Ray) ---------------------------------------------------------------


@pytest.mark.parametrize("recorded", ["earlier start time", "no start time", "same start time, other command"])
def test_stop_never_signals_a_process_that_holds_a_stale_pid(tmp_path: Path, recorded: str):
    # A session leader, as `ray start` was, now holding the PID the state file names.
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        fields: dict[str, object] = {"pid": bystander.pid}
        if recorded == "earlier start time":
            fields["start_time"] = _start_time(bystander.pid) - 1
        elif recorded == "same start time, other command":
            fields["start_time"] = _start_time(bystander.pid)
        state = _write_state(tmp_path, **fields)
        result = _local_sh("stop", "--port", str(_free_port()), "--temp-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert f"pid {bystander.pid} is not the Ray node this script started" in result.stdout
        assert "nothing signalled" in result.stdout and "removed the stale state file" in result.stdout
        assert "stopped the Ray" not in result.stdout
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(timeout=1)  # alive: neither it nor its session was signalled
        assert not state.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_ends_what_is_left_in_the_session_of_a_node_whose_leader_is_gone(tmp_path: Path):
    leader = subprocess.Popen(["bash", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], start_new_session=True,
                              stdout=subprocess.PIPE, text=True)
    child = int(leader.stdout.readline())
    leader.communicate()  # reaped: no process has the leader's PID now, its child lives on in its session
    try:
        assert os.getsid(child) == leader.pid
        _write_state(tmp_path, pid=leader.pid, start_time=1)
        result = _local_sh("stop", "--port", str(_free_port()), "--temp-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert f"ending leftover processes of session {leader.pid}" in result.stdout
        assert "stopped the Ray head" in result.stdout
        assert _dead(child)
    finally:
        try:
            if os.getsid(child) == leader.pid:  # still the test's sleep
                os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- the commands local.sh prints name --temp-dir when one was given (no Ray) ---------------------------


def test_hints_for_a_node_that_is_gone_name_its_temp_dir(tmp_path: Path):
    leader = subprocess.Popen(["true"])
    leader.wait()  # reaped: no process has its PID
    _write_state(tmp_path, pid=leader.pid, start_time=1)
    port = str(_free_port())
    again = f"launch/local.sh stop --port {port} --temp-dir {tmp_path}"

    status = _local_sh("status", "--port", port, "--temp-dir", str(tmp_path))
    # One line for the one state file (it was read once per role), with a working clean-up command.
    assert status.stdout.count(f"pid {leader.pid} is gone") == 1, status.stdout
    assert f"clean up with: {again}" in status.stdout
    env = _local_sh("env", "--port", port, "--temp-dir", str(tmp_path))
    assert env.returncode == 2 and f"then: {again}" in env.stderr, env.stderr

    stop = _local_sh(*shlex.split(again)[1:])
    assert stop.returncode == 0, stop.stderr
    assert f"stopped the Ray head for port {port} in {tmp_path} (pid {leader.pid})" in stop.stdout, stop.stdout
    missing = _local_sh("run", "--port", port, "--temp-dir", str(tmp_path), "--", "true")
    assert missing.returncode == 2
    assert f"(launch/local.sh start --port {port} --temp-dir {tmp_path})" in missing.stderr, missing.stderr


def test_start_refuses_a_running_node_naming_its_temp_dir(tmp_path: Path):
    # A session leader whose command line is what `ray start` had: the node counts as running.
    node = subprocess.Popen(["bash", "-c", f'exec -a "ray start --block --temp-dir={tmp_path}" sleep 300'],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while "ray start" not in " ".join(psutil.Process(node.pid).cmdline()) and time.monotonic() < deadline:
            time.sleep(0.05)
        _write_state(tmp_path, pid=node.pid, start_time=_start_time(node.pid))
        port = str(_free_port())
        result = _local_sh("start", "--port", port, "--temp-dir", str(tmp_path), "--client-port", str(_free_port()),
                           "--dashboard-port", str(_free_port()))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"is already running (pid {node.pid}); launch/local.sh stop --port {port} --temp-dir {tmp_path}" \
            in result.stderr, result.stderr
    finally:
        node.kill()
        node.wait()


def test_a_relative_temp_dir_is_made_absolute(tmp_path: Path):
    result = subprocess.run(["bash", str(ROOT / "launch/local.sh"), "stop", "--port", "1", "--temp-dir", "rel"],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert f"for port 1 in {tmp_path}/rel on this machine" in result.stdout, result.stdout + result.stderr


# ---- start: ports and auth (dry run, no Ray) ------------------------------------------------------


def _dry_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = _local_sh("start", "--dry-run", "--port", str(_free_port()), "--dashboard-port", str(_free_port()),
                       "--temp-dir", str(tmp_path / "ray"), *args, env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "ray").exists()  # a dry run creates nothing
    return result.stdout


def test_client_port_stays_out_of_ray_and_linux_port_ranges_when_10001_is_busy(tmp_path: Path):
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 10001))
            holder.listen()
        except OSError:
            pass  # something else holds it already
        if not _listening(10001):
            pytest.skip("port 10001 can be neither taken nor found taken")
        out = _dry_run(tmp_path)
    port = int(re.search(r"--ray-client-server-port=(\d+)", out).group(1))
    assert port != 10001
    assert not 10002 <= port <= 19999, "inside Ray's worker port range"
    assert not 32768 <= port <= 60999, "inside Linux's ephemeral port range"
    assert 23000 <= port <= 23999


def test_token_auth_is_the_default(tmp_path: Path):
    assert _dry_run(tmp_path).startswith("RAY_AUTH_MODE=token ray start ")
    assert _dry_run(tmp_path, "--auth", "disabled").startswith("RAY_AUTH_MODE=disabled ray start ")
    assert _dry_run(tmp_path, env=_env(RAY_AUTH_MODE="disabled")).startswith("RAY_AUTH_MODE=disabled ray start ")


# ---- a real head with token auth ----------------------------------------------------------------------


@dataclass
class Head:
    port: int
    dashboard: str
    temp_dir: Path
    gcs: str
    started: str = ""  # what `start` printed

    def local_sh(self, action: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        return _local_sh(action, "--port", str(self.port), "--temp-dir", str(self.temp_dir), *args, env=env,
                         timeout=timeout)


@pytest.fixture(scope="module")
def token_head() -> Iterator[Head]:
    # Short: Ray's socket paths under it must stay below the 107-character Unix limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="hm-tok-", dir="/tmp"))
    port, dashboard_port = _free_port(), _free_port()
    head = Head(port, f"http://127.0.0.1:{dashboard_port}", temp_dir, "")
    # The token comes from the environment, so ~/.ray/auth_token is neither read nor created.
    start = head.local_sh("start", "--num-cpus", "4", "--dashboard-port", str(dashboard_port), "--client-port",
                          str(_free_port()), env=_env(RAY_AUTH_TOKEN=secrets.token_hex(16)), timeout=180)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        head.started = start.stdout
        head.gcs = re.search(r"^address=(.+)$", (temp_dir / "hardmode-node.state").read_text(), re.M).group(1)
        yield head
        stop = head.local_sh("stop")
        assert "stopped the Ray head" in stop.stdout, stop.stdout + stop.stderr
        assert not (temp_dir / "auth_token").exists(), "stop left the copy of the token behind"
    finally:
        head.local_sh("stop")  # nothing left to stop unless the test failed
        shutil.rmtree(temp_dir, ignore_errors=True)


def _exported(env_lines: str, base: dict[str, str]) -> dict[str, str]:
    """``base`` after the export/unset lines `local.sh env` prints for a shell."""
    env = dict(base)
    for line in env_lines.splitlines():
        words = shlex.split(line)
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            env[key] = value
        elif words[0] == "unset":
            for key in words[1:]:
                env.pop(key, None)
    return env


PROBE = "import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'])"


@pytest.mark.slow
def test_token_head_serves_its_token_holders_only(token_head: Head):
    token_file = token_head.temp_dir / "auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    env_lines = token_head.local_sh("env").stdout
    assert "export RAY_AUTH_MODE=token" in env_lines and "unset RAY_AUTH_TOKEN" in env_lines
    assert f"export RAY_AUTH_TOKEN_PATH={token_file}" in env_lines

    # `run` hands its command the node's token file, whatever token the shell has.
    run = token_head.local_sh("run", "--", sys.executable, "-c", PROBE, env=_env(RAY_AUTH_TOKEN="stale"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "CPUS 4.0" in run.stdout
    status = token_head.local_sh("status")
    assert status.returncode == 0 and "auth 'token'" in status.stdout, status.stdout + status.stderr
    assert status.stdout.count("head: pid") == 1, status.stdout

    # Without the token: the GCS and the job API refuse.
    no_token = _env(RAY_AUTH_MODE="disabled", RAY_NUM_REDIS_GET_RETRIES="3")
    joined = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={token_head.gcs!r})"], cwd=ROOT,
                            env=no_token, capture_output=True, text=True, timeout=120)
    assert joined.returncode != 0 and "InvalidAuthToken" in joined.stdout + joined.stderr, joined.stderr[-2000:]
    submit = [sys.executable, "-m", "launch", "submit", "--address", token_head.dashboard, "--"]
    refused = subprocess.run([*submit, "python", "-c", "print(1)"], cwd=ROOT, env=_env(RAY_AUTH_MODE="disabled"),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "AuthenticationError" in refused.stderr, refused.stdout + refused.stderr

    # With the lines `env` prints: a job is accepted, and its driver reaches the cluster too.
    job = subprocess.run([*submit, "python", "-c", PROBE], cwd=ROOT, env=_exported(env_lines, _env()),
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "CPUS 4.0" in job.stdout and "SUCCEEDED" in job.stdout


CONNECT = """
import sys, ray
from curate.config import load_config
from curate.pipeline import connect
connect(load_config(None, ["data.format=toy", *sys.argv[1:]]))
print("GCS", ray.get_runtime_context().gcs_address)
"""


@pytest.mark.slow
def test_curate_joins_a_running_cluster_only_when_asked(token_head: Head):
    # A Ray temp dir whose ray_current_cluster names the head, as `ray start` leaves it: what
    # ray.init(address="auto") finds. Short, for Ray's socket paths.
    ray_tmp = Path(tempfile.mkdtemp(prefix="hm-auto-", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(token_head.gcs)
    # The head's auth, so that joining it would succeed: only the address decides.
    env = _env(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token_head.temp_dir / "auth_token"))

    def gcs(*overrides: str, **extra: str) -> str:
        result = subprocess.run([sys.executable, "-c", CONNECT, *overrides], cwd=ROOT, env={**env, **extra},
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return re.search(r"^GCS (\S+)$", result.stdout, re.M).group(1)

    try:
        own = gcs()
        assert own != token_head.gcs, "curate run joined a cluster it was not asked to join"
        assert gcs(RAY_ADDRESS=token_head.gcs) == token_head.gcs
        assert gcs("ray.address=auto") == token_head.gcs
        assert gcs("ray.address=local", RAY_ADDRESS=token_head.gcs) != token_head.gcs
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_printed_commands_name_the_temp_dir(token_head: Head):
    opts = f"--port {token_head.port} --temp-dir {token_head.temp_dir}"
    lines = [line for line in token_head.started.splitlines() if "launch/local.sh " in line]
    actions = [re.search(r"launch/local\.sh (\w+)", line).group(1) for line in lines]
    assert sorted(actions) == ["env", "run", "status", "stop"], token_head.started
    for action, line in zip(actions, lines):
        assert f"launch/local.sh {action} {opts}" in line, line
    # Run as printed: `status`, and the shell line with `env` (in a shell, from the checkout).
    status_line = next(line for line in lines if "local.sh status" in line)
    status = _local_sh(*shlex.split(status_line.strip())[1:])
    assert status.returncode == 0 and f"GCS {token_head.gcs}" in status.stdout, status.stdout + status.stderr
    env_line = next(line for line in lines if "local.sh env" in line).split("#")[0].strip()
    shell = subprocess.run(["bash", "-c", f'{env_line} && echo "$RAY_ADDRESS"'], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0 and shell.stdout.strip() == token_head.gcs, shell.stdout + shell.stderr


NODES = """
import ray
ray.init(logging_level="ERROR", log_to_driver=False)
for node in ray.nodes():
    print("NODE", node["NodeID"], node["Alive"])
"""


@pytest.mark.slow
def test_start_address_returns_once_the_worker_has_joined(token_head: Head):
    # A second raylet on this machine with its own temp dir (short: Ray's socket paths), the head's token.
    temp_dir = Path(tempfile.mkdtemp(prefix="hm-wrk-", dir="/tmp"))
    token = (token_head.temp_dir / "auth_token").read_text()
    worker = ["--port", str(token_head.port), "--temp-dir", str(temp_dir)]
    try:
        start = _local_sh("start", "--address", token_head.gcs, "--num-cpus", "1", "--temp-dir", str(temp_dir),
                          "--timeout", "60", env=_env(RAY_AUTH_TOKEN=token), timeout=120)
        assert start.returncode == 0, start.stdout + start.stderr
        node_id = re.search(r"node ID ([0-9a-f]{56})", start.stdout).group(1)
        assert "(2 nodes alive" in start.stdout, start.stdout
        assert f"Stop it with: launch/local.sh stop {' '.join(worker)}" in start.stdout, start.stdout

        # Right away, a client of the head counts both nodes alive, the worker by the ID `start` printed.
        nodes = token_head.local_sh("run", "--", sys.executable, "-c", NODES)
        assert nodes.returncode == 0, nodes.stdout[-2000:] + nodes.stderr[-2000:]
        alive = set(re.findall(r"^NODE (\S+) True$", nodes.stdout, re.M))
        assert len(alive) == 2 and node_id in alive, nodes.stdout

        status = _local_sh("status", *worker)
        assert status.stdout.count("worker: pid") == 1 and f"node ID {node_id}" in status.stdout, status.stdout
        stop = _local_sh("stop", *worker)
        assert "stopped the Ray worker" in stop.stdout, stop.stdout + stop.stderr
        assert not (temp_dir / "auth_token").exists()
    finally:
        _local_sh("stop", *worker)
        shutil.rmtree(temp_dir, ignore_errors=True)
