"""Does difficulty-aware selection train better? Train and evaluate several selections, side by side.

    python -m rl study --config configs/study/toy.yaml [--quick] [--dry-run] [--report] [key=value ...]

From one annotated run (``curate run``; the study makes it first when ``curation.config`` is given),
each *arm* — a ``curate select`` recipe: medium + hard by PISM or CMAB, random of the same size, the
full set, easy only, SFT(X) → GRPO(Y) — is trained with the same ``rl train`` recipe and evaluated
by ``rl eval`` on one held-out split, once per seed (the seed drives the selection's random draws and
the trainer's data order and sampling). The held-out split is drawn once from the run
(``configs/select/heldout.yaml``, ``heldout.per_task`` rows per task) and excluded from every
selection; the study checks each selection for held-out ids.

Output (``output``): ``report/study.md`` + ``study.json`` + PNGs: held-out accuracy per arm, overall and
per task, as mean ± 95% t-interval over seeds, each arm compared with ``control`` seed by seed (the
verdict says whether a difference is larger than the seed noise), mean reward and effective-sample
ratio per GRPO step, generations spent in curation and training. ``steps/`` holds one marker per
finished step: run the same command again to continue an interrupted study; a changed recipe or
override reruns exactly the steps it changes (and those after them). ``logs/`` holds each step's output.
``parallel=N`` runs N steps at once (each arm and seed's chain in order).

``--quick`` applies the config's ``quick`` overrides (fewer seeds, arms and steps: minutes, for a first
look). ``--dry-run`` checks every arm's selection recipe and the training recipe against verl's
config and prints every command, starting nothing. ``--report`` only rebuilds the report.

As a Ray job, the same command: ``ray job submit --working-dir . -- python -m rl study --config ...
output=/shared/study run=/shared/run`` (absolute paths on shared storage); ``rl train`` joins the job's
cluster, and evaluations reserve ``eval.num_gpus`` as Ray tasks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from curate.config import ConfigError, load_structured
from rl.study.config import StudyConfig
from rl.study.plan import HELDOUT_SUBSET, StudyLayout, build_steps

__all__ = ["add_arguments", "check_recipes", "load_study", "main"]

log = logging.getLogger(__name__)


def load_study(path: str, overrides: list[str], quick: bool = False) -> StudyConfig:
    """The study config: defaults ← YAML ← its ``quick`` overrides (``--quick``) ← the command line."""
    cfg = load_structured(StudyConfig, path, overrides)
    if quick and cfg.quick:
        cfg = load_structured(StudyConfig, path, [*cfg.quick, *overrides])
    return cfg


def check_recipes(cfg: StudyConfig, layout: StudyLayout) -> None:
    """Fail before anything runs on a recipe that cannot work: every arm's selection must define the
    subsets it trains on, in the formats the trainers read, and the training (and SFT) command the
    study will run must pass verl's own config check."""
    from curate.selection.config import SelectConfig
    from rl.sft import plan_sft
    from rl.train import plan_training, validate_like_verl, verl_config

    scored = _curated_scores(cfg)
    for name, arm in cfg.chosen_arms().items():
        select = load_structured(SelectConfig, arm.select, [*arm.overrides, "input=unused", "output=unused"])
        needs = {arm.subset: "verl", **({arm.sft_subset: "verl_sft"} if arm.sft_subset else {})}
        for subset, fmt in needs.items():
            if subset not in select.subsets:
                raise ConfigError(f"config key 'arms.{name}.select': {arm.select} has no subset {subset!r} "
                                  f"(it has {sorted(select.subsets)})")
            if fmt not in select.subsets[subset].formats:
                raise ConfigError(f"config key 'arms.{name}.select': subset {subset!r} of {arm.select} is "
                                  f"not exported as {fmt} (formats: {select.subsets[subset].formats})")
            missing = [s for s in select.subsets[subset].scores() if scored is not None and s not in scored]
            if missing:
                raise ConfigError(
                    f"config key 'arms.{name}.select': subset {subset!r} of {arm.select} reads {missing[0]} "
                    f"scores, which the study's curation ({cfg.curation.config}) does not make: add "
                    f"{missing[0]}.enabled=true to 'curation.overrides' or drop the arm")
    plans = {"train": plan_training, "sft": plan_sft}
    for step in build_steps(cfg, layout):  # every arm's training, on the first seed
        if step.kind in plans and step.seed == cfg.seeds[0]:
            command = step.command(False)  # python -m rl train|sft --config RECIPE overrides...
            plan = plans[step.kind](command[5], command[6:])
            validate_like_verl(plan, verl_config(plan))


def _curated_scores(cfg: StudyConfig) -> set[str] | None:
    """The scores the study's own curation makes (None: the study reads a run made elsewhere)."""
    from curate.config import load_config

    if cfg.curation.config is None:
        return None
    curation = load_config(cfg.curation.config, cfg.curation.overrides)
    return {name for name in ("pism", "cmab", "rap") if getattr(curation, name).enabled}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study recipe (configs/study/*.yaml)")
    parser.add_argument("--quick", action="store_true", help="apply the recipe's `quick` overrides (minutes)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every recipe against verl's config, print every command, run nothing")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from what is there")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="study config overrides")


def main(args: argparse.Namespace) -> int:
    from rl.study.report import write_report
    from rl.study.runner import StudyRun, stale_steps

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_study(args.config, args.overrides, args.quick)
    layout = StudyLayout(Path(cfg.output).resolve())
    if args.report:
        write_report(cfg, layout)
        print((layout.report / "study.md").read_text())
        return 0
    check_recipes(cfg, layout)
    steps = build_steps(cfg, layout)
    if args.dry_run:
        stale = stale_steps(steps, layout)
        for step in steps:
            state = "to run" if step.name in stale else "finished"
            print(f"# {step.name} ({state})\n" + " ".join(step.command(False)))
        print(f"dry-run ok: {len(steps)} steps, {len(stale)} to run; held-out subset '{HELDOUT_SUBSET}'")
        return 0
    if cfg.curation.config is None and not (Path(cfg.run) / "run.json").is_file():
        raise ConfigError(f"config key 'run': {cfg.run} holds no finished curation run (run.json); "
                          "run `python -m curate run` first or give curation.config")
    finished = StudyRun(cfg, layout, steps).run()
    write_report(cfg, layout)
    print((layout.report / "study.md").read_text())
    if not finished:
        print(f"python -m rl study: some steps failed (logs in {layout.logs}); run the same command again "
              "to retry them", file=sys.stderr)
        return 1
    return 0
