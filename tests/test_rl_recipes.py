"""The training recipes in ``configs/rl``: each composes with verl's own config, and the GPU recipes say
what the paper says.

Every recipe goes through the same path as ``python -m rl train|sft --dry-run``: composed with verl's
Hydra config (``ppo_trainer`` or ``sft_trainer_engine``), then the sections verl turns into typed configs
are built with verl's ``omega_conf_to_dataclass``, so a value verl would reject at start-up (a wrong
strategy or scheduler name) fails here. The paper's numbers are those of method.md §3, written out
below (the spec is not part of the repository).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from curate.config import ConfigError
from rl.sft import VERL_SFT_ENTRY, plan_sft
from rl.train import MISSING, VERL_ENTRY, flatten, load_recipe, plan_training, validate_like_verl, verl_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "rl"
GRPO = RECIPES / "qwen25vl7b_grpo.yaml"
SFT = RECIPES / "qwen25vl7b_sft.yaml"
SFT_GRPO = RECIPES / "qwen25vl7b_sft_grpo.yaml"
TOY_SFT = RECIPES / "toy_sft.yaml"
SFT_RECIPES = {SFT.name, TOY_SFT.name}  # run by `python -m rl sft`; the other verl recipes by `python -m rl train`
# Recipes of commands that are not one verl trainer (rl iterate, rl mpo): tested with their commands.
NOT_VERL = ("_iterate.yaml", "_mpo.yaml")
VERL_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.endswith(NOT_VERL))
NO_RAY: dict[str, str] = {}
MODEL = "actor_rollout_ref.model.path"

# method.md §3, the paper's recipe for Qwen2.5-VL-7B (full fine-tune, bf16).
PAPER_GRPO_LR = 5e-7
PAPER_GENERATIONS = 8
PAPER_TEMPERATURE = 1.0
PAPER_KL_BETA = 0.001
PAPER_MAX_COMPLETION = 1024
PAPER_GRPO_EPOCHS = 1
PAPER_MAX_PIXELS = 1_254_400
PAPER_SFT_LR = 1e-6
PAPER_SFT_EPOCHS = 5
PAPER_SFT_WARMUP = 0.1
QWEN25VL_PIXELS_PER_TOKEN = 28 * 28  # one visual token per 28×28 pixels after the 2×2 merge


def _placeholders(recipe: Path) -> list[str]:
    """A command-line value for every key the recipe leaves ``???`` (and a model for the toy recipe)."""
    _, verl_part = load_recipe(recipe)
    given = [f"{k}=/given/{k}" for k, (_, v) in flatten(verl_part).items() if v == MISSING]
    model = "model.path" if recipe.name in SFT_RECIPES else MODEL
    if not any(o.startswith(f"{model}=") for o in given):
        given.append(f"{model}=/given/model")  # never train the toy model here
    return given


def _compose(recipe: Path, cli: list[str] | None = None):
    cli = _placeholders(recipe) if cli is None else cli
    plan = (plan_sft if recipe.name in SFT_RECIPES else plan_training)(recipe, cli, environ=NO_RAY)
    return plan, verl_config(plan)


def _typed(cfg, *sections: str) -> None:
    """verl's own dataclasses built from the composed sections (their __post_init__ checks run)."""
    from verl.utils.config import omega_conf_to_dataclass

    for section in sections:
        omega_conf_to_dataclass(OmegaConf.select(cfg, section))


@pytest.mark.parametrize("recipe", VERL_RECIPES, ids=lambda p: p.name)
def test_every_recipe_composes_with_verls_config(recipe):
    plan, cfg = _compose(recipe)
    if recipe.name in SFT_RECIPES:
        assert plan.entry == VERL_SFT_ENTRY
        _typed(cfg, "engine", "optim", "checkpoint")
    else:
        assert plan.entry == VERL_ENTRY and cfg.algorithm.adv_estimator == "grpo"
        _typed(cfg, "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "algorithm")
        validate_like_verl(plan, cfg)  # what verl's main_ppo checks before it starts anything
    missing = {k for k, (_, v) in flatten(load_recipe(recipe)[1]).items() if v == MISSING}
    for key in missing:  # what the command line gave reached verl
        assert OmegaConf.select(cfg, key) == f"/given/{key}"


def test_required_keys_are_named_when_missing():
    with pytest.raises(
        ConfigError,
        match=r"'data\.train_files' must be given.*also data\.val_files, .*model\.path, .*default_local_dir",
    ):
        plan_training(GRPO, [], environ=NO_RAY)
    with pytest.raises(
        ConfigError, match=r"'data\.train_files' must be given.*model\.path.*default_local_dir"
    ):
        plan_sft(SFT, [], environ=NO_RAY)


def test_grpo_recipe_has_the_papers_settings():
    _, cfg = _compose(GRPO)
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert actor.optim.lr == pytest.approx(PAPER_GRPO_LR)
    assert rollout.n == PAPER_GENERATIONS and rollout.temperature == PAPER_TEMPERATURE
    assert actor.use_kl_loss is True and actor.kl_loss_coef == pytest.approx(PAPER_KL_BETA)
    assert cfg.algorithm.use_kl_in_reward is False  # the KL is a loss term, not a reward penalty
    assert cfg.data.max_response_length == rollout.response_length == PAPER_MAX_COMPLETION
    assert cfg.trainer.total_epochs == PAPER_GRPO_EPOCHS
    # the same image size for verl's processor and for vLLM's, so their image-token counts agree
    assert cfg.data.mm_processor_kwargs.max_pixels == PAPER_MAX_PIXELS
    assert dict(rollout.engine_kwargs.vllm.mm_processor_kwargs) == dict(cfg.data.mm_processor_kwargs)
    assert cfg.data.max_prompt_length > PAPER_MAX_PIXELS // QWEN25VL_PIXELS_PER_TOKEN  # an image fits
    assert cfg.actor_rollout_ref.model.lora_rank == 0  # full fine-tune
    assert rollout.dtype == "bfloat16" and actor.fsdp_config.dtype == "bfloat16"
    assert rollout.name == "vllm" and cfg.data.image_key == "images"
    assert cfg.reward.custom_reward_function.path == "pkg://rl.reward"
    assert cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.nnodes == 1
    assert "hf_model" in actor.checkpoint.save_contents  # `python -m rl eval` loads it without merging
    assert cfg.trainer.save_freq > 0  # verl saves no checkpoint at all with save_freq -1
    assert actor.ppo_mini_batch_size <= cfg.data.train_batch_size


def test_gpu_recipes_load_the_verl_fix_in_every_worker():
    """The position-ids fix is not a CPU matter: the GPU recipes' workers load it too."""
    plan, cfg = _compose(GRPO)
    assert "rl.verl_fixes" in plan.env["VERL_USE_EXTERNAL_MODULES"].split(",")
    assert (
        cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES
        == plan.env["VERL_USE_EXTERNAL_MODULES"]
    )
    assert (
        "rl.verl_fixes" in plan_sft(SFT, _placeholders(SFT), environ=NO_RAY).env["VERL_USE_EXTERNAL_MODULES"]
    )


def test_multi_node_is_one_override():
    _, cfg = _compose(GRPO, _placeholders(GRPO) + ["trainer.nnodes=4"])
    assert cfg.trainer.nnodes == 4 and cfg.actor_rollout_ref.rollout.n_gpus_per_node == 8


def test_sft_recipe_has_the_papers_settings():
    _, cfg = _compose(SFT)
    assert cfg.optim.lr == pytest.approx(PAPER_SFT_LR)
    assert cfg.optim.lr_scheduler_type == "cosine"
    assert cfg.optim.lr_warmup_steps_ratio == pytest.approx(PAPER_SFT_WARMUP)
    assert cfg.trainer.total_epochs == PAPER_SFT_EPOCHS
    assert cfg.model.lora_rank == 0 and cfg.engine.dtype == "bfloat16"
    assert cfg.data.max_length > PAPER_MAX_PIXELS // QWEN25VL_PIXELS_PER_TOKEN
    assert "hf_model" in cfg.checkpoint.save_contents  # stage 2 starts from global_step_N/huggingface
    assert cfg.trainer.n_gpus_per_node == 8


def test_grpo_after_sft_differs_from_grpo_only_in_the_start_and_the_name():
    cli = [
        f"{MODEL}=/ckpt/sft/global_step_9/huggingface",
        "data.train_files=/sel/grpo/verl/train.parquet",
        "data.val_files=/sel/grpo/verl/val.parquet",
        "trainer.default_local_dir=/ckpt/out",
    ]
    grpo = OmegaConf.to_container(_compose(GRPO, cli)[1], resolve=False)
    after_sft = OmegaConf.to_container(_compose(SFT_GRPO, cli)[1], resolve=False)
    assert after_sft["trainer"].pop("experiment_name") != grpo["trainer"].pop("experiment_name")
    assert after_sft == grpo


SIGNAL_VARIANTS = {  # GRPO signal keeping (rl/signal): what each variant changes, and nothing else
    "qwen25vl7b_grpo_dapo.yaml": {
        "algorithm.filter_groups.enable": True,
        "algorithm.filter_groups.metric": "acc",
        "algorithm.filter_groups.max_num_gen_batches": 4,
    },
    "qwen25vl7b_grpo_replay.yaml": {
        "trainer.v1.sampler.sampler_kwargs.signal.replay.enable": True,
        "trainer.v1.sampler.sampler_kwargs.signal.replay.max_age": 4,
    },
    "qwen25vl7b_grpo_curriculum.yaml": {
        "data.sampler.class_path": "pkg://rl.signal.curriculum",
        "data.sampler.class_name": "PassRateCurriculum",
        "data.sampler.band": [0.2, 0.8],
        "data.sampler.key": "pism_bucket",
        "data.sampler.prior_means.easy": 0.9,
        "data.sampler.prior_means.medium": 0.6,
        "data.sampler.prior_means.hard": 0.3,
        "data.sampler.prior_means.unsolved": 0.05,
        "data.sampler.prior_strength": 2.0,
        "data.dataloader_num_workers": 0,
        # verl's workers load the data.sampler hook
        "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES": "rl.verl_fixes,rl.sampler",
    },
}


@pytest.mark.parametrize("variant", sorted(SIGNAL_VARIANTS))
def test_signal_variants_differ_from_the_grpo_recipe_in_their_own_keys_only(variant):
    cli = _placeholders(GRPO)

    def resolved(recipe: Path) -> dict:
        return flatten(OmegaConf.to_container(_compose(recipe, cli)[1], resolve=True))

    base, changed = resolved(GRPO), resolved(RECIPES / variant)
    diff = {
        k: changed.get(k, (False, None))[1]
        for k in base.keys() | changed.keys()
        if base.get(k) != changed.get(k)
    }
    for name in ("trainer.experiment_name", "actor_rollout_ref.rollout.trace.experiment_name"):
        assert diff.pop(name) == variant.removesuffix(".yaml")
    # the filter's settings reach rl.signal's buffer too (sampler_kwargs interpolate algorithm.filter_groups)
    mirrored = {
        f"trainer.v1.sampler.sampler_kwargs.{k.split('.', 1)[1]}": v
        for k, v in diff.items()
        if k.startswith("algorithm.filter_groups.")
    }
    assert diff == {**SIGNAL_VARIANTS[variant], **mirrored}


def test_typos_fail_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.actor\.kl_loss_coeff"):
        _compose(GRPO, _placeholders(GRPO) + ["actor_rollout_ref.actor.kl_loss_coeff=0.1"])
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        _compose(SFT, _placeholders(SFT) + ["optim.learning_rate=1e-6"])
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"hardmode:\n  extends: {GRPO}\ndata:\n  max_promt_length: 4096\n")
    with pytest.raises(ConfigError, match=r"data\.max_promt_length"):
        _compose(variant, _placeholders(GRPO))
    with pytest.raises(ConfigError, match=r"hardmode\.cpus"):
        plan_sft(SFT, _placeholders(SFT) + ["hardmode.cpus=true"], environ=NO_RAY)


def test_toy_sft_runs_verls_sft_trainer_on_the_cpu_platform():
    plan, cfg = _compose(TOY_SFT)
    assert plan.env["VERL_PLATFORM"] == "cpu" and plan.env["VERL_ENGINE_DEVICE"] == "cuda"
    assert plan.env["VERL_USE_EXTERNAL_MODULES"].split(",")[0] == "rl.cpu.plugin"  # first: it checks versions
    assert cfg.trainer.device == "cpu" and cfg.engine.strategy == "fsdp2" and not cfg.engine.use_torch_compile
    assert cfg.model.override_config.attn_implementation == "sdpa" and not cfg.model.use_remove_padding
    assert cfg.engine.mixed_precision.param_dtype == "fp32"  # the recipe's; verl would compute in bf16
    # a recipe or command-line value wins over the CPU default
    plan, cfg = _compose(TOY_SFT, _placeholders(TOY_SFT) + ["engine.use_torch_compile=true"])
    assert cfg.engine.use_torch_compile is True


def test_extends_merges_nested_keys_and_refuses_loops_and_missing_files(tmp_path):
    (tmp_path / "base.yaml").write_text(
        textwrap.dedent(
            """
            hardmode:
              verl_modules: [a.plugin]
            actor_rollout_ref:
              actor: {optim: {lr: 1.0e-6}, ppo_mini_batch_size: 8}
              rollout: {name: vllm}
            """
        )
    )
    (tmp_path / "child.yaml").write_text(
        "hardmode:\n  extends: base.yaml\nactor_rollout_ref:\n  actor:\n    optim:\n      lr: 2.0e-6\n"
    )
    hardmode, recipe = load_recipe(tmp_path / "child.yaml")
    assert hardmode == {"verl_modules": ["a.plugin"]}
    assert recipe["actor_rollout_ref"] == {
        "actor": {"optim": {"lr": 2e-6}, "ppo_mini_batch_size": 8},
        "rollout": {"name": "vllm"},
    }
    (tmp_path / "loop.yaml").write_text("hardmode:\n  extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("hardmode:\n  extends: loop.yaml\n")
    with pytest.raises(ConfigError, match=r"hardmode\.extends.*extends itself"):
        load_recipe(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("hardmode:\n  extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"hardmode\.extends.*recipe not found"):
        load_recipe(tmp_path / "orphan.yaml")


def test_sft_private_cluster_unless_one_is_given():
    assert plan_sft(SFT, _placeholders(SFT), environ=NO_RAY).env["RAY_ADDRESS"] == "local"
    joined = plan_sft(SFT, _placeholders(SFT), environ={"RAY_ADDRESS": "http://head:8265"})
    assert "RAY_ADDRESS" not in joined.env  # the job's own address is inherited
    hooked = plan_sft(
        SFT,
        [*_placeholders(SFT), "hardmode.verl_modules=[b.mod]"],
        environ={"VERL_USE_EXTERNAL_MODULES": "a.mod,b.mod"},
    )
    assert hooked.env["VERL_USE_EXTERNAL_MODULES"] == "rl.verl_fixes,a.mod,b.mod"


def test_sft_dry_run_prints_verls_sft_command(tmp_path):
    cli = [
        "model.path=/models/Qwen2.5-VL-7B-Instruct",
        "data.train_files=/sel/sft/verl_sft/train.parquet",
        "trainer.default_local_dir=/ckpt/sft hard",  # a space: quoted in the printed line
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "rl", "sft", "--config", str(SFT), "--dry-run", *cli],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    command, config = proc.stdout.split("\n", 1)
    words = shlex.split(command)
    assert words[:6] == [
        "RAY_ADDRESS=local",
        "VERL_FILE_LOGGER_ROOT=outputs/rl",
        "VERL_USE_EXTERNAL_MODULES=rl.verl_fixes",
        "python",
        "-m",
        VERL_SFT_ENTRY,
    ]
    overrides = words[5:]
    assert overrides[-3:] == cli  # the command line last, verbatim
    assert {"optim.lr=1e-06", "optim.lr_scheduler_type=cosine", "trainer.total_epochs=5"} <= set(overrides)
    assert "checkpoint.save_contents=[model,optimizer,extra,hf_model]" in overrides
    assert not any(o.startswith(("model.path=???", "data.train_files=???")) for o in overrides)
    printed = yaml.safe_load(config)
    assert printed["optim"]["lr"] == pytest.approx(PAPER_SFT_LR)
    assert printed["trainer"]["default_local_dir"] == "/ckpt/sft hard"


def test_sft_dry_run_reports_a_typo_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl",
            "sft",
            "--config",
            str(SFT),
            "--dry-run",
            "model.path=/m",
            "data.train_files=/t",
            "trainer.default_local_dir=/c",
            "trainer.total_epoch=2",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("python -m rl sft: Could not override 'trainer.total_epoch'")
