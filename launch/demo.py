"""The main job, end to end, on the embedded default: ``make demo`` (or ``python -m launch.demo``).

Offline, on this machine's CPU, in minutes: the toy world (a synthetic multimodal corpus and a tiny
Qwen2.5-VL trained on it), curation with PISM and CMAB on a Ray cluster, the annotated dataset and its
report, selection of the medium+hard samples, a short GRPO run with verl's real trainer, and the
model evaluated on held-out samples before and after. Every stage is one of the project's own
commands, printed before it runs, so the demo is also the recipe for a real run:

    python -m curate toy model                          # train (once) and cache the tiny model
    python -m curate run --config configs/curate/toy.yaml output.path=OUT/curate
    python -m curate select --config configs/select/mid_hard_pism.yaml input=OUT/curate output=OUT/select
    python -m curate toy corpus OUT/heldout.parquet --seed 1000
    python -m rl eval toy OUT/heldout.parquet --out OUT/eval_before.json
    python -m rl train --config configs/rl/toy_cpu.yaml data.train_files=OUT/select/grpo/verl/train.parquet ...
    python -m rl eval OUT/rl/checkpoints/global_step_N OUT/heldout.parquet --out OUT/eval_after.json

Curation uses the cluster in RAY_ADDRESS (``launch/local.sh run -- python -m launch.demo`` sets it),
else a private local one; verl's trainer starts its own private cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]


def _run(step: str, command: Sequence[str], log: list[dict[str, Any]], env: dict[str, str] | None = None) -> None:
    print(f"\n==> {step}\n$ {shlex.join(command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    log.append({"step": step, "command": shlex.join(command), "seconds": round(seconds, 1)})
    if result.returncode != 0:
        raise SystemExit(f"demo: '{step}' failed with exit code {result.returncode} (command above)")
    print(f"<== {step}: {seconds:.0f} s", flush=True)


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _summary(out: Path, steps: int, log: list[dict[str, Any]]) -> dict[str, Any]:
    run = json.loads((out / "curate" / "run.json").read_text())["summary"]
    selected = json.loads((out / "select" / "manifest.json").read_text())["subsets"]["grpo"]
    before = json.loads((out / "eval_before.json").read_text())["summary"]["overall"]
    after = json.loads((out / "eval_after.json").read_text())["summary"]["overall"]
    train = _metrics(out / "rl" / "metrics.jsonl")
    rewards = [m.get("data", m).get("critic/score/mean") for m in train]
    return {
        "curation": {k: run.get(k) for k in ("rows_in", "scored", "errored", "pism_buckets", "cmab_buckets",
                                             "pism_generations", "seconds")},
        "selection": {k: selected.get(k) for k in ("what", "rows", "train_rows", "val_rows", "tasks")},
        "training": {"steps": steps, "reward_mean_per_step": rewards},
        "heldout_before": before,
        "heldout_after": after,
        "stages": log,
        "outputs": {
            "annotated dataset": str(out / "curate" / "annotated"),
            "report": str(out / "curate" / "report" / "report.md"),
            "selection": str(out / "select" / "manifest.json"),
            "checkpoint": str(out / "rl" / "checkpoints" / f"global_step_{steps}"),
            "evaluations": [str(out / "eval_before.json"), str(out / "eval_after.json")],
        },
    }


def _print(summary: dict[str, Any]) -> None:
    c, b, a = summary["curation"], summary["heldout_before"], summary["heldout_after"]
    s = summary["selection"]
    print("\n" + "=" * 72)
    print("hardmode demo: done")
    print(f"curation: {c['rows_in']} samples, {c['scored']} scored, {c['errored']} errors, "
          f"{c['pism_generations']} PISM generations ({c['seconds']} s)")
    print(f"  PISM buckets: {c['pism_buckets']}")
    if c.get("cmab_buckets"):
        print(f"  CMAB buckets: {c['cmab_buckets']}")
    print(f"selection: {s['what']}: {s['rows']} samples ({s['train_rows']} train, {s['val_rows']} val)")
    rewards = [f"{r:.3f}" for r in summary["training"]["reward_mean_per_step"] if r is not None]
    print(f"GRPO: {summary['training']['steps']} steps, mean reward per step: {', '.join(rewards) or 'n/a'}")
    print(f"held-out accuracy: {b['accuracy']:.3f} before → {a['accuracy']:.3f} after "
          f"(mean reward {b['mean_reward']:.3f} → {a['mean_reward']:.3f}, n={a['n']})")
    for name, path in summary["outputs"].items():
        print(f"  {name}: {path}")
    print("=" * 72)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo", help="output directory")
    parser.add_argument("--samples", type=int, default=120, help="toy corpus size (default: 120)")
    parser.add_argument("--heldout", type=int, default=60, help="held-out evaluation samples (default: 60)")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps (default: 4)")
    parser.add_argument("--actors", type=int, default=1, help="scoring actors (default: 1)")
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a `python -m rl train` override for the GRPO step (repeatable), e.g. "
                        "actor_rollout_ref.actor.optim.lr=3e-4")
    parser.add_argument("--resume", action="store_true",
                        help="keep what an earlier demo wrote to --out (curation resumes; default: start clean)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    log: list[dict[str, Any]] = []
    checkpoint = out / "rl" / "checkpoints" / f"global_step_{args.steps}"
    (out / "rl").mkdir(exist_ok=True)  # verl's file logger opens its file without creating folders

    _run("toy model (trained once per machine, then cached)", [py, "-m", "curate", "toy", "model"], log)
    _run("curation: PISM + CMAB on Ray, annotated dataset and report",
         [py, "-m", "curate", "run", "--config", "configs/curate/toy.yaml", f"output.path={out / 'curate'}",
          f"data.toy.num_samples={args.samples}", f"ray.min_actors={args.actors}", f"ray.max_actors={args.actors}"],
         log)
    _run("selection: medium + hard by PISM, exported for verl",
         [py, "-m", "curate", "select", "--config", "configs/select/mid_hard_pism.yaml", f"input={out / 'curate'}",
          f"output={out / 'select'}", "overwrite=true"], log)
    _run("held-out toy samples (another seed)",
         [py, "-m", "curate", "toy", "corpus", str(out / "heldout.parquet"), "--num-samples", str(args.heldout),
          "--seed", "1000"], log)
    _run("evaluation before training", [py, "-m", "rl", "eval", "toy", str(out / "heldout.parquet"), "--out",
                                        str(out / "eval_before.json")], log)
    _run("GRPO with verl on CPU",
         [py, "-m", "rl", "train", "--config", "configs/rl/toy_cpu.yaml",
          f"data.train_files={out / 'select' / 'grpo' / 'verl' / 'train.parquet'}",
          f"trainer.total_training_steps={args.steps}", f"trainer.save_freq={args.steps}",
          f"trainer.default_local_dir={out / 'rl' / 'checkpoints'}", "trainer.experiment_name=demo",
          "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
          *args.train_override],
         log, env={"VERL_FILE_LOGGER_PATH": str(out / "rl" / "metrics.jsonl")})
    _run("evaluation after training", [py, "-m", "rl", "eval", str(checkpoint), str(out / "heldout.parquet"),
                                       "--out", str(out / "eval_after.json")], log)
    summary = _summary(out, args.steps, log)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
