"""GRPO signal keeping on the toy world: what verl's DAPO filter, selective replay and the pass-rate
curriculum (rl/signal/) change in the batch, what they cost, and whether held-out accuracy moves.

Runs (or continues: the study is resumable) ``python -m rl study --config configs/study/toy_signal.yaml``
— one selection (the full set), four ways to train it, several seeds — then reads every arm's verl
metrics (``signal/*``, ``curriculum/*``, ``timing_s/step``) and evaluation, and prints one table with
each arm's mean ± 95% t-interval over seeds. Raw numbers: ``benchmarks/results/signal.json``.

    .venv/bin/python benchmarks/bench_signal.py              # the study's 3 seeds × 12 steps
    .venv/bin/python benchmarks/bench_signal.py --quick      # 1 seed × 6 steps
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, table, write_results  # noqa: E402

STUDY = ROOT / "configs" / "study" / "toy_signal.yaml"
# What the table shows per arm (key in run_summary, header, scale for display).
COLUMNS = (
    ("effective_ratio", "eff. ratio trained %", 100),
    ("effective_ratio_generated", "eff. ratio generated %", 100),
    ("responses_per_step", "responses / step", 1),
    ("responses_per_signal_group", "responses / trained signal group", 1),
    ("replayed_per_step", "replayed groups / step", 1),
    ("replay_age_mean", "replay age (steps)", 1),
    ("in_band_first", "curriculum in band, step 1 %", 100),
    ("in_band_last", "curriculum in band, last %", 100),
    ("step_seconds", "s / step", 1),
    ("heldout_accuracy", "held-out acc %", 100),
)


def _present(values: list[Optional[float]]) -> list[float]:
    """The values logged (verl's file logger writes nan as null)."""
    return [v for v in values if v is not None and not math.isnan(v)]


def _nan_mean(values: list[Optional[float]]) -> float:
    kept = _present(values)
    return sum(kept) / len(kept) if kept else math.nan


def run_summary(steps: list[dict[str, Any]], batch: int, accuracy: Optional[float]) -> dict[str, float]:
    """One arm × seed, from verl's per-step metrics (``batch``: prompts trained per step)."""
    responses = sum(s["signal/responses_generated"] for s in steps)
    trained_signal = sum(s["signal/effective_ratio"] * batch for s in steps)
    return {
        "steps": len(steps),
        "effective_ratio": _nan_mean([s["signal/effective_ratio"] for s in steps]),
        "effective_ratio_generated": _nan_mean([s["signal/effective_ratio_generated"] for s in steps]),
        "responses_per_step": responses / len(steps),
        "responses_per_signal_group": responses / trained_signal if trained_signal else math.nan,
        "replayed_per_step": _nan_mean([s.get("signal/replay/groups", 0.0) for s in steps]),
        "replay_age_mean": _nan_mean([s.get("signal/replay/age_mean") for s in steps]),
        "replay_age_max": max(_present([s.get("signal/replay/age_max") for s in steps]), default=math.nan),
        "in_band_first": steps[0].get("curriculum/in_band_share", math.nan),
        "in_band_last": steps[-1].get("curriculum/in_band_share", math.nan),
        "observed_pass_rate_last": steps[-1].get("curriculum/pass_rate_observed_mean", math.nan),
        "reward_mean": _nan_mean([s["critic/score/mean"] for s in steps]),
        "step_seconds": _nan_mean([s["timing_s/step"] for s in steps[1:]]),  # step 1 warms up
        "heldout_accuracy": math.nan if accuracy is None else accuracy,
    }


def _batch_size(step: Any) -> int:
    """data.train_batch_size as verl will see it for this arm's training command."""
    from rl.train import plan_training, verl_config

    command = step.command(False)  # python -m rl train --config RECIPE overrides...
    return int(verl_config(plan_training(command[5], command[6:])).data.train_batch_size)


def collect(quick: bool) -> dict[str, Any]:
    from rl.study import load_study
    from rl.study.plan import StudyLayout, build_steps
    from rl.study.stats import interval

    cfg = load_study(str(STUDY), [], quick)
    layout = StudyLayout(Path(cfg.output).resolve())
    trains = {(s.arm, s.seed): s for s in build_steps(cfg, layout) if s.kind == "train"}
    arms: dict[str, Any] = {}
    for name in cfg.chosen_arms():
        runs = {}
        for seed in cfg.seeds:
            metrics = layout.metrics(name, seed)
            if not metrics.is_file():
                continue
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            steps = [r["data"] for r in sorted(rows, key=lambda r: r["step"])]
            evaluation = layout.eval(name, seed)
            accuracy = (
                json.loads(evaluation.read_text())["summary"]["overall"]["accuracy"]
                if evaluation.is_file()
                else None
            )
            runs[seed] = run_summary(steps, _batch_size(trains[(name, seed)]), accuracy)
        summary = {}
        for key, _, _ in COLUMNS:
            values = [r[key] for r in runs.values() if not math.isnan(r[key])]
            summary[key] = vars(interval(values)) if values else None
        arms[name] = {"seeds": sorted(runs), "runs": runs, "summary": summary}
    base = layout.base_eval
    base_accuracy = json.loads(base.read_text())["summary"]["overall"]["accuracy"] if base.is_file() else None
    report = layout.report / "study.json"
    comparisons = json.loads(report.read_text()).get("comparisons") if report.is_file() else None
    return {
        "study": str(STUDY.relative_to(ROOT)),
        "quick": quick,
        "seeds": cfg.seeds,
        "steps": cfg.train.steps,
        "base_accuracy": base_accuracy,
        "arms": arms,
        "comparisons": comparisons,
    }


def _cell(entry: Optional[dict], scale: float) -> str:
    if entry is None:
        return "—"
    mean = entry["mean"] * scale
    digits = 0 if scale == 1 and abs(mean) >= 10 else 1
    text = f"{mean:.{digits}f}"
    return text if entry["half"] is None else f"{text} ± {entry['half'] * scale:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the study's --quick (1 seed × 6 steps)")
    parser.add_argument("--no-run", action="store_true", help="only summarise what the study holds")
    args = parser.parse_args()
    if not args.no_run:
        command = [
            sys.executable,
            "-m",
            "rl",
            "study",
            "--config",
            str(STUDY),
            *(["--quick"] if args.quick else []),
        ]
        subprocess.run(command, cwd=ROOT, check=True)
    result = collect(args.quick)
    result["machine"] = machine()
    path = write_results("signal" + ("_quick" if args.quick else ""), result)
    rows = [
        [name, len(a["seeds"]), *(_cell(a["summary"][k], s) for k, _, s in COLUMNS)]
        for name, a in result["arms"].items()
    ]
    print(table(["arm", "seeds", *(h for _, h, _ in COLUMNS)], rows))
    print(f"base model held-out accuracy: {result['base_accuracy']}; raw numbers: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
