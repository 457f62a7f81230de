"""Typed configuration of ``python -m rl study`` (loaded with ``curate.config.load_structured``).

A study trains and evaluates several *arms* on one annotated run. An arm is a ``curate select``
recipe (which samples) plus the study's training recipe (how), optionally preceded by SFT on another
subset of the same selection (the paper's SFT(X) → GRPO(Y)). Every arm runs once per seed; the seed is
the selection's (random subsets, splits) and the trainer's (data order, rollout sampling). Every arm is
evaluated on one held-out split that no selection may take. ``configs/study/*.yaml`` are the recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from curate.config import check_key

__all__ = ["ArmConfig", "CurationStep", "EvalConfig", "HeldoutConfig", "StudyConfig", "TrainConfig"]



@dataclass
class CurationStep:
    """How to make the annotated run when ``run`` holds none (``python -m curate run``, which resumes)."""

    # curate recipe (configs/curate/*.yaml); null: ``run`` must already hold a finished run.
    config: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class HeldoutConfig:
    """The split every arm is evaluated on, drawn once from the run and excluded from every selection."""

    # Rows per task type, a seeded draw among the run's usable rows (fewer if a type has fewer).
    per_task: int = 40
    # Fixed across the study's seeds: every arm and seed is measured on the same rows.
    seed: int = 20261205
    # An external held-out set instead (any layout ``rl eval`` reads); its ids must not occur in
    # any arm's training data, which the study checks.
    path: Optional[str] = None


@dataclass
class ArmConfig:
    # ``curate select`` recipe (configs/select/*.yaml) and its overrides.
    select: str = "???"
    overrides: list[str] = field(default_factory=list)
    # The selection's subset GRPO trains on.
    subset: str = "grpo"
    # SFT first on this subset of the same selection (verl's SFT trainer: accelerators only), then
    # GRPO from its last checkpoint. Null: GRPO only.
    sft_subset: Optional[str] = None
    # This arm's own ``rl train`` recipe (null: train.recipe) and overrides after train.overrides:
    # arms that differ in how they train on the same selection (e.g. GRPO signal keeping).
    train_recipe: Optional[str] = None
    train_overrides: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    # ``python -m rl train`` recipe shared by every arm, and its overrides.
    recipe: str = "???"
    overrides: list[str] = field(default_factory=list)
    # GRPO steps per arm: the same number of updates for every arm, so that arms differ in which
    # samples they learn from, not in how much they train. Null: the recipe's epochs (the paper:
    # one epoch, so the full set trains longest).
    steps: Optional[int] = None
    # ``python -m rl sft`` recipe for arms with ``sft_subset``.
    sft_recipe: Optional[str] = None
    sft_overrides: list[str] = field(default_factory=list)
    # Delete each arm's checkpoints once it is evaluated (a 7B GRPO checkpoint is ~100 GB with its
    # optimizer state); the evaluation, metrics and rollouts stay.
    keep_checkpoints: bool = False


@dataclass
class EvalConfig:
    """``python -m rl eval`` settings, the same for the base model and every arm."""

    backend: str = "transformers"
    max_tokens: int = 1024
    batch_size: int = 16
    # Also sample this many responses per held-out row at ``sampled_temperature`` (``rl eval --sampled``)
    # and compare arms on their mean accuracy (avg@n) too: GRPO sharpens the sampling distribution
    # before it changes the greedy answer. 0: greedy accuracy only.
    sampled: int = 0
    sampled_temperature: float = 1.0
    # Extra ``rl eval`` arguments, e.g. ["--max-pixels", "1254400"].
    args: list[str] = field(default_factory=list)
    # GPUs per evaluation. 0: in the study's own process tree. >0: as a Ray task reserving them on the
    # cluster the study runs on (a Ray job's driver node may have none).
    num_gpus: float = 0.0


@dataclass
class StudyConfig:
    # The study's directory (resumable: finished steps are not run again). Absolute and on shared
    # storage when the study runs as a Ray job.
    output: str = "???"
    # The annotated run (``curate run``'s output.path); made by ``curation`` when it holds none.
    run: str = "???"
    curation: CurationStep = field(default_factory=CurationStep)
    # The model before training, evaluated once as the reference point (``toy`` / ``toy-study`` /
    # an HF directory or hub id). Null: the training recipe's actor_rollout_ref.model.path.
    base_model: Optional[str] = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: dict[str, ArmConfig] = field(default_factory=dict)
    # Run only these arms (null: all); handy with --quick and on the command line.
    only: Optional[list[str]] = None
    # The arm every other arm is compared with (the paper's control: random, same size).
    control: str = "random"
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Overrides ``--quick`` applies before the command line's (fewer seeds, arms, steps).
    quick: list[str] = field(default_factory=list)
    # Steps run at once; each arm and seed's chain stays in order. Every local ``rl train`` starts its own
    # Ray instance; as a Ray job they share the cluster, so N trainings must fit its GPUs at once.
    parallel: int = 1

    def chosen_arms(self) -> dict[str, ArmConfig]:
        return {name: arm for name, arm in self.arms.items() if self.only is None or name in self.only}

    def validate(self) -> "StudyConfig":
        check_key("output", self.output not in ("", "???"), "is required")
        check_key("run", self.run not in ("", "???"), "is required")
        check_key("arms", bool(self.arms), "define at least one arm (arms.<name>.select=configs/select/...)")
        check_key("seeds", bool(self.seeds), "list at least one seed")
        check_key("seeds", len(set(self.seeds)) == len(self.seeds), f"seeds repeat: {self.seeds}")
        for name, arm in self.arms.items():
            check_key(f"arms.{name}", name.isidentifier(), "arm names must be identifiers (they name folders)")
            check_key(f"arms.{name}", name != "base", "'base' names the untrained model in the report")
            check_key(f"arms.{name}.select", arm.select not in ("", "???"), "is required")
            check_key(f"arms.{name}.sft_subset", arm.sft_subset != arm.subset,
                   "SFT and GRPO on the same subset: name another subset of the selection")
            if arm.sft_subset is not None:
                check_key("train.sft_recipe", self.train.sft_recipe is not None,
                       f"arm {name!r} has an SFT stage (sft_subset) but no SFT recipe is given")
        unknown = sorted(set(self.only or ()) - set(self.arms))
        check_key("only", not unknown, f"unknown arm(s) {unknown}; arms are {sorted(self.arms)}")
        check_key("control", self.control in self.chosen_arms(),
               f"{self.control!r} is not among the arms run ({sorted(self.chosen_arms())})")
        check_key("train.recipe", self.train.recipe not in ("", "???"), "is required")
        check_key("train.steps", self.train.steps is None or self.train.steps > 0, "must be positive or null")
        check_key("heldout.per_task", self.heldout.per_task > 0, "must be positive")
        check_key("parallel", self.parallel >= 1, "must be >= 1 (steps run at once)")
        check_key("eval.backend", self.eval.backend in ("transformers", "vllm"), "transformers or vllm")
        check_key("eval.max_tokens", self.eval.max_tokens > 0, "must be positive")
        check_key("eval.num_gpus", self.eval.num_gpus >= 0, "must be >= 0")
        check_key("eval.sampled", self.eval.sampled >= 0, "must be >= 0 (0: greedy only)")
        check_key("eval.sampled_temperature", self.eval.sampled_temperature > 0, "must be > 0")
        return self
