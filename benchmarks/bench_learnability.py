"""How far can the selection study's budget move the toy world? Labelled supervision vs the study's GRPO.

The toy selection study (``configs/study/toy.yaml``) trains every arm 20 GRPO steps of 32 prompts and
finds no arm beyond the seed noise of the untrained base. That is a statement about selection only if
the budget can move the base at all. This benchmark measures the ceiling the same budget reaches with
the strongest signal there is: the ground-truth answer of every prompt.

From the study's base model, per seed: AdamW with the study's GRPO recipe's learning rate and prompts
per step, and verl's optimizer defaults (betas 0.9/0.999, weight decay 0.01, gradient clip 1.0), on
fresh labelled toy rows (the toy trainer's loss on the response's tokens), every row seen once; the
model after each of ``--steps`` updates is evaluated by the study's own ``rl eval`` command on its
held-out split. Printed beside the study's report (the base and every GRPO arm): held-out accuracy,
mean ± 95% t-interval over seeds, per task. Raw numbers: ``benchmarks/results/learnability.json``.

    .venv/bin/python -m rl study --config configs/study/toy.yaml --report    # a finished study first
    .venv/bin/python benchmarks/bench_learnability.py                         # 3 seeds: ~15 min
    .venv/bin/python benchmarks/bench_learnability.py output=/tmp/sq2 --quick  # another study dir, 1 seed
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, table, write_results  # noqa: E402

# Corpus seeds of the labelled rows (this + the run's seed): neither the base's training corpus, the
# demo's, nor the study's.
CORPUS_SEED = 424_242


def recipe_settings(recipe: str) -> dict[str, float]:
    """The GRPO recipe's learning rate and prompts per step: the supervised runs use the same."""
    from rl.train import load_recipe

    _, verl = load_recipe(recipe)
    return {
        "lr": float(verl["actor_rollout_ref"]["actor"]["optim"]["lr"]),
        "batch_size": int(verl["data"]["train_batch_size"]),
    }


def supervise(
    base_model: str, seed: int, steps: list[int], lr: float, batch_size: int, out: Path
) -> dict[int, Path]:
    """Continue the toy model ``base_model`` on labelled rows; save it after each of ``steps`` updates."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from curate.modeling import load_processor
    from curate.toy.cache import toy_model_path
    from curate.toy.corpus import TASKS, iter_samples
    from curate.toy.model import save_toy_model
    from curate.toy.train import _batch, _loss, encode_examples  # the toy trainer's own loss

    torch.manual_seed(seed)
    base = toy_model_path(preset=base_model)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    processor = load_processor(str(base))
    samples = list(iter_samples(max(steps) * batch_size, CORPUS_SEED + seed, TASKS))
    data = encode_examples(processor, model, samples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    saved = {}
    model.train()
    for step in range(1, max(steps) + 1):  # every row once, in the corpus's (already random) order
        batch = _batch(data, torch.arange((step - 1) * batch_size, step * batch_size))
        loss = _loss(model, data, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step in steps:
            model.eval()
            saved[step] = save_toy_model(model, processor, out / f"step{step}")
            model.train()
    return saved


def evaluate(command: list[str], out: Path) -> dict[str, Any]:
    """Run the study's ``rl eval`` command (``python -m rl eval ...``, with this interpreter; output in
    ``out``'s ``.log``) unless ``out`` exists; its greedy held-out accuracy."""
    if not out.is_file():
        with out.with_suffix(".log").open("w") as log:
            rc = subprocess.run(
                [sys.executable, *command[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        if rc.returncode != 0:
            raise SystemExit(f"rl eval failed (exit {rc.returncode}); see {out.with_suffix('.log')}")
    summary = json.loads(out.read_text())["summary"]
    return {
        "accuracy": summary["overall"]["accuracy"],
        "per_task": {t: s["accuracy"] for t, s in summary["per_task"].items()},
    }


def _row(name: str, runs: list[dict[str, Any]], tasks: list[str]) -> list[Any]:
    from rl.study.stats import interval

    cells = [interval([r["accuracy"] for r in runs]).text()]
    cells += [interval([r["per_task"][t] for r in runs]).text() for t in tasks]
    return [name, len(runs), *cells]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default=str(ROOT / "configs" / "study" / "toy.yaml"),
        help="the study's config; its output must hold the finished study (--report)",
    )
    parser.add_argument("overrides", nargs="*", help="the study's overrides, e.g. output=DIR")
    parser.add_argument("--steps", default="20,60,150", help="supervised updates to evaluate after")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="/tmp/hardmode-bench-learnability")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 steps")
    args = parser.parse_args(argv)
    steps = [20] if args.quick else sorted(int(s) for s in args.steps.split(","))
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]

    from curate.toy.presets import is_toy_model
    from rl.study import load_study
    from rl.study.plan import StudyLayout, _eval_command
    from rl.study.stats import Interval

    cfg = load_study(args.config, args.overrides)
    layout = StudyLayout(Path(cfg.output))
    report_path = layout.report / "study.json"
    if not report_path.is_file():
        parser.error(
            f"{cfg.output} holds no study report ({report_path}); run `python -m rl study --config "
            f"{args.config}` and then the same command with --report first"
        )
    if not is_toy_model(cfg.base_model):
        parser.error(f"base_model {cfg.base_model!r} is not a toy model: the labelled rows are toy rows")
    report = json.loads(report_path.read_text())
    settings = recipe_settings(cfg.train.recipe)
    work = Path(args.work)

    runs: dict[int, list[dict[str, Any]]] = {step: [] for step in steps}
    started = time.monotonic()
    for seed in seeds:
        directory = work / f"seed{seed}"
        evals = {step: directory / f"eval{step}.json" for step in steps}
        # Resumable: models are trained again only when one still to be evaluated is missing.
        if any(
            not evals[s].is_file() and not (directory / f"step{s}" / "config.json").is_file() for s in steps
        ):
            supervise(cfg.base_model, seed, steps, settings["lr"], settings["batch_size"], directory)
        for step in steps:
            runs[step].append(
                evaluate(_eval_command(cfg, layout, str(directory / f"step{step}"), evals[step]), evals[step])
            )
        print(
            f"seed {seed}: " + ", ".join(f"{s} steps {runs[s][-1]['accuracy']:.3f}" for s in steps),
            flush=True,
        )

    tasks = sorted(report["base"]["per_task"])
    rows = [
        [
            "base (no training)",
            "-",
            f"{100 * report['base']['accuracy']:.1f}",
            *(f"{100 * report['base']['per_task'][t]:.1f}" for t in tasks),
        ]
    ]
    for arm, result in report["arms"].items():
        rows.append(
            [
                f"GRPO {arm}, {report['train_steps']} steps",
                len(result["seeds_done"]),
                Interval(**{k: result["accuracy"][k] for k in ("mean", "half", "n")}).text(),
                *(f"{100 * result['per_task'][t]['mean']:.1f}" for t in tasks),
            ]
        )
    for step in steps:
        rows.append(_row(f"labelled, {step} steps ({step * settings['batch_size']} rows)", runs[step], tasks))
    print(table(["training", "seeds", "held-out %", *tasks], rows))
    path = write_results(
        "learnability",
        {
            "machine": machine(),
            "config": args.config,
            "overrides": args.overrides,
            **settings,
            "corpus_seed": CORPUS_SEED,
            "seeds": seeds,
            "seconds": round(time.monotonic() - started, 1),
            "labelled": {str(step): runs[step] for step in steps},
            "study": {
                "base": report["base"],
                "train_steps": report["train_steps"],
                "arms": {
                    a: {k: r[k] for k in ("accuracy", "per_task", "seeds_done")}
                    for a, r in report["arms"].items()
                },
            },
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
