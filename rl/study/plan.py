"""The study as a graph of the project's own commands, each one a resumable step.

Steps, in order: the curation run (when the study makes it), the held-out split (``curate select`` of
``configs/select/heldout.yaml``), the base model's evaluation, then per arm and seed: its selection
(held-out rows excluded), SFT when the arm has one, GRPO, and the evaluation of the last checkpoint.

A finished step leaves a marker (``steps/<name>.json``) holding its command and the tokens of the
markers it depended on. A later run skips a step whose command and dependencies are unchanged, and
runs again every step downstream of one that runs; a step whose outputs a later step needs and which
are gone (checkpoints are deleted after evaluation) runs again too. So an interrupted study continues
where it stopped, and a changed recipe reruns exactly what it changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from curate.config import ConfigError
from rl.study.config import ArmConfig, StudyConfig

__all__ = ["HELDOUT_RECIPE", "HELDOUT_SUBSET", "Step", "StudyLayout", "build_steps", "latest_checkpoint",
           "replicate_overrides"]

ROOT = Path(__file__).resolve().parents[2]
HELDOUT_RECIPE = ROOT / "configs" / "select" / "heldout.yaml"
HELDOUT_SUBSET = "heldout"
# verl's checkpoint manager writes this beside its global_step_N directories.
LATEST = "latest_checkpointed_iteration.txt"
# With train.steps null verl decides the last step; saving at "every 10^9 steps" saves only the last one.
SAVE_LAST_ONLY = 10**9
UNKNOWN_STEP = "global_step_LAST"  # shown before verl wrote it (Hydra-safe)


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """verl's last ``global_step_N`` directory under ``directory`` (None when it saved none)."""
    marker = directory / LATEST
    if not marker.is_file():
        return None
    step = directory / f"global_step_{marker.read_text().strip()}"
    return step if step.is_dir() else None


@dataclass
class StudyLayout:
    """Where everything of a study lives, under ``root``."""

    root: Path

    @property
    def steps(self) -> Path:
        return self.root / "steps"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def heldout(self) -> Path:
        return self.root / "heldout"

    def heldout_ids(self) -> Path:
        return self.heldout / HELDOUT_SUBSET / "canonical" / "train.parquet"

    def heldout_eval_data(self, cfg: StudyConfig) -> str:
        return cfg.heldout.path or str(self.heldout / HELDOUT_SUBSET / "verl" / "train.parquet")

    @property
    def base_eval(self) -> Path:
        return self.root / "base" / "eval.json"

    def arm(self, arm: str, seed: int) -> Path:
        return self.root / "arms" / arm / f"seed{seed}"

    def selection(self, arm: str, seed: int) -> Path:
        return self.arm(arm, seed) / "select"

    def sft(self, arm: str, seed: int) -> Path:
        return self.arm(arm, seed) / "sft"

    def rl(self, arm: str, seed: int) -> Path:
        return self.arm(arm, seed) / "rl"

    def checkpoints(self, arm: str, seed: int) -> Path:
        return self.rl(arm, seed) / "checkpoints"

    def metrics(self, arm: str, seed: int) -> Path:
        return self.rl(arm, seed) / "metrics.jsonl"

    def rollouts(self, arm: str, seed: int) -> Path:
        return self.rl(arm, seed) / "rollouts"

    def eval(self, arm: str, seed: int) -> Path:
        return self.arm(arm, seed) / "eval.json"


@dataclass
class Step:
    """One command of the study. ``command(True)`` is what runs: it may name files its dependencies
    wrote (a selection's parquet, the last checkpoint). ``command(False)`` shows those as placeholders:
    the step's own definition, which is what decides whether a finished step is still current (what
    its dependencies wrote is covered by their markers)."""

    name: str
    command: Callable[[bool], list[str]]
    deps: list[str] = field(default_factory=list)
    # Whether what later steps read from this one is still there.
    outputs_present: Callable[[], bool] = lambda: True
    env: dict[str, str] = field(default_factory=dict)
    # Directories the step owns: emptied before it runs, so nothing of an earlier attempt remains.
    owns: list[Path] = field(default_factory=list)
    # GPUs the step needs as a Ray task (0: runs as a child process of the study).
    num_gpus: float = 0.0
    # What the step is, for logs and the report: (kind, arm, seed).
    kind: str = ""
    arm: Optional[str] = None
    seed: Optional[int] = None


def _py(*args: str) -> list[str]:
    return ["python", "-m", *args]


# With a step count given, verl stops at that step; the epoch count only has to allow it.
_EPOCHS_ENOUGH = 10**6


def replicate_overrides(seed: int, steps: Optional[int]) -> list[str]:
    """``rl train`` overrides that make a GRPO run one seed of a comparison: ``seed`` drives the data
    order, the rollouts and the mini-batches; ``steps`` (None: verl's epochs) fixes the length, so arms
    train alike however many batches a filter draws; only the last checkpoint is saved, with full HF
    weights for ``rl eval``. Also used by benchmarks/bench_mpo.py's GRPO arms."""
    return [
        f"trainer.save_freq={steps if steps is not None else SAVE_LAST_ONLY}",
        *([f"trainer.total_training_steps={steps}", f"trainer.total_epochs={_EPOCHS_ENOUGH}"]
          if steps is not None else []),
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
    ]


def _checkpoint_arg(directory: Path, resolved: bool) -> str:
    found = latest_checkpoint(directory) if resolved else None
    return str(found if found is not None else directory / UNKNOWN_STEP)


def _split_file(selection: Path, subset: str, fmt: str, split: str, resolved: bool) -> Optional[str]:
    """A split file of a written selection, from its manifest (None if the subset has no such split);
    unresolved, its expected path."""
    if not resolved:
        return str(selection / subset / fmt / f"{split}.parquet")  # verl and verl_sft are Parquet
    manifest = json.loads((selection / "manifest.json").read_text())
    relative = manifest["subsets"][subset].get("files", {}).get(fmt, {}).get(split)
    return str(selection / relative) if relative else None


def _curation_steps(cfg: StudyConfig, layout: StudyLayout) -> list[Step]:
    run = Path(cfg.run)
    if cfg.curation.config is None:
        return []
    return [Step(
        name="curation",
        kind="curation",
        command=lambda resolved: _py("curate", "run", "--config", cfg.curation.config, f"output.path={run}",
                            *cfg.curation.overrides),
        outputs_present=lambda: (run / "run.json").is_file(),
    )]


def _heldout_steps(cfg: StudyConfig, layout: StudyLayout, upstream: list[str]) -> list[Step]:
    if cfg.heldout.path is not None:
        return []
    return [Step(
        name="heldout",
        kind="heldout",
        deps=upstream,
        command=lambda resolved: _py(
            "curate", "select", "--config", str(HELDOUT_RECIPE), f"input={cfg.run}",
            f"output={layout.heldout}", f"seed={cfg.heldout.seed}",
            f"subsets.{HELDOUT_SUBSET}.balance.cap_per_task={cfg.heldout.per_task}",
            "overwrite=true",
        ),
        outputs_present=lambda: layout.heldout_ids().is_file(),
    )]


def _eval_command(cfg: StudyConfig, layout: StudyLayout, checkpoint: str, out: Path) -> list[str]:
    e = cfg.eval
    sampled = ["--sampled", str(e.sampled), "--sampled-temperature", str(e.sampled_temperature)]
    return _py("rl", "eval", checkpoint, layout.heldout_eval_data(cfg), "--out", str(out),
               "--backend", e.backend, "--max-tokens", str(e.max_tokens), "--batch-size", str(e.batch_size),
               *(sampled if e.sampled else []), *e.args)


def base_model(cfg: StudyConfig) -> str:
    """The model every arm starts from: ``base_model``, else the training recipe's model path."""
    if cfg.base_model:
        return cfg.base_model
    from rl.train import load_recipe

    _, recipe = load_recipe(cfg.train.recipe)
    path = (recipe.get("actor_rollout_ref") or {}).get("model", {}).get("path")
    if not path or path == "???":
        raise ConfigError("config key 'base_model': the training recipe leaves the model path unset; give it")
    return str(path)


def _arm_steps(cfg: StudyConfig, layout: StudyLayout, name: str, arm: ArmConfig, seed: int,
               upstream: list[str], heldout: list[str]) -> list[Step]:
    tag = f"{name}.seed{seed}"
    selection, sft, rl = layout.selection(name, seed), layout.sft(name, seed), layout.rl(name, seed)
    exclude = [f"exclude_ids={layout.heldout_ids()}"] if cfg.heldout.path is None else []
    steps = [Step(
        name=f"{tag}.select", kind="select", arm=name, seed=seed, deps=upstream + heldout,
        command=lambda resolved: _py("curate", "select", "--config", arm.select, f"input={cfg.run}",
                                     f"output={selection}", f"seed={seed}", *exclude, "overwrite=true",
                                     *arm.overrides),
        outputs_present=lambda: (selection / "manifest.json").is_file(),
    )]
    if arm.sft_subset is not None:
        steps.append(Step(
            name=f"{tag}.sft", kind="sft", arm=name, seed=seed, deps=[steps[-1].name], owns=[sft],
            command=lambda resolved: _py(
                "rl", "sft", "--config", str(cfg.train.sft_recipe),
                f"data.train_files={_split_file(selection, arm.sft_subset, 'verl_sft', 'train', resolved)}",
                "data.val_files="
                + (_split_file(selection, arm.sft_subset, "verl_sft", "val", resolved) or "null"),
                *([f"model.path={cfg.base_model}"] if cfg.base_model else []),
                f"trainer.default_local_dir={sft}", f"trainer.experiment_name=study-{name}-s{seed}-sft",
                *cfg.train.sft_overrides),
            outputs_present=lambda: latest_checkpoint(sft) is not None,
        ))

    def train_command(resolved: bool) -> list[str]:
        train = _split_file(selection, arm.subset, "verl", "train", resolved)
        val = _split_file(selection, arm.subset, "verl", "val", resolved) or train
        if arm.sft_subset is not None:  # GRPO from SFT's last checkpoint (full HF weights)
            model = [f"actor_rollout_ref.model.path={Path(_checkpoint_arg(sft, resolved)) / 'huggingface'}"]
        else:
            model = [f"actor_rollout_ref.model.path={cfg.base_model}"] if cfg.base_model else []
        return _py(
            "rl", "train", "--config", arm.train_recipe or cfg.train.recipe,
            f"data.train_files={train}", f"data.val_files={val}",
            *model,
            f"trainer.default_local_dir={layout.checkpoints(name, seed)}",
            f"trainer.rollout_data_dir={layout.rollouts(name, seed)}",
            f"trainer.experiment_name=study-{name}-s{seed}",
            *replicate_overrides(seed, cfg.train.steps),
            *cfg.train.overrides,
            *arm.train_overrides,
        )

    steps.append(Step(
        name=f"{tag}.train", kind="train", arm=name, seed=seed, deps=[steps[-1].name], owns=[rl],
        command=train_command, env={"VERL_FILE_LOGGER_PATH": str(layout.metrics(name, seed))},
        outputs_present=lambda: latest_checkpoint(layout.checkpoints(name, seed)) is not None,
    ))
    steps.append(Step(
        name=f"{tag}.eval", kind="eval", arm=name, seed=seed, deps=[steps[-1].name, *heldout],
        num_gpus=cfg.eval.num_gpus,
        command=lambda resolved: _eval_command(
            cfg, layout, _checkpoint_arg(layout.checkpoints(name, seed), resolved), layout.eval(name, seed)),
        outputs_present=lambda: layout.eval(name, seed).is_file(),
    ))
    return steps


def build_steps(cfg: StudyConfig, layout: StudyLayout) -> list[Step]:
    """Every step of the study in an order that respects dependencies."""
    steps = _curation_steps(cfg, layout)
    upstream = [s.name for s in steps]
    held = _heldout_steps(cfg, layout, upstream)
    steps += held
    heldout = [s.name for s in held]
    base = base_model(cfg)
    steps.append(Step(
        name="base.eval", kind="eval", deps=upstream + heldout, num_gpus=cfg.eval.num_gpus,
        command=lambda resolved: _eval_command(cfg, layout, base, layout.base_eval),
        outputs_present=lambda: layout.base_eval.is_file(),
    ))
    for seed in cfg.seeds:  # seed-major: a study stopped early has every arm on its first seeds
        for name, arm in cfg.chosen_arms().items():
            steps += _arm_steps(cfg, layout, name, arm, seed, upstream, heldout)
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise AssertionError(f"step names repeat: {names}")
    return steps

