"""The study's results: what each arm and seed produced, gathered, compared and written down.

Read from what the commands wrote, never from the runner's memory (so a report can be rebuilt from
a finished directory): ``rl eval``'s JSON (held-out accuracy per task), verl's file-logger metrics
(reward per step), verl's rollout dumps (``trainer.rollout_data_dir``: every response with its group
and score, hence the effective-sample ratio — the share of GRPO groups whose rewards differ, the
only groups with a non-zero advantage — and the generations training spent), the selections'
manifests (subset sizes) and the curation run record (generations curation spent).

Written to ``<study>/report``: ``study.json`` (everything, for machines), ``study.md`` (tables and the
verdict) and PNG plots.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from curate.config import ConfigError
from curate.toy.cache import METADATA_FILE
from rl.study.config import StudyConfig
from rl.study.plan import StudyLayout
from rl.study.stats import compare, interval, verdict_sentence

__all__ = ["ArmSeedResult", "base_model_identity", "collect", "effective_ratio_per_step", "write_report"]

SCORE_KEY = "critic/score/mean"  # verl's mean sequence score (our reward: accuracy + format) per step
# rl.signal.buffer's per-step counts: groups trained with a signal, responses generated (filtered ones too)
RATIO_KEY, RESPONSES_KEY = "signal/effective_ratio", "signal/responses_generated"
SAMPLED = "sampled_accuracy"  # rl eval --sampled's avg@n


@dataclass
class ArmSeedResult:
    arm: str
    seed: int
    accuracy: Optional[float] = None
    per_task: dict[str, float] = field(default_factory=dict)
    # avg@n of ``eval.sampled`` responses per row (None when the study samples none)
    sampled_accuracy: Optional[float] = None
    sampled_per_task: dict[str, float] = field(default_factory=dict)
    sampled_setting: Optional[tuple[int, float]] = None  # (n, temperature) the evaluation recorded
    train_rows: Optional[int] = None
    reward_per_step: list[float] = field(default_factory=list)
    effective_ratio_per_step: list[float] = field(default_factory=list)
    generations: int = 0  # responses generated in training (rl.signal metrics, else the rollout dumps)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _accuracies(evaluation: dict, key: str = "accuracy") -> tuple[Optional[float], dict[str, float]]:
    """(overall, per task) of ``rl eval``'s ``key``: ``accuracy`` (greedy) or ``sampled_accuracy``."""
    summary = evaluation["summary"]
    per_task = {t: s[key] for t, s in summary["per_task"].items() if s.get(key) is not None}
    return summary["overall"].get(key), per_task


def _sampled_setting(evaluation: dict) -> Optional[tuple[int, float]]:
    """(n, temperature) of ``rl eval --sampled`` as the evaluation recorded it; None if it sampled none."""
    sampled = evaluation.get("sampled")
    return (int(sampled["n"]), float(sampled["temperature"])) if sampled else None


def _group(uid: str) -> str:
    """A rollout's prompt group from verl's key ``{sample}_{rollout}_{output}``."""
    parts = uid.rsplit("_", 2)
    return parts[0] if len(parts) == 3 else uid


# verl's no-op rows that make a batch divisible (trainer/ppo/padding_utils.py: ``pad{uuid hex}_{i}_0``,
# empty input and output, zero reward), e.g. after a trajectory failed: neither a group nor a generation.
_VERL_PADDING = re.compile(r"pad[0-9a-f]{32}_\d+_0")


def effective_ratio_per_step(rollouts: Path) -> tuple[list[float], int]:
    """(share of groups with differing scores, per step in order; responses counted) from verl's dumps,
    without verl's padding rows."""
    ratios, responses = [], 0
    steps = sorted(rollouts.glob("*.jsonl"), key=lambda p: int(p.stem)) if rollouts.is_dir() else []
    for path in steps:
        groups: dict[str, set[float]] = defaultdict(set)
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if _VERL_PADDING.fullmatch(str(row.get("uid", ""))):
                continue
            groups[_group(str(row.get("uid") or row["input"]))].add(round(float(row["score"]), 9))
            responses += 1
        if groups:
            ratios.append(sum(len(scores) > 1 for scores in groups.values()) / len(groups))
    return ratios, responses


def _series(metrics: Path) -> dict[str, list[float]]:
    """Every metric of verl's file logger as a list over steps, in step order."""
    if not metrics.is_file():
        return {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r.get("step", 0))
    series: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for key, value in row.get("data", row).items():
            if isinstance(value, (int, float)):
                series[key].append(float(value))
    return series


def collect(cfg: StudyConfig, layout: StudyLayout) -> list[ArmSeedResult]:
    results = []
    for name, arm in cfg.chosen_arms().items():
        for seed in cfg.seeds:
            result = ArmSeedResult(name, seed)
            evaluation = _read_json(layout.eval(name, seed))
            if evaluation is not None:
                result.accuracy, result.per_task = _accuracies(evaluation)
                result.sampled_accuracy, result.sampled_per_task = _accuracies(evaluation, SAMPLED)
                result.sampled_setting = _sampled_setting(evaluation)
            manifest = _read_json(layout.selection(name, seed) / "manifest.json")
            if manifest is not None and arm.subset in manifest["subsets"]:
                result.train_rows = manifest["subsets"][arm.subset].get("train_rows")
            series = _series(layout.metrics(name, seed))
            result.reward_per_step = series.get(SCORE_KEY, [])
            result.effective_ratio_per_step, result.generations = effective_ratio_per_step(
                layout.rollouts(name, seed))
            if RATIO_KEY in series:  # rl.signal's count: also right when groups were filtered or replayed
                result.effective_ratio_per_step = series[RATIO_KEY]
                result.generations = int(sum(series.get(RESPONSES_KEY, [])))
            results.append(result)
    return results


def base_model_identity(evaluation: dict) -> Optional[dict[str, Any]]:
    """Which weights the base evaluation read: its model path and, for a toy model, a digest of its
    weights and how its training ended. A toy model is trained on the machine that asks for it, and
    another machine's CPU can train other weights under the same cache key: the digest tells whether a
    study's base is the one a report describes."""
    path = evaluation.get("model_path")
    if not path:
        return None
    identity: dict[str, Any] = {"model": evaluation.get("checkpoint"), "path": path}
    directory = Path(path)
    metadata = _read_json(directory / METADATA_FILE)
    if metadata is not None:
        digest = hashlib.sha256()
        for weights in sorted(directory.glob("*.safetensors")):
            digest.update(weights.read_bytes())
        identity["weights_sha256"] = digest.hexdigest()
        identity["toy_training"] = metadata.get("report")
    return identity


def _curation_cost(cfg: StudyConfig) -> dict[str, Any]:
    run = _read_json(Path(cfg.run) / "run.json") or {}
    summary = run.get("summary", {})
    cmab = (run.get("config") or {}).get("cmab", {}) if isinstance(run.get("config"), dict) else {}
    return {
        "rows": summary.get("rows_in"),
        "pism_generations": summary.get("pism_generations"),
        "cmab_generations": (cmab.get("k") or 0) * (summary.get("scored") or 0) if cmab.get("enabled") else 0,
        "pism_buckets": summary.get("pism_buckets"),
        "cmab_buckets": summary.get("cmab_buckets"),
    }


def _mean_curve(curves: list[list[float]]) -> list[float]:
    length = max((len(c) for c in curves), default=0)
    at = [[c[i] for c in curves if len(c) > i] for i in range(length)]
    return [sum(values) / len(values) for values in at]


def _intervals(values: list[float]) -> Optional[dict]:
    return interval(values).to_dict() if values else None


def _mean_ratio(done: list[ArmSeedResult]) -> Optional[dict]:
    """The effective-sample ratio averaged over steps, as an interval over seeds."""
    return _intervals([sum(r.effective_ratio_per_step) / len(r.effective_ratio_per_step)
                       for r in done if r.effective_ratio_per_step])


def _comparisons(cfg: StudyConfig, by_seed: dict[str, dict[int, float]], base: Optional[float], metric: str,
                 what: str) -> tuple[list[dict], list[str]]:
    """Every arm against the control, then against the untrained base (a constant on every seed: the
    interval is the arm's own), on ``metric``; each with its verdict sentence."""
    against_control = [compare(a, cfg.control, by_seed) for a in by_seed if a != cfg.control]
    against_base = []
    if base is not None:
        with_base = {**by_seed, "base": {seed: base for seed in cfg.seeds}}
        against_base = [compare(a, "base", with_base) for a in by_seed]
    found = [c for c in against_control + against_base if c]
    return [{**c.to_dict(), "metric": metric} for c in found], [verdict_sentence(c, what) for c in found]


def summarize(cfg: StudyConfig, layout: StudyLayout, results: list[ArmSeedResult]) -> dict[str, Any]:
    """Per arm: accuracy intervals (overall, per task; greedy and sampled), curves, costs; every arm
    against the control and against the base."""
    by_arm: dict[str, list[ArmSeedResult]] = defaultdict(list)
    for r in results:
        by_arm[r.arm].append(r)
    base = _read_json(layout.base_eval)
    arms: dict[str, Any] = {}
    by_seed: dict[str, dict[int, float]] = {}
    sampled_by_seed: dict[str, dict[int, float]] = {}
    for name, rs in by_arm.items():
        done = [r for r in rs if r.accuracy is not None]
        sampled = [r for r in done if r.sampled_accuracy is not None]
        by_seed[name] = {r.seed: r.accuracy for r in done}
        sampled_by_seed[name] = {r.seed: r.sampled_accuracy for r in sampled}
        tasks = sorted({t for r in done for t in r.per_task})
        sampled_tasks = {t: [r.sampled_per_task[t] for r in sampled if t in r.sampled_per_task]
                         for t in tasks}
        arms[name] = {
            "seeds_done": [r.seed for r in done],
            "accuracy": _intervals([r.accuracy for r in done]),
            "per_task": {t: _intervals([r.per_task[t] for r in done if t in r.per_task]) for t in tasks},
            "sampled_accuracy": _intervals([r.sampled_accuracy for r in sampled]),
            "sampled_per_task": {t: _intervals(values) for t, values in sampled_tasks.items()},
            "train_rows": [r.train_rows for r in rs],
            "reward_per_step": _mean_curve([r.reward_per_step for r in done]),
            "effective_ratio_per_step": _mean_curve([r.effective_ratio_per_step for r in done]),
            "effective_ratio_mean": _mean_ratio(done),
            "training_generations": [r.generations for r in rs],
        }
    base_summary = None
    if base:
        base_summary = dict(zip(("accuracy", "per_task"), _accuracies(base)))
        base_summary["sampled_accuracy"], base_summary["sampled_per_task"] = _accuracies(base, SAMPLED)
    comparisons, verdict = _comparisons(cfg, by_seed, base_summary and base_summary["accuracy"], "accuracy",
                                        "held-out accuracy")
    # The label is what the evaluations recorded, not the config (--report may run with another one).
    settings = {r.sampled_setting for r in results if r.sampled_accuracy is not None}
    if base and base_summary[SAMPLED] is not None:
        settings.add(_sampled_setting(base))
    if len(settings) > 1:
        raise ConfigError(
            f"config keys 'eval.sampled' / 'eval.sampled_temperature': the evaluations in {layout.root} "
            f"sampled with different (n, temperature): {sorted(settings)}; run the study (not --report) "
            "with one setting: the evaluations that differ rerun")
    sampled_n, temperature = settings.pop() if settings else (0, 0.0)
    if sampled_n:
        what = f"held-out avg@{sampled_n} at temperature {temperature:g}"
        more, sentences = _comparisons(cfg, {a: v for a, v in sampled_by_seed.items() if v},
                                       base_summary and base_summary[SAMPLED], SAMPLED, what)
        comparisons += more
        verdict += sentences
    return {
        "output": str(layout.root),
        "run": cfg.run,
        "seeds": list(cfg.seeds),
        "control": cfg.control,
        "train_steps": cfg.train.steps,
        "sampled": {"n": sampled_n, "temperature": temperature} if sampled_n else None,
        "base": base_summary,
        "base_model": base_model_identity(base) if base else None,
        "heldout_rows": base["summary"]["overall"]["n"] if base else None,
        "curation": _curation_cost(cfg),
        "arms": arms,
        "comparisons": comparisons,
        "verdict": verdict,
        "runs": [r.__dict__ for r in results],
    }


def _base_model_line(identity: Optional[dict[str, Any]]) -> list[str]:
    if not identity:
        return []
    line = f"Base model: `{identity['model']}` (`{identity['path']}`"
    if identity.get("weights_sha256"):
        training = identity.get("toy_training") or {}
        line += (f"; weights sha256 `{identity['weights_sha256'][:16]}`, toy training final loss "
                 f"{training.get('final_loss')} on {training.get('threads')} thread(s)")
    return [line + ").", ""]


def _markdown(summary: dict[str, Any]) -> str:
    from rl.study.stats import Interval

    def cell(d: Optional[dict]) -> str:
        return Interval(d["mean"], d["half"], d["n"]).text() if d else "—"

    arms = summary["arms"]
    tasks = sorted({t for a in arms.values() for t in a["per_task"]})
    lines = [
        "# Selection study", "",
        f"Annotated run: `{summary['run']}`; seeds {summary['seeds']}; "
        f"GRPO steps per arm: {summary['train_steps'] or 'the recipe’s epochs'}; "
        f"held-out rows: {summary['heldout_rows']}; control: **{summary['control']}**.", "",
        *_base_model_line(summary.get("base_model")),
        "Held-out accuracy (%), mean ± 95% t-interval over seeds:", "",
        "| arm | seeds | train rows | overall | " + " | ".join(tasks) + " | effective ratio | generations |",
        "|---|---|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    if summary["base"]:
        b = summary["base"]
        lines.append("| base (no training) | — | — | " + f"{b['accuracy'] * 100:.1f} | "
                     + " | ".join(f"{b['per_task'].get(t, float('nan')) * 100:.1f}" for t in tasks)
                     + " | — | — |")
    for name, a in arms.items():
        rows = sorted({r for r in a["train_rows"] if r is not None})
        gens = [g for g in a["training_generations"] if g]
        lines.append(
            f"| {name} | {len(a['seeds_done'])} | {'/'.join(map(str, rows)) or '—'} | "
            f"{cell(a['accuracy'])} | "
            + " | ".join(cell(a["per_task"].get(t)) for t in tasks)
            + f" | {cell(a['effective_ratio_mean'])} | {round(sum(gens) / len(gens)) if gens else '—'} |"
        )
    sampled = summary.get("sampled")
    if sampled:
        lines += ["", f"Held-out avg@{sampled['n']} (%): the mean accuracy of {sampled['n']} responses per "
                  f"row sampled at temperature {sampled['temperature']:g}, mean ± 95% t-interval over seeds:",
                  "",
                  "| arm | overall | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        b = summary["base"]
        if b and b.get(SAMPLED) is not None:
            lines.append(f"| base (no training) | {b[SAMPLED] * 100:.1f} | "
                         + " | ".join(f"{b['sampled_per_task'].get(t, math.nan) * 100:.1f}" for t in tasks)
                         + " |")
        for name, a in arms.items():
            lines.append(f"| {name} | {cell(a[SAMPLED])} | "
                         + " | ".join(cell(a["sampled_per_task"].get(t)) for t in tasks) + " |")
    c = summary["curation"]
    lines += ["", f"Curation spent {c['pism_generations']} PISM and {c['cmab_generations']} CMAB "
              f"generations on {c['rows']} rows (buckets PISM {c['pism_buckets']}, "
              f"CMAB {c['cmab_buckets']}). Training "
              "generations are per arm and seed; the effective ratio is the share of GRPO groups whose "
              "rewards differ (non-zero advantage), averaged over steps.", "", "## Verdict", ""]
    lines += [f"- {v}" for v in summary["verdict"]] or ["- (no arm could be compared with the control yet)"]
    lines += ["", "![accuracy](accuracy.png)", "", "![training](training.png)", ""]
    return "\n".join(lines)


def _plots(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sampled = summary.get("sampled")
    metrics = [("accuracy", "held-out accuracy, greedy (%)")]
    if sampled:
        metrics.append((SAMPLED, f"held-out avg@{sampled['n']}, T={sampled['temperature']:g} (%)"))
    arms = {n: a for n, a in summary["arms"].items() if a["accuracy"]}
    width = max(3.0, 1.2 + 1.1 * len(arms))
    fig, axes = plt.subplots(1, len(metrics), figsize=(len(metrics) * width, 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        names = [n for n in arms if arms[n].get(key)]
        means = [arms[n][key]["mean"] * 100 for n in names]
        errors = [(arms[n][key]["half"] or 0) * 100 for n in names]
        colors = ["#888" if n == summary["control"] else "#3a6" for n in names]
        # the seed count under each bar: one seed has no interval, which is not a zero-width one
        seeds = [arms[n][key]["n"] for n in names]
        labels = [f"{n}\n{k} seed{'s' * (k != 1)}" for n, k in zip(names, seeds)]
        bars = ax.bar(labels, means, yerr=errors, capsize=4, color=colors)
        for bar, k in zip(bars, seeds):
            if k == 1:
                bar.set_hatch("//")
        if summary["base"] and summary["base"].get(key) is not None:
            ax.axhline(summary["base"][key] * 100, color="k", linestyle=":", label="base model")
            ax.legend(loc="lower right")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("mean ± 95% interval over seeds")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, a in summary["arms"].items():
        if a["reward_per_step"]:
            left.plot(range(1, len(a["reward_per_step"]) + 1), a["reward_per_step"], label=name)
        if a["effective_ratio_per_step"]:
            ratios = a["effective_ratio_per_step"]
            right.plot(range(1, len(ratios) + 1), ratios, label=name)
    left.set(xlabel="GRPO step", ylabel="mean reward (seeds averaged)")
    right.set(xlabel="GRPO step", ylabel="effective-sample ratio", ylim=(0, 1.05))
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)


def write_report(cfg: StudyConfig, layout: StudyLayout) -> dict[str, Any]:
    summary = summarize(cfg, layout, collect(cfg, layout))
    layout.report.mkdir(parents=True, exist_ok=True)
    (layout.report / "study.json").write_text(json.dumps(summary, indent=2, default=str))
    (layout.report / "study.md").write_text(_markdown(summary))
    _plots(summary, layout.report)
    return summary
