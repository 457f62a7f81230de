"""Skywork R1V2's hybrid MPO → GRPO on the toy world: held-out accuracy before and after each stage.

Per seed, on the same training corpus (64 toy samples, seed 11) and held-out corpus (100, seed 12, never
trained on), starting from ``toy-study`` (the partly competent toy model every GRPO study starts from):

- **mpo**: ``python -m rl mpo --config configs/rl/toy_mpo.yaml`` (pairs sampled and graded, TRL's DPO
  trainer with the MPO loss mix); the seed sets the pair sampling (``pairs.seed``) and TRL's seed;
- **mpo_grpo**: ``python -m rl train --config configs/rl/toy_mpo_grpo.yaml`` from the MPO model (verl's
  GRPO with the DAPO filter, replay and the curriculum), a fixed number of steps;
- **grpo**: the control: the same command, steps and seed from ``toy-study`` itself, so that what MPO
  adds is told apart from what GRPO does on its own.

Each model is evaluated greedily with ``python -m rl eval`` (the base model once: greedy is deterministic).
Printed: per stage, the held-out accuracy's mean ± 95% t-interval over seeds and the changes paired by
seed (each stage vs the base, MPO → GRPO vs GRPO alone and vs MPO alone); MPO's pair counts and losses;
GRPO's rewards. Resumable: a stage whose commands finished before (``<work>/seed<s>/<stage>/stage.json``)
is not rerun; when MPO reruns, the GRPO that starts from it reruns too. Raw numbers:
``benchmarks/results/mpo.json``.

    .venv/bin/python benchmarks/bench_mpo.py             # 3 seeds, GRPO 12 steps
    .venv/bin/python benchmarks/bench_mpo.py --quick     # 1 seed, 32 training samples, GRPO 2 steps
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, table, toy_corpus, write_results  # noqa: E402

MPO_RECIPE = ROOT / "configs" / "rl" / "toy_mpo.yaml"
GRPO_RECIPE = ROOT / "configs" / "rl" / "toy_mpo_grpo.yaml"
BASE_MODEL = "toy-study"  # toy_mpo.yaml's model: the control's GRPO starts from it too
STAGES = ("base", "mpo", "mpo_grpo", "grpo")
# (stage, control) pairs compared seed by seed.
COMPARISONS = (
    ("mpo", "base"),
    ("mpo_grpo", "base"),
    ("grpo", "base"),
    ("mpo_grpo", "grpo"),
    ("mpo_grpo", "mpo"),
)
EVAL_ARGS = ["--max-tokens", "64", "--batch-size", "64"]  # toy answers; as the toy studies evaluate


def verl_copy(canonical: Path) -> Path:
    """``canonical`` as verl RL parquet (``<stem>_verl.parquet``) with the default system prompt: what
    verl trains on; MPO's pairs and ``rl eval`` read the same prompt column, so every stage sees the very
    prompt the policy is trained with."""
    import pyarrow.parquet as pq

    from curate.config import PromptConfig
    from curate.io import write_verl_parquet

    out = canonical.with_name(f"{canonical.stem}_verl.parquet")
    if not out.exists():
        write_verl_parquet(pq.read_table(canonical), out, prompt=PromptConfig())
    return out


def run_stage(
    directory: Path, commands: dict[str, list[str]], env: Optional[dict[str, str]] = None, redo: bool = False
) -> tuple[dict[str, Any], bool]:
    """Run ``commands`` (name → argv, in order; output to ``<directory>/<name>.log``) unless
    ``<directory>/stage.json`` records the same commands as finished and ``redo`` is false. The directory
    is emptied first, so nothing of an interrupted attempt is read. Returns (the marker, whether it ran)."""
    marker = directory / "stage.json"
    if not redo and marker.is_file():
        done = json.loads(marker.read_text())
        if done["commands"] == commands:
            return done, False
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    seconds = {}
    for name, argv in commands.items():
        print(f"  {directory.name}.{name}: {' '.join(argv[1:])}", flush=True)
        log = directory / f"{name}.log"
        started = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.run(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            ).returncode
        seconds[name] = round(time.monotonic() - started, 1)
        if rc != 0:
            raise RuntimeError(f"{directory.name}.{name} failed (exit {rc}):\n{log.read_text()[-3000:]}")
        print(f"  {directory.name}.{name}: {seconds[name]:.0f} s", flush=True)
    done = {"commands": commands, "seconds": seconds}
    marker.write_text(json.dumps(done, indent=1) + "\n")
    return done, True


def _eval(model: str | Path, heldout: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "rl", "eval", str(model), str(heldout), "--out", str(out), *EVAL_ARGS]


def grpo_commands(
    directory: Path, model: str | Path, train: Path, heldout: Path, seed: int, steps: int
) -> dict[str, list[str]]:
    """GRPO (toy_mpo_grpo.yaml, ``steps`` steps, ``seed``) from ``model``, then the evaluation of its
    last checkpoint (``global_step_<steps>``: verl saves only the last one, rl.study's settings)."""
    from rl.study.plan import replicate_overrides

    checkpoints = directory / "checkpoints"
    train_command = [
        sys.executable,
        "-m",
        "rl",
        "train",
        "--config",
        str(GRPO_RECIPE),
        f"data.train_files={train}",
        f"actor_rollout_ref.model.path={model}",
        f"trainer.default_local_dir={checkpoints}",
        f"trainer.experiment_name=bench-mpo-{directory.name}-s{seed}",
        *replicate_overrides(seed, steps),
    ]
    return {
        "train": train_command,
        "eval": _eval(checkpoints / f"global_step_{steps}", heldout, directory / "eval.json"),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mpo_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What ``rl mpo``'s metrics.json says about the pairs and the training. TRL logs each step's batch
    of a few pairs, so single steps are noisy: the first and second half of the run are averaged."""
    steps = metrics["steps"]
    half = max(1, len(steps) // 2)
    first, second = steps[:half], steps[half:] or steps
    pairs = metrics["pairs"]
    return {
        "prompts": pairs["prompts"],
        "prompts_with_pairs": pairs["counts"].get("kept", 0),
        "pairs": pairs["pairs"],
        "verdicts": pairs["counts"],
        "sampled_correct_rate": pairs["correct_responses"] / pairs["responses"],
        "steps": len(steps),
        "loss_first_half": _mean([s["loss"] for s in first]),
        "loss_second_half": _mean([s["loss"] for s in second]),
        # How often the policy's implicit reward ranks the chosen response above the rejected one, and by
        # how much (β · the log-ratio difference), late in the run.
        "preference_accuracy_second_half": _mean([s["rewards/accuracies"] for s in second]),
        "reward_margin_second_half": _mean([s["rewards/margins"] for s in second]),
        "train_seconds": metrics["seconds"],
    }


def grpo_summary(metrics_file: Path) -> dict[str, Any]:
    """GRPO's reward on the training prompts (``critic/score/mean``: accuracy + format; per step and the
    mean of the first and last quarter of the steps) and the share of generated groups with a learning
    signal, from verl's file logger."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [r["data"] for r in sorted(rows, key=lambda r: r["step"])]
    rewards = [s["critic/score/mean"] for s in steps]
    quarter = max(1, len(steps) // 4)
    ratios = [s.get("signal/effective_ratio_generated") for s in steps]
    ratios = [r for r in ratios if r is not None and not math.isnan(r)]
    return {
        "steps": len(steps),
        "reward_per_step": rewards,
        "reward_first_quarter": _mean(rewards[:quarter]),
        "reward_last_quarter": _mean(rewards[-quarter:]),
        "effective_ratio_generated": _mean(ratios) if ratios else None,
        "responses_generated": sum(s.get("signal/responses_generated", 0) for s in steps),
    }


def _accuracy(eval_json: Path) -> tuple[float, dict[str, float]]:
    summary = json.loads(eval_json.read_text())["summary"]
    return summary["overall"]["accuracy"], {t: s["accuracy"] for t, s in summary["per_task"].items()}


def changes(base_json: Path, eval_json: Path) -> dict[str, int]:
    """How far a model moved from the base on the held-out prompts: greedy responses that differ, and
    answers that became right or wrong. An unchanged accuracy with many flips both ways is a model that
    moved without a net gain; with few changed responses, one that barely moved."""
    base = {s["id"]: s for s in json.loads(base_json.read_text())["samples"]}
    after = json.loads(eval_json.read_text())["samples"]
    return {
        "responses_changed": sum(s["response"] != base[s["id"]]["response"] for s in after),
        "became_correct": sum(s["correct"] and not base[s["id"]]["correct"] for s in after),
        "became_wrong": sum(base[s["id"]]["correct"] and not s["correct"] for s in after),
    }


def run_seed(work: Path, train: Path, heldout: Path, seed: int, steps: int) -> dict[str, Any]:
    """The three trained stages of one seed; their accuracies, MPO's and GRPO's training summaries."""
    root = work / f"seed{seed}"
    mpo_dir = root / "mpo"
    mpo, mpo_ran = run_stage(
        mpo_dir,
        {
            "train": [
                sys.executable,
                "-m",
                "rl",
                "mpo",
                "--config",
                str(MPO_RECIPE),
                f"model={BASE_MODEL}",
                f"data={train}",
                f"output={mpo_dir / 'out'}",
                f"pairs.seed={seed}",
                f"training.seed={seed}",
            ],
            "eval": _eval(mpo_dir / "out" / "model", heldout, mpo_dir / "eval.json"),
        },
    )
    result = {"seconds": {"mpo": mpo["seconds"]}, "accuracy": {}, "per_task": {}, "vs_base": {}}
    result["mpo"] = mpo_summary(json.loads((mpo_dir / "out" / "metrics.json").read_text()))
    starts = {"mpo_grpo": (mpo_dir / "out" / "model", mpo_ran), "grpo": (BASE_MODEL, False)}
    for stage, (model, redo) in starts.items():
        directory = root / stage
        done, _ = run_stage(
            directory,
            grpo_commands(directory, model, train, heldout, seed, steps),
            env={"VERL_FILE_LOGGER_PATH": str(directory / "metrics.jsonl")},
            redo=redo,
        )
        result["seconds"][stage] = done["seconds"]
        result[stage] = grpo_summary(directory / "metrics.jsonl")
    for stage in ("mpo", "mpo_grpo", "grpo"):
        result["accuracy"][stage], result["per_task"][stage] = _accuracy(root / stage / "eval.json")
        result["vs_base"][stage] = changes(work / "base" / "eval.json", root / stage / "eval.json")
    return result


def _cell(values: list[float]) -> str:
    from rl.study.stats import interval

    i = interval(values)
    return f"{i.mean:.3f}" if i.half is None else f"{i.mean:.3f} ± {i.half:.3f}"


def main() -> int:
    from rl.study.stats import compare, interval

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 32 training samples, GRPO 2 steps")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "mpo"), help="work directory")
    args = parser.parse_args()
    seeds, train_n, heldout_n, steps = ([0], 32, 20, 2) if args.quick else ([0, 1, 2], 64, 100, 12)
    work = Path(args.out) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    toy_corpus(work / "train.parquet", train_n, 11)
    toy_corpus(work / "heldout.parquet", heldout_n, 12)
    train, heldout = verl_copy(work / "train.parquet"), verl_copy(work / "heldout.parquet")
    base, _ = run_stage(work / "base", {"eval": _eval(BASE_MODEL, heldout, work / "base" / "eval.json")})
    base_accuracy, base_per_task = _accuracy(work / "base" / "eval.json")
    runs = {}
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        runs[seed] = run_seed(work, train, heldout, seed, steps)
        runs[seed]["accuracy"]["base"] = base_accuracy
        runs[seed]["per_task"]["base"] = base_per_task

    by_stage = {stage: {s: runs[s]["accuracy"][stage] for s in seeds} for stage in STAGES}
    stages = {}
    for stage in STAGES:
        values = [by_stage[stage][s] for s in seeds]
        tasks = runs[seeds[0]]["per_task"][stage]
        stages[stage] = {
            "accuracy": values,
            "accuracy_interval": interval(values).to_dict(),
            "per_task_mean": {
                t: sum(runs[s]["per_task"][stage][t] for s in seeds) / len(seeds) for t in tasks
            },
        }
    comparisons = [compare(arm, control, by_stage).to_dict() for arm, control in COMPARISONS]
    result = {
        "machine": machine(),
        "seeds": seeds,
        "train_samples": train_n,
        "heldout_samples": heldout_n,
        "grpo_steps": steps,
        "base_model": BASE_MODEL,
        "recipes": {"mpo": str(MPO_RECIPE.relative_to(ROOT)), "grpo": str(GRPO_RECIPE.relative_to(ROOT))},
        "eval_args": EVAL_ARGS,
        "stages": stages,
        "comparisons": comparisons,
        "runs": runs,
        "base_eval_seconds": base["seconds"],
        # Every command's time as its stage recorded it, so a resumed run still reports the whole cost.
        "command_seconds_total": round(
            sum(base["seconds"].values())
            + sum(t for r in runs.values() for stage in r["seconds"].values() for t in stage.values()),
            1,
        ),
    }
    path = write_results("mpo" + ("_quick" if args.quick else ""), result)

    def moved(stage: str) -> str:
        if stage == "base":
            return ""
        counts = [runs[s]["vs_base"][stage] for s in seeds]
        return " / ".join(
            f"{c['responses_changed']} (+{c['became_correct']} −{c['became_wrong']})" for c in counts
        )

    rows = [
        [
            stage,
            _cell(stages[stage]["accuracy"]),
            " / ".join(f"{v:.2f}" for v in stages[stage]["accuracy"]),
            moved(stage),
        ]
        for stage in STAGES
    ]
    print(f"\nheld-out accuracy ({len(seeds)} seed(s), {heldout_n} held-out samples, greedy); {path}")
    print(
        table(
            ["stage", "held-out acc (mean ± 95% t)", "per seed", "responses changed vs base (+right −wrong)"],
            rows,
        )
    )
    paired = []
    for c in comparisons:
        d = c["difference"]
        span = f"{d['mean']:+.3f}" if d["half"] is None else f"{d['mean']:+.3f} ± {d['half']:.3f}"
        paired.append([f"{c['arm']} − {c['control']}", span, c["verdict"]])
    print(table(["paired by seed", "change", "verdict"], paired))
    mpo_rows = [
        [
            s,
            runs[s]["mpo"]["prompts_with_pairs"],
            runs[s]["mpo"]["pairs"],
            runs[s]["mpo"]["steps"],
            f"{runs[s]['mpo']['loss_first_half']:.3f} → {runs[s]['mpo']['loss_second_half']:.3f}",
            f"{runs[s]['mpo']['preference_accuracy_second_half']:.2f}",
            f"{runs[s]['mpo']['reward_margin_second_half']:.3f}",
            *(
                f"{runs[s][g]['reward_first_quarter']:.2f} → {runs[s][g]['reward_last_quarter']:.2f}"
                for g in ("mpo_grpo", "grpo")
            ),
        ]
        for s in seeds
    ]
    print(
        table(
            [
                "seed",
                "MPO prompts w/ pairs",
                "pairs",
                "MPO steps",
                "MPO loss (1st → 2nd half)",
                "MPO pref. acc. (2nd half)",
                "MPO margin (2nd half)",
                "mpo_grpo train reward (1st → last quarter)",
                "grpo train reward",
            ],
            mpo_rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
