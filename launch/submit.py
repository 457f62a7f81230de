"""Submit a curate/rl command to a Ray cluster as a Ray job (``ray job submit`` with this project's runtime env).

    python -m launch submit [--address http://HEAD:8265] [--no-wait] [--dry-run] [--env KEY=VALUE]
        [--pip PKG] [--runtime-env FILE.yaml | --runtime-env-json JSON] [--submission-id ID]
        -- python -m curate run --config configs/curate/<recipe>.yaml key=value ...

The job runs in a copy of the project (Ray's ``working_dir``, the repository root by default) with the
cluster's Python environment; ``python -m curate`` / ``python -m rl`` import the copy. What this adds to a
bare ``ray job submit --working-dir . -- CMD``:

- The upload leaves out what a job never needs and what would break Ray's working_dir size limit
  (512 MiB in Ray 2.60): virtual environments, git history, outputs, runs, caches (Ray also honours
  ``.gitignore`` and ``.rayignore``).
- Variables that decide which models and caches the job sees are passed on when set here
  (HARDMODE_CACHE, HF_HOME, HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE), and Python
  output is unbuffered so logs stream. RAY_AUTH_MODE needs no passing: the job inherits the cluster's.
  The submitting shell needs the cluster's RAY_AUTH_MODE and, in token mode, its token
  (RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token), which the job API checks.
- It prints the job id and the exact commands to follow, query and stop it. Without ``--no-wait`` it
  follows the logs and exits with the job's outcome: 0 only for SUCCEEDED (``ray job submit`` also
  returns 0 for a stopped job).

The address is ``--address``, else $RAY_API_SERVER_ADDRESS, else an http(s) $RAY_ADDRESS, else
http://127.0.0.1:8265; never a cluster found by guessing. Write outputs to absolute paths on storage the
cluster shares: a relative path lands in the job's temporary copy of the project.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# gitignore patterns relative to the working dir ("/x": only at its top).
EXCLUDES = [
    ".git",
    "/.venv*",
    "/outputs",
    "/runs",
    "/.cache",
    "/benchmarks/results",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".hypothesis",
]
# Passed to the job when set in the submitting shell.
PASSED_ENV = ["HARDMODE_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"]


class SubmitError(ValueError):
    """A mistake in the submit arguments, reported without a traceback."""


def resolve_address(address: str | None, environ: Mapping[str, str]) -> str:
    if address:
        return address
    if environ.get("RAY_API_SERVER_ADDRESS"):
        return environ["RAY_API_SERVER_ADDRESS"]
    ray_address = environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        return ray_address
    return DEFAULT_ADDRESS


def _key_values(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def build_runtime_env(
    base: Mapping[str, Any] | None,
    working_dir: str | None,
    env: Sequence[str] = (),
    pip: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The job's runtime env: ``base`` (the user's) plus this project's working dir, excludes and env.

    Precedence for env vars, lowest first: ours (passed-on variables, unbuffered output), ``base``'s,
    ``--env``. A working dir in ``base`` wins over the default (the project root) but not over
    ``--working-dir``.
    """
    environ = os.environ if environ is None else environ
    runtime_env = dict(base or {})
    runtime_env["working_dir"] = str(working_dir or runtime_env.get("working_dir") or PROJECT_ROOT)
    runtime_env["excludes"] = list(dict.fromkeys([*runtime_env.get("excludes", []), *EXCLUDES]))
    env_vars = {name: environ[name] for name in PASSED_ENV if environ.get(name)}
    env_vars["PYTHONUNBUFFERED"] = "1"
    env_vars.update(runtime_env.get("env_vars", {}))
    env_vars.update(_key_values(env))
    runtime_env["env_vars"] = env_vars
    if pip:
        existing = runtime_env.get("pip", [])
        if not isinstance(existing, list):
            raise SubmitError("--pip adds to a list of packages; the given runtime env's 'pip' is not a list")
        runtime_env["pip"] = [*existing, *pip]
    return runtime_env


def _load_base(path: str | None, json_text: str | None) -> dict[str, Any]:
    if path and json_text:
        raise SubmitError("give --runtime-env or --runtime-env-json, not both")
    if json_text:
        try:
            base = json.loads(json_text)
        except json.JSONDecodeError as err:
            raise SubmitError(f"--runtime-env-json is not JSON: {err}") from None
    elif path:
        import yaml

        base = yaml.safe_load(Path(path).read_text()) or {}
    else:
        return {}
    if not isinstance(base, dict):
        raise SubmitError("the runtime env must be a mapping (runtime_env keys: working_dir, pip, env_vars, ...)")
    return base


def _auth_prefix(environ: Mapping[str, str]) -> str:
    """The auth variables a printed ``ray job`` command needs (the token file's path, never a token)."""
    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
    return "".join(f"{name}={shlex.quote(environ[name])} " for name in names if environ.get(name))


def ray_cli(
    address: str,
    runtime_env: Mapping[str, Any],
    entrypoint: str,
    no_wait: bool,
    submission_id: str | None,
    environ: Mapping[str, str],
) -> str:
    """The ``ray job submit`` command line that submits exactly this job."""
    args = ["ray", "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env)]
    if submission_id:
        args += ["--submission-id", submission_id]
    if no_wait:
        args.append("--no-wait")
    return _auth_prefix(environ) + shlex.join(args) + " -- " + entrypoint


def next_steps(job_id: str, address: str, environ: Mapping[str, str]) -> str:
    prefix = _auth_prefix(environ)
    a = shlex.quote(address)
    return "\n".join(
        [
            f"  follow its logs:  {prefix}ray job logs {job_id} --follow --address {a}",
            f"  its status:       {prefix}ray job status {job_id} --address {a}",
            f"  stop it:          {prefix}ray job stop {job_id} --address {a}",
        ]
    )


async def _follow(client: Any, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def follow(client: Any, job_id: str, poll_s: float = 2.0) -> Any:
    """Stream the job's logs until it ends; its final status."""
    import time

    try:
        asyncio.run(_follow(client, job_id))
    except RuntimeError as err:  # the log stream closed early; the job itself may still run
        print(f"\n(log stream ended: {err}; waiting for the job to finish)", file=sys.stderr, flush=True)
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(poll_s)
        status = client.get_job_status(job_id)
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=f"the cluster's dashboard / job API URL (default: {DEFAULT_ADDRESS})")
    parser.add_argument("--working-dir", help="directory shipped to the job (default: the project root)")
    parser.add_argument("--runtime-env", metavar="FILE", help="a runtime_env YAML file to start from")
    parser.add_argument("--runtime-env-json", metavar="JSON", help="a runtime_env as JSON to start from")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var (repeatable)")
    parser.add_argument("--pip", action="append", default=[], metavar="PKG", help="pip package (repeatable)")
    parser.add_argument("--submission-id", help="the job's id (default: one Ray generates)")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted; do not follow the logs")
    parser.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. python -m curate run ...")


def main(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not command:
            raise SubmitError("no command: put it after --, e.g. -- python -m curate run --config ...")
        base = _load_base(args.runtime_env, args.runtime_env_json)
        runtime_env = build_runtime_env(base, args.working_dir, args.env, args.pip)
        if not Path(runtime_env["working_dir"]).is_dir():
            raise SubmitError(f"working dir {runtime_env['working_dir']} is not a directory")
    except (SubmitError, OSError) as err:
        print(f"python -m launch submit: {err}", file=sys.stderr)
        return 2
    address = resolve_address(args.address, os.environ)
    entrypoint = shlex.join(command)
    if args.dry_run:
        print(f"address:     {address}")
        print(f"entrypoint:  {entrypoint}")
        print(f"runtime_env: {json.dumps(runtime_env, indent=2)}")
        print("equivalent:  " + ray_cli(address, runtime_env, entrypoint, args.no_wait, args.submission_id, os.environ))
        return 0

    from ray.exceptions import AuthenticationError, RayError
    from ray.job_submission import JobStatus, JobSubmissionClient

    print(f"submitting to {address}: {entrypoint}", flush=True)
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=args.submission_id)
    except (ConnectionError, RuntimeError, ValueError, RayError) as err:  # unreachable, auth, upload too big
        print(f"python -m launch submit: {type(err).__name__}: {err}", file=sys.stderr)
        if isinstance(err, AuthenticationError):
            print('For a head from launch/local.sh: eval "$(launch/local.sh env --port PORT)" exports its '
                  "RAY_AUTH_MODE and token file", file=sys.stderr)
        return 1
    print(f"job {job_id} submitted\n{next_steps(job_id, address, os.environ)}", flush=True)
    if args.no_wait:
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running\n{next_steps(job_id, address, os.environ)}")
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status.value}" + (f" ({info.message})" if status != JobStatus.SUCCEEDED else ""))
    return 0 if status == JobStatus.SUCCEEDED else 1
