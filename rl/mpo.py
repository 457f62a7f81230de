"""MPO, the preference stage of Skywork R1V2's hybrid, with TRL's DPO trainer: ``python -m rl mpo``.

    python -m rl mpo --config configs/rl/toy_mpo.yaml [--dry-run] [key=value ...]

Mixed Preference Optimization (InternVL2.5-MPO, method.md §9) trains on preference pairs with

    L = w_p · L_pref + w_q · L_quality + w_g · L_gen,  with r(y) = β · (log π(y|x) − log π_ref(y|x))

(log π of a response: the sum of its tokens' log-probabilities), per pair (x, y_c, y_r):

- ``sigmoid`` (preference, DPO): −log σ(r(y_c) − r(y_r));
- ``bco_pair`` (quality, BCO): −log σ(r(y_c)) − log σ(−r(y_r)): each response judged alone as good or
  bad. The MPO paper shifts both by a running mean of the rewards, δ; TRL's ``bco_pair`` has no such
  shift (δ = 0);
- ``sft`` (generation): the mean −log π of the chosen responses' tokens, over all of the batch's
  chosen tokens;

each averaged over the batch and weighted by ``loss.weights`` (InternVL's 0.8 / 0.2 / 1.0 by default).

Why TRL: verl 0.9.1 has no preference trainer (PPO/GRPO and SFT only); TRL's ``DPOTrainer`` combines
these loss types with weights (``loss_type=[...]``, ``loss_weights=[...]``, its documented MPO set-up),
trains VLMs with images, and runs on one process or under ``accelerate launch`` (FSDP, DeepSpeed).

Steps, each skipped when already done with the same settings (a different setting in an existing output
directory fails naming the keys that differ):

1. pairs (``rl.preference``): K responses per prompt of ``data`` sampled from ``model``, graded by the
   project's graders, chosen correct / rejected incorrect → ``<output>/pairs/``;
2. training: ``trl.DPOTrainer`` with a frozen copy of ``model`` as the reference → ``<output>/model``,
   an HF directory ``python -m rl eval`` and ``python -m rl train`` (GRPO after MPO) load, with the
   source model's processor files (TRL's save drops a remote-code processor such as the toy model's);
3. ``<output>/metrics.json``: every step's loss, rewards/{chosen,rejected,accuracies,margins}, logps,
   the pair counts and the settings.

``training.num_processes > 1``: the pairs are built in this process, then the training is
``accelerate launch`` of this same command on that many processes with ``training.accelerate_config``
(TRL's ``fsdp2`` by default), printed first and then executed in place of this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from curate.config import ConfigError, check_key, load_structured
from curate.grading import GradingOptions
from rl.preference import PAIRS_FILE, PairsConfig, PairsManifest

__all__ = [
    "LossConfig",
    "MPOConfig",
    "MPOLayout",
    "TrainingConfig",
    "add_arguments",
    "dpo_args",
    "launch_command",
    "load_config",
    "main",
    "run_mpo",
]

# The loss types of trl 1.16.0's DPOTrainer (dpo_trainer.py, _compute_loss).
TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}  # training.precision -> the weights' dtype


@dataclass
class LossConfig:
    # TRL DPOTrainer loss types, summed with `weights`: MPO = preference (sigmoid, DPO) + quality
    # (bco_pair, BCO with δ = 0) + generation (sft on the chosen response).
    types: list[str] = field(default_factory=lambda: ["sigmoid", "bco_pair", "sft"])
    # InternVL2.5-MPO's weights; R1V2 publishes none (method.md §9).
    weights: list[float] = field(default_factory=lambda: [0.8, 0.2, 1.0])
    # β: how far the policy may move from the reference (DPO's temperature; InternVL-MPO's 0.1).
    beta: float = 0.1


@dataclass
class TrainingConfig:
    learning_rate: float = 1.0e-6
    epochs: float = 1.0
    # > 0: stop after this many optimizer steps (wins over epochs).
    max_steps: int = -1
    # Pairs per process per micro-batch (each pair is two sequences: chosen and rejected).
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    # transformers' scheduler names (linear, cosine, constant, ...).
    lr_scheduler: str = "cosine"
    # Warm-up: a fraction of the steps when < 1, else a number of steps (transformers' warmup_steps).
    warmup: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Longest prompt + response in tokens; null never cuts (a cut can drop image tokens).
    max_length: Optional[int] = None
    # fp32 | bf16: the weights' dtype and the compute (TRL's VLM recipes train in bf16).
    precision: str = "fp32"
    # Recompute activations in the backward pass (memory for time: large models).
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    # Train on the CPU even where a GPU is visible.
    cpu: bool = False
    seed: int = 0
    # > 0: a resumable checkpoint every this many steps (<output>/trainer); a rerun resumes the last.
    save_steps: int = 0
    # Processes (GPUs) of one node; > 1 runs the training under `accelerate launch`.
    num_processes: int = 1
    # `accelerate launch --config_file`: a config TRL ships (fsdp1, fsdp2, zero1, zero2, zero3,
    # multi_gpu) or a path.
    accelerate_config: str = "fsdp2"

    def validate(self) -> None:
        from transformers import SchedulerType

        check_key("training.learning_rate", self.learning_rate > 0, "must be positive")
        check_key("training.epochs", self.epochs > 0, "must be positive")
        check_key("training.max_steps", self.max_steps == -1 or self.max_steps > 0, "must be positive or -1")
        check_key("training.batch_size", self.batch_size >= 1, "must be >= 1")
        check_key(
            "training.gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be >= 1"
        )
        schedulers = [s.value for s in SchedulerType]
        check_key(
            "training.lr_scheduler",
            self.lr_scheduler in schedulers,
            f"{self.lr_scheduler!r} is not one of {schedulers}",
        )
        check_key("training.warmup", self.warmup >= 0, "must be >= 0")
        check_key(
            "training.max_length", self.max_length is None or self.max_length > 0, "must be positive or null"
        )
        check_key(
            "training.precision",
            self.precision in PRECISIONS,
            f"{self.precision!r} is not one of {list(PRECISIONS)}",
        )
        check_key(
            "training.save_steps", self.save_steps >= 0, "must be >= 0 (0: no intermediate checkpoints)"
        )
        check_key("training.num_processes", self.num_processes >= 1, "must be >= 1")
        check_key(
            "training.num_processes",
            self.num_processes == 1 or not self.cpu,
            "more than one process needs GPUs (training.cpu=true)",
        )
        if self.num_processes > 1:
            accelerate_config_file(self.accelerate_config)


@dataclass
class MPOConfig:
    # The model to train (and to sample the pairs from): an HF directory, a hub id, or a toy preset.
    model: str = "???"
    # The prompts: a verl RL parquet (file or directory; curate select's `verl` export) or a URI.
    data: str = "???"
    # Output directory: pairs/, model/, metrics.json (and trainer/ with training.save_steps).
    output: str = "???"
    pairs: PairsConfig = field(default_factory=PairsConfig)
    # What counts as correct (curate.grading.GradingOptions; the keys of curation's `grading:` and of
    # the reward's reward_kwargs); an `auto` answer box format follows the model family.
    grading: GradingOptions = field(default_factory=GradingOptions)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> "MPOConfig":
        for key in ("model", "data", "output"):
            check_key(key, getattr(self, key) not in ("", "???"), "is required")
        self.pairs.validate()
        loss = self.loss
        check_key("loss.types", bool(loss.types), "list at least one loss type")
        unknown = [t for t in loss.types if t not in TRL_LOSS_TYPES]
        check_key("loss.types", not unknown, f"{unknown} not among TRL's loss types {list(TRL_LOSS_TYPES)}")
        check_key(
            "loss.weights",
            len(loss.weights) == len(loss.types),
            f"{len(loss.weights)} weights for {len(loss.types)} loss types {list(loss.types)}",
        )
        check_key("loss.weights", all(w >= 0 for w in loss.weights), "must be >= 0")
        check_key("loss.beta", loss.beta > 0, "must be positive")
        self.training.validate()
        return self


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> MPOConfig:
    """The MPO config: defaults ← the recipe ← ``key=value`` overrides, validated."""
    return load_structured(MPOConfig, path, overrides)


def accelerate_config_file(name: str) -> str:
    """The ``accelerate launch --config_file`` of ``training.accelerate_config``: a path, or the name
    of a config TRL ships (``trl/accelerate_configs/<name>.yaml``)."""
    if Path(name).is_file():
        return name
    from importlib.resources import files

    shipped = files("trl.accelerate_configs") / f"{name}.yaml"
    check_key(
        "training.accelerate_config", shipped.is_file(), f"{name!r} is neither a file nor a config TRL ships"
    )
    return str(shipped)


@dataclass(frozen=True)
class MPOLayout:
    """Where an MPO run writes."""

    root: Path

    @property
    def pairs(self) -> Path:
        return self.root / "pairs"

    @property
    def trainer(self) -> Path:
        return self.root / "trainer"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


def launch_command(cfg: MPOConfig, recipe: str, overrides: list[str]) -> list[str]:
    """This command under ``accelerate launch`` on ``training.num_processes`` processes of this node
    (for several nodes, add accelerate's ``--num_machines``, ``--machine_rank``, ``--main_process_ip``
    and run it on each)."""
    t = cfg.training
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        accelerate_config_file(t.accelerate_config),
        "--num_processes",
        str(t.num_processes),
        "--mixed_precision",
        "bf16" if t.precision == "bf16" else "no",
        "-m",
        "rl",
        "mpo",
        "--config",
        recipe,
        *overrides,
    ]


def _shown(command: list[str]) -> str:
    """``accelerate launch ...`` for ``python -m accelerate.commands.launch ...`` (the same program)."""
    return shlex.join(["accelerate", "launch", *command[3:]])


def dpo_args(cfg: MPOConfig, output_dir: Path) -> Any:
    """TRL's ``DPOConfig`` for the recipe. Set explicitly where TRL's defaults would bite: bf16 and
    gradient checkpointing (on by default), ``max_length`` (1,024 by default: it would cut image
    tokens), logging every step, no reporting integrations."""
    from trl import DPOConfig

    t, loss = cfg.training, cfg.loss
    saving = (
        {"save_strategy": "steps", "save_steps": t.save_steps} if t.save_steps else {"save_strategy": "no"}
    )
    return DPOConfig(
        output_dir=str(output_dir),
        loss_type=list(loss.types),
        loss_weights=list(loss.weights),
        beta=loss.beta,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_length=t.max_length,
        bf16=t.precision == "bf16",
        gradient_checkpointing=t.gradient_checkpointing,
        use_cpu=t.cpu,
        seed=t.seed,
        logging_steps=1,
        report_to="none",
        dataloader_num_workers=0,
        **saving,
    )


def grading_options(cfg: MPOConfig, model: str) -> GradingOptions:
    """``grading`` with an ``auto`` answer box format resolved by the model family, as curation does."""
    from curate.grading.boxes import box_format_for_model

    if cfg.grading.answer_box_format != "auto":
        return cfg.grading
    return dataclasses.replace(cfg.grading, answer_box_format=box_format_for_model(model))


def _settings(cfg: MPOConfig) -> dict[str, Any]:
    """What a finished run is recorded with (everything but the launch settings, which do not change
    what is trained)."""
    settings = dataclasses.asdict(cfg)
    settings["training"].pop("accelerate_config")
    settings["pairs"]["engine"].pop("batch_size")
    return settings


def _finished(cfg: MPOConfig, layout: MPOLayout) -> bool:
    """Whether ``layout`` holds this run's finished model; a different finished run there fails."""
    from rl.preference import differences

    if not (layout.metrics.is_file() and layout.model.is_dir()):
        return False
    changed = differences(json.loads(layout.metrics.read_text()).get("settings"), _settings(cfg))
    if changed:
        raise ConfigError(
            f"{layout.root} holds an MPO run with other settings (they differ in {', '.join(changed)}); "
            "use another output directory or delete that one"
        )
    return True


def _current_pairs(cfg: MPOConfig, model: str, data: str, layout: MPOLayout) -> PairsManifest:
    """The pairs a process launched by ``accelerate launch`` trains on: built before, never here (every
    rank would sample them at once)."""
    from rl.preference import differences, fingerprint

    have = PairsManifest.read(layout.pairs)
    want = fingerprint(cfg.pairs, model, data, grading_options(cfg, model))
    if have is None or differences(have.fingerprint, want) or not (layout.pairs / PAIRS_FILE).is_file():
        raise ConfigError(
            f"{layout.pairs} holds no pairs for these settings; run `python -m rl mpo` without "
            "`accelerate launch`: it builds them, then launches the training itself"
        )
    return have


def train(cfg: MPOConfig, model: str, layout: MPOLayout, manifest: PairsManifest) -> dict[str, Any]:
    """TRL's DPOTrainer on the pairs; the model saved to ``layout.model``, metrics to ``layout.metrics``."""
    import datasets
    import transformers
    import trl
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    from curate.modeling import load_model, load_processor, restore_processor_files

    started = time.monotonic()
    t, engine = cfg.training, cfg.pairs.engine
    dtype = PRECISIONS[t.precision]
    policy = load_model(model, dtype=dtype, device="cpu", attn_implementation=t.attn_implementation)
    reference = load_model(model, dtype=dtype, device="cpu", attn_implementation=t.attn_implementation)
    # The image pixel budget the pairs were sampled with: the policy is trained on what it saw.
    processor = load_processor(model, min_pixels=engine.min_pixels, max_pixels=engine.max_pixels)
    pairs = datasets.Dataset.from_parquet(
        str(layout.pairs / PAIRS_FILE), cache_dir=str(layout.pairs / ".cache")
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,  # else TRL reloads the model from its config's name
        args=dpo_args(cfg, layout.trainer),
        train_dataset=pairs,
        processing_class=processor,  # else TRL loads AutoProcessor, which needs torchvision
    )
    resume = get_last_checkpoint(str(layout.trainer)) if t.save_steps and layout.trainer.is_dir() else None
    result = trainer.train(resume_from_checkpoint=resume)
    partial = layout.root / f".model.partial-{os.getpid()}"
    trainer.save_model(str(partial))  # every rank: FSDP gathers the full weights
    if not trainer.is_world_process_zero():
        return {}
    if Path(model).is_dir():
        restore_processor_files(model, partial)
    shutil.rmtree(layout.model, ignore_errors=True)
    partial.rename(layout.model)
    history = trainer.state.log_history
    metrics = {
        "settings": _settings(cfg),
        "model_path": model,
        "checkpoint": str(layout.model),
        "pairs": {k: v for k, v in dataclasses.asdict(manifest).items() if k != "fingerprint"},
        "steps": [h for h in history if "loss" in h],
        "summary": dict(result.metrics),
        "resumed_from": resume,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__},
        "seconds": round(time.monotonic() - started, 1),
    }
    layout.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_mpo(cfg: MPOConfig, recipe: str, overrides: list[str]) -> int:
    """Pairs, then training (in this process, or under ``accelerate launch``), unless already done."""
    from curate.modeling import resolve_model_path
    from curate.storage import stage
    from rl.preference import ensure_pairs

    layout = MPOLayout(Path(cfg.output))
    if _finished(cfg, layout):
        print(f"python -m rl mpo: {layout.model} is already trained with these settings ({layout.metrics})")
        return 0
    model = resolve_model_path(cfg.model)
    data = stage(cfg.data, "data")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        manifest = _current_pairs(cfg, model, data, layout)
    else:
        manifest = ensure_pairs(cfg.pairs, model, data, layout.pairs, grading_options(cfg, model))
    if manifest.pairs == 0:
        print(
            f"python -m rl mpo: no preference pairs: each of the {manifest.prompts} prompts was answered all "
            f"right, all wrong or not at all ({manifest.counts}); see {layout.pairs / 'manifest.json'}",
            file=sys.stderr,
        )
        return 1
    if cfg.training.num_processes > 1 and not launched:
        command = launch_command(cfg, recipe, overrides)
        print(_shown(command), flush=True)
        os.execvp(command[0], command)
    metrics = train(cfg, model, layout, manifest)
    if metrics:
        last = metrics["steps"][-1] if metrics["steps"] else {}
        print(
            f"python -m rl mpo: {len(metrics['steps'])} steps on {manifest.pairs} pairs, last loss "
            f"{last.get('loss')}, rewards/accuracies {last.get('rewards/accuracies')}; model: {layout.model}"
        )
    return 0


def dry_run(cfg: MPOConfig, recipe: str, overrides: list[str]) -> str:
    """The resolved config and what would run, without touching the model or the data."""
    from curate.config import to_yaml

    layout = MPOLayout(Path(cfg.output))
    p = cfg.pairs
    lines = [
        to_yaml(cfg).rstrip(),
        "",
        f"pairs: {p.k} responses per prompt of {cfg.data} from {cfg.model} ({p.engine.backend}), "
        f"up to {p.pairs_per_prompt} pairs per prompt -> {layout.pairs}",
        f"loss: {' + '.join(f'{w} * {n}' for n, w in zip(cfg.loss.types, cfg.loss.weights))}, "
        f"beta {cfg.loss.beta}",
    ]
    if cfg.training.num_processes > 1:
        lines.append(f"train: {_shown(launch_command(cfg, recipe, overrides))}")
    else:
        lines.append(f"train: TRL DPOTrainer in this process ({'CPU' if cfg.training.cpu else 'GPU if any'})")
    lines.append(f"model: {layout.model}, metrics: {layout.metrics}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="MPO recipe YAML (configs/rl/*_mpo.yaml)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and the plan, run nothing"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe keys to override")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg, args.config, args.overrides))
        return 0
    return run_mpo(cfg, args.config, args.overrides)
