"""Launch tooling without a cluster: shell lint, the exact commands of the Slurm and SSH dry runs,
local.sh's refusals, and the runtime env ``python -m launch submit`` builds."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launch.submit import EXCLUDES, PASSED_ENV, SubmitError, build_runtime_env, resolve_address

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("launch/*.sh"), *ROOT.glob("launch/*.sbatch")])
RL_COMMAND = ["python", "-m", "rl", "train", "--config", "configs/rl/toy_cpu.yaml",
              "trainer.nnodes=2", "trainer.n_gpus_per_node=8"]
CURATE_COMMAND = ["python", "-m", "curate", "run", "--config", "configs/curate/orsta_qwen25vl7b.yaml",
                  "pism.ratios=[0.0,0.5]", "output.path=/shared/runs/a b"]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would make a script see a real allocation or cluster."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RAY_")) and k not in ("HEAD_IP", "DASHBOARD_HOST", "SSH_OPTS", *PASSED_ENV)}
    return {**env, **extra}


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env or _clean_env(), capture_output=True, text=True, timeout=60)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _index(lines: list[str], prefix: str) -> int:
    hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(hits) == 1, f"expected one line starting with {prefix!r} in:\n" + "\n".join(lines)
    return hits[0]


# ---- shell lint ----------------------------------------------------------------------------------


def test_every_launch_script_is_found():
    names = {p.name for p in SCRIPTS}
    assert {"local.sh", "ssh_cluster.sh", "slurm.sbatch", "bootstrap.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script: Path):
    result = _run(["bash", "-n", str(script)])
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (Debian: apt-get install -y shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_passes_shellcheck(script: Path):
    result = _run(["shellcheck", "--shell=bash", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Slurm ---------------------------------------------------------------------------------------


def test_slurm_dry_run_two_nodes_eight_gpus():
    result = _run(["bash", "launch/slurm.sbatch", "--dry-run", "--nodes", "2", "--gpus-per-node", "8",
                   "--cpus-per-node", "64", "--", *RL_COMMAND], env=_clean_env(HEAD_IP="10.1.2.3"))
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    node_args = ("--num-cpus=64 --num-gpus=8 --dashboard-agent-listen-port=0 --temp-dir=/tmp/hardmode-ray-JOBID "
                 "--disable-usage-stats")
    head = _index(lines, "srun --nodes=1 --ntasks=1 -w node1 ray start --head")
    assert lines[head] == (
        "srun --nodes=1 --ntasks=1 -w node1 ray start --head --block --node-ip-address=10.1.2.3 --port=6379 "
        f"--dashboard-host=127.0.0.1 --dashboard-port=8265 {node_args} &")
    worker = _index(lines, "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 -w node2 ray start")
    assert lines[worker] == (
        "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 -w node2 ray start --block --address=10.1.2.3:6379 "
        f"{node_args} &")
    wait_head = _index(lines, "srun --overlap --nodes=1 --ntasks=1 -w node1 python -m launch wait "
                              "--address 10.1.2.3:6379 --nodes 1 --gpus 0 ")
    wait_all = _index(lines, "srun --overlap --nodes=1 --ntasks=1 -w node1 python -m launch wait "
                             "--address 10.1.2.3:6379 --nodes 2 --gpus 16 ")
    job = _index(lines, "srun --overlap --nodes=1 --ntasks=1 -w node1 env RAY_ADDRESS=10.1.2.3:6379")
    assert shlex.split(lines[job])[-len(RL_COMMAND):] == RL_COMMAND
    stop_workers = _index(lines, "kill -TERM <pid of the workers' srun>")
    stop_head = _index(lines, "kill -TERM <pid of the head's srun>")
    assert head < wait_head < worker < wait_all < job < stop_workers < stop_head
    assert "export RAY_AUTH_MODE=token" in lines


def test_slurm_dry_run_looks_up_the_head_ip_and_quotes_the_command():
    result = _run(["bash", "launch/slurm.sbatch", "--dry-run", "--nodes", "2", "--auth", "disabled",
                   "--", *CURATE_COMMAND])
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    assert lines[_index(lines, "srun --nodes=1 --ntasks=1 -w node1 bash -c")] == \
        "srun --nodes=1 --ntasks=1 -w node1 bash -c hostname\\ --ip-address\\;\\ hostname\\ -I"
    job = shlex.split(lines[_index(lines, "srun --overlap --nodes=1 --ntasks=1 -w node1 env")])
    assert job[-len(CURATE_COMMAND):] == CURATE_COMMAND  # the printed line runs the same argv
    assert "export RAY_AUTH_MODE=disabled" in lines
    assert not any("--num-gpus" in line for line in lines)  # unknown: Ray detects the step's GPUs


def test_slurm_refuses_to_run_outside_an_allocation():
    result = _run(["bash", "launch/slurm.sbatch", "--", "true"])
    assert result.returncode == 2
    assert "not inside a Slurm allocation" in result.stderr


# ---- SSH -----------------------------------------------------------------------------------------


@pytest.fixture
def hostfile(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("# head first\ngpu-a\n\nubuntu@gpu-b   # second\ngpu-c\n")
    return path


def _ssh_remote(line: str) -> tuple[str, list[str]]:
    """(host, argv of launch/local.sh) of a printed `ssh ... HOST 'cd DIR && ... launch/local.sh ARGS'`."""
    words = shlex.split(line.split(" <<<")[0])
    host, remote = words[-2], words[-1]
    assert remote.startswith(f"cd {shlex.quote(str(ROOT))} && ")
    return host, shlex.split(remote.split("launch/local.sh ", 1)[1])


def test_ssh_dry_run_two_nodes_eight_gpus(hostfile: Path):
    env = _clean_env(HEAD_IP="10.1.2.3", RAY_AUTH_TOKEN="s3cr3t-token", SSH_OPTS="-p 2222")
    result = _run(["bash", "launch/ssh_cluster.sh", "--dry-run", "--hostfile", str(hostfile), "--nodes", "2",
                   "--gpus-per-node", "8", "--", *CURATE_COMMAND], env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-token" not in result.stdout  # the token travels on ssh's stdin only
    ssh = [line for line in _lines(result.stdout) if line.startswith("ssh ")]
    assert all(line.startswith("ssh -o BatchMode=yes -p 2222 ") for line in ssh)
    calls = [_ssh_remote(line) for line in ssh]
    node = ["--auth", "token", "--timeout", "600", "--num-gpus", "8"]
    assert calls == [
        ("gpu-a", ["start", "--port", "6379", "--dashboard-port", "8265", "--dashboard-host", "127.0.0.1",
                   "--node-ip-address", "10.1.2.3", *node]),
        ("ubuntu@gpu-b", ["start", "--address", "10.1.2.3:6379", *node]),
        ("gpu-a", ["run", "--port", "6379", "--", "python", "-m", "launch", "wait", "--nodes", "2", "--gpus", "16",
                   "--timeout", "600"]),
        ("gpu-a", ["run", "--port", "6379", "--", "env", "PYTHONUNBUFFERED=1", *CURATE_COMMAND]),
        ("ubuntu@gpu-b", ["stop", "--port", "6379"]),  # teardown: workers first
        ("gpu-a", ["stop", "--port", "6379"]),
    ]
    with_token = [line.endswith(' <<<"$RAY_AUTH_TOKEN"') for line in ssh]
    assert with_token == [True, True, False, False, False, False]  # `start`: local.sh keeps it for `run`
    assert "RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(ray get-auth-token --generate)}" in result.stdout


def test_ssh_dry_run_without_head_ip_asks_the_head(hostfile: Path):
    result = _run(["bash", "launch/ssh_cluster.sh", "--dry-run", "--hostfile", str(hostfile), "--auth", "disabled",
                   "--", "true"])
    assert result.returncode == 0, result.stderr
    calls = [_ssh_remote(line) for line in _lines(result.stdout) if line.startswith("ssh ")]
    assert calls[1] == ("gpu-a", ["address", "--port", "6379"])
    assert [c for c in calls if c[1][0] == "start"][1:] == [
        ("ubuntu@gpu-b", ["start", "--address", "gpu-a:6379", "--auth", "disabled", "--timeout", "600"]),
        ("gpu-c", ["start", "--address", "gpu-a:6379", "--auth", "disabled", "--timeout", "600"]),
    ]
    assert "<<<" not in result.stdout


def test_ssh_refuses_more_nodes_than_hosts(hostfile: Path):
    result = _run(["bash", "launch/ssh_cluster.sh", "--dry-run", "--hostfile", str(hostfile), "--nodes", "4"])
    assert result.returncode == 2
    assert "lists 3 hosts" in result.stderr


# ---- local.sh refusals (no Ray started) -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_start_refuses_a_port_in_use(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(["bash", "launch/local.sh", "start", "--port", str(port), "--dashboard-port", str(_free_port()),
                       "--client-port", str(_free_port()), "--temp-dir", str(tmp_path / "ray")])
    assert result.returncode == 2
    assert f"port {port} is in use" in result.stderr and "--port" in result.stderr
    assert not (tmp_path / "ray").exists()


def test_local_commands_without_a_node(tmp_path: Path):
    port = str(_free_port())
    stop = _run(["bash", "launch/local.sh", "stop", "--port", port])
    assert stop.returncode == 0 and "no Ray node started by this script" in stop.stdout
    for action in (["run", "--port", port, "--", "true"], ["env", "--port", port], ["status", "--port", port]):
        result = _run(["bash", "launch/local.sh", *action])
        assert result.returncode == 2 and "no " in result.stderr, action
    bad = _run(["bash", "launch/local.sh", "start", "--auth", "none", "--port", port])
    assert bad.returncode == 2 and "--auth must be disabled or token" in bad.stderr


# ---- python -m launch submit ------------------------------------------------------------------------


def test_runtime_env_layers():
    base = {"env_vars": {"A": "base", "B": "base"}, "excludes": ["/data"], "pip": ["x"]}
    environ = {"HF_HUB_OFFLINE": "1", "HARDMODE_CACHE": "/shared/cache", "HF_TOKEN": "secret", "HF_HOME": ""}
    env = build_runtime_env(base, None, env=["B=cli", "C=x=y"], pip=["y"], environ=environ)
    assert env["working_dir"] == str(ROOT)
    assert env["excludes"] == ["/data", *EXCLUDES]
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1", "HARDMODE_CACHE": "/shared/cache", "PYTHONUNBUFFERED": "1",
                               "A": "base", "B": "cli", "C": "x=y"}  # no secrets, no empty values
    assert env["pip"] == ["x", "y"]
    assert base == {"env_vars": {"A": "base", "B": "base"}, "excludes": ["/data"], "pip": ["x"]}  # not mutated
    assert build_runtime_env({"working_dir": "/w"}, None, environ={})["working_dir"] == "/w"
    assert build_runtime_env({"working_dir": "/w"}, "/x", environ={})["working_dir"] == "/x"
    with pytest.raises(SubmitError, match="KEY=VALUE"):
        build_runtime_env(None, None, env=["novalue"], environ={})
    with pytest.raises(SubmitError, match="not a list"):
        build_runtime_env({"pip": {"packages": ["x"]}}, None, pip=["y"], environ={})


def test_address_precedence():
    assert resolve_address("http://a:1", {"RAY_API_SERVER_ADDRESS": "http://b:2"}) == "http://a:1"
    assert resolve_address(None, {"RAY_API_SERVER_ADDRESS": "http://b:2", "RAY_ADDRESS": "http://c:3"}) == "http://b:2"
    assert resolve_address(None, {"RAY_ADDRESS": "http://c:3"}) == "http://c:3"
    # A GCS address (ray start's HOST:6379) is not the job API: never guess a cluster from it.
    assert resolve_address(None, {"RAY_ADDRESS": "10.0.0.1:6379"}) == "http://127.0.0.1:8265"


def test_submit_dry_run_prints_an_equivalent_ray_command():
    env = _clean_env(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    result = _run([sys.executable, "-m", "launch", "submit", "--dry-run", "--no-wait", "--address", "http://h:8265",
                   "--env", "K=v", "--", *CURATE_COMMAND], env=env)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("equivalent:"))
    argv = shlex.split(line.removeprefix("equivalent:"))
    assert argv[:5] == ["RAY_AUTH_MODE=disabled", "ray", "job", "submit", "--address"]
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"] == {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "K": "v"}
    assert runtime_env["excludes"] == EXCLUDES and runtime_env["working_dir"] == str(ROOT)
    assert "--no-wait" in argv
    assert argv[argv.index("--") + 1:] == CURATE_COMMAND


def test_submit_without_a_command_fails_fast():
    result = _run([sys.executable, "-m", "launch", "submit", "--dry-run"])
    assert result.returncode == 2 and re.search(r"no command", result.stderr)
