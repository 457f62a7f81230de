"""Supervised fine-tuning with verl's own SFT trainer: stage 1 of the paper's SFT(X) + GRPO(Y).

    python -m rl sft --config configs/rl/qwen25vl7b_sft.yaml [--dry-run] [key=value ...]

A recipe mirrors verl's ``sft_trainer_engine`` config (``verl/trainer/config/sft_trainer_engine.yaml``:
``data``, ``model``, ``engine``, ``optim``, ``checkpoint``, ``trainer``) with the keys it changes, plus
an optional ``hardmode:`` section (:class:`SFTSection`). Recipes, overrides, ``+key`` and ``???`` work
as for ``python -m rl train`` (``rl.train``), and every key is checked against verl's SFT config before
anything starts. The result is printed, then executed in place of this process:
``python -m verl.trainer.sft_trainer_ray <overrides>``.

Why ``sft_trainer_ray``: verl 0.9.1 ships two SFT trainers over the same config and the same
``MultiTurnSFTDataset`` (chat ``messages`` with ``<image>`` markers + an ``images`` column: the
``verl_sft`` export of ``python -m curate select``). ``sft_trainer`` is SPMD and needs one ``torchrun``
per node; ``sft_trainer_ray`` is a single driver whose FSDP workers Ray places on
``trainer.nnodes × trainer.n_gpus_per_node`` GPUs, so one command runs on one box or, unchanged, as a
Ray job on a multi-node cluster (``python -m launch submit -- python -m rl sft ...``). The printed
overrides work with ``torchrun ... -m verl.trainer.sft_trainer`` too.

Ray: that trainer calls a bare ``ray.init()``, which joins any cluster ``ray start`` left on the machine.
Unless ``RAY_ADDRESS`` is set (``ray job submit`` sets it), the command gets ``RAY_ADDRESS=local``: a
private cluster, as for ``python -m rl train``.

Stage 2 is ``python -m rl train`` from the checkpoint's ``global_step_N/huggingface`` directory
(written with full weights when ``checkpoint.save_contents`` includes ``hf_model``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl.train import (
    EXTERNAL_MODULES,
    VERL_FIXES,
    TrainPlan,
    add_recipe_arguments,
    as_overrides,
    check_given,
    compose,
    environ_modules,
    file_logger_env,
    override_key,
    resolve_toy_model,
    run,
)

__all__ = ["VERL_SFT_CONFIG_NAME", "VERL_SFT_ENTRY", "SFTSection", "add_arguments", "main", "plan_sft"]

VERL_SFT_ENTRY = "verl.trainer.sft_trainer_ray"
VERL_SFT_CONFIG_NAME = "sft_trainer_engine"
SFT_MODEL_PATH_KEY = "model.path"


@dataclass
class SFTSection:
    """The SFT recipe's ``hardmode:`` section."""

    # Modules verl imports in every process (VERL_USE_EXTERNAL_MODULES), after the environment's own.
    verl_modules: list[str] = field(default_factory=list)
    # Run verl's SFT trainer on this machine's CPU (rl.cpu: the platform, its overrides and the SFT
    # keys of rl.cpu.cpu_sft_overrides; the recipe or command line may still set any of them).
    cpu: bool = False


def plan_sft(
    recipe_path: str | Path, cli_overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> TrainPlan:
    """Compose an SFT recipe and command-line overrides into verl's SFT command (nothing is started)."""
    environ = os.environ if environ is None else environ
    hardmode, recipe, verl_cli = compose(recipe_path, cli_overrides, SFTSection)
    env = file_logger_env(environ)
    if not environ.get("RAY_ADDRESS"):
        env["RAY_ADDRESS"] = "local"
    modules = [VERL_FIXES, *environ_modules(environ), *hardmode.verl_modules]
    implied: dict[str, tuple[bool, Any]] = {}
    if hardmode.cpu:
        from rl.cpu import cpu_env, cpu_sft_overrides

        implied = {key.lstrip("+"): (key.startswith("+"), value) for key, value in cpu_sft_overrides().items()}
        cpu = cpu_env()
        modules.insert(0, cpu.pop(EXTERNAL_MODULES))  # before any other plugin: it checks versions
        env.update(cpu)
    env[EXTERNAL_MODULES] = ",".join(dict.fromkeys(modules))
    merged = {**implied, **recipe}
    check_given(merged, {override_key(o) for o in verl_cli})
    resolve_toy_model(merged, verl_cli, SFT_MODEL_PATH_KEY)
    return TrainPlan(
        overrides=as_overrides(merged, verl_cli),
        env=env,
        entry=VERL_SFT_ENTRY,
        config_name=VERL_SFT_CONFIG_NAME,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(
        parser,
        "SFT recipe YAML (configs/rl/*_sft.yaml)",
        "verl SFT config overrides (Hydra syntax) or hardmode.* keys",
    )


def main(args: argparse.Namespace) -> int:
    return run("python -m rl sft", lambda: plan_sft(args.config, args.overrides), args.dry_run)
