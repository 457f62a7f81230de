"""``python -m rl train``: recipe + hardmode section + command line composed into verl's command.

The composed overrides are checked against verl's own Hydra config (the one ``main_ppo`` loads), so a
value that reaches verl with the wrong type or a key verl does not have is caught here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curate.config import ConfigError
from rl.train import VERL_ENTRY, TrainPlan, hydra_value, plan_training, verl_config

REPO = Path(__file__).resolve().parents[1]
TOY_CPU = REPO / "configs" / "rl" / "toy_cpu.yaml"
NO_RAY = {}  # an environment without RAY_ADDRESS


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _keys(plan: TrainPlan) -> dict[str, str]:
    return {o.split("=", 1)[0]: o.split("=", 1)[1] for o in plan.overrides}


def test_values_reach_verl_with_their_types(tmp_path):
    recipe = _recipe(
        tmp_path,
        """
        trainer:
          project_name: "2"            # a string that looks like a number
          experiment_name: "it's a 'test'"
          total_training_steps: 3
          logger: [console, file]
          default_hdfs_dir: null
          val_before_train: false
        actor_rollout_ref:
          actor:
            optim:
              lr: 1.0e-06
          rollout:
            name: vllm
          model:
            path: /models/m
            override_config:
              +attn_implementation: sdpa
        data:
          custom_cls:
            path: pkg://rl.cpu.dataset
    """,
    )
    cfg = verl_config(plan_training(recipe, environ=NO_RAY))
    assert cfg.trainer.project_name == "2"
    assert cfg.trainer.experiment_name == "it's a 'test'"
    assert cfg.trainer.total_training_steps == 3
    assert list(cfg.trainer.logger) == ["console", "file"]
    assert cfg.trainer.default_hdfs_dir is None and cfg.trainer.val_before_train is False
    assert cfg.actor_rollout_ref.actor.optim.lr == pytest.approx(1e-6)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.data.custom_cls.path == "pkg://rl.cpu.dataset"


def test_hydra_value_quotes_only_what_needs_it():
    assert hydra_value("toy_cpu") == "toy_cpu"
    assert hydra_value("pkg://rl.reward") == "pkg://rl.reward"
    assert hydra_value("${trainer.n_gpus_per_node}") == "${trainer.n_gpus_per_node}"
    assert hydra_value("/data/a-1.parquet") == "/data/a-1.parquet" and hydra_value("./x") == "./x"
    assert hydra_value("true") == "'true'" and hydra_value("2") == "'2'" and hydra_value("/a b") == "'/a b'"
    assert hydra_value([1, "x", None]) == "[1,x,null]"


def test_precedence_cpu_defaults_then_recipe_then_command_line(tmp_path):
    recipe = _recipe(
        tmp_path,
        """
        hardmode:
          cpu: true
        ray_kwargs:
          ray_init:
            num_cpus: 6                # the recipe beats the CPU default (16)
        trainer:
          n_gpus_per_node: 1
          total_epochs: 2
    """,
    )
    plan = plan_training(recipe, ["trainer.total_epochs=5", "+trainer.extra_key=1"], environ=NO_RAY)
    keys = _keys(plan)
    assert keys["ray_kwargs.ray_init.num_cpus"] == "6"
    assert keys["actor_rollout_ref.rollout.name"] == "hf"  # implied by hardmode.cpu
    assert "trainer.total_epochs" in keys and plan.overrides.count("trainer.total_epochs=5") == 1
    assert plan.overrides[-2:] == ["trainer.total_epochs=5", "+trainer.extra_key=1"]  # verbatim, last
    assert "trainer.total_epochs=2" not in plan.overrides  # each key set once
    assert plan.env["VERL_USE_EXTERNAL_MODULES"] == "rl.cpu.plugin,rl.verl_fixes"
    assert "VERL_FILE_LOGGER_ROOT" not in plan_training(recipe, environ={"VERL_FILE_LOGGER_PATH": "m"}).env
    cfg = verl_config(TrainPlan(overrides=plan.overrides[:-1], env=plan.env))
    assert cfg.trainer.total_epochs == 5 and cfg.ray_kwargs.ray_init.num_gpus == 1
    # the workers' environment travels with Ray's runtime env (workers on other nodes are not children)
    assert dict(cfg.ray_kwargs.ray_init.runtime_env.env_vars) == plan.env


def test_private_cluster_unless_told_to_join_one(tmp_path):
    recipe = _recipe(tmp_path, "hardmode:\n  cpu: true\n")
    local = _keys(plan_training(recipe, environ=NO_RAY))
    assert local["+ray_kwargs.ray_init.address"] == "local"
    assert "+ray_kwargs.ray_init.num_gpus" in local
    joined = _keys(plan_training(recipe, environ={"RAY_ADDRESS": "http://head:8265"}))
    assert not any(
        k.lstrip("+").startswith(("ray_kwargs.ray_init.address", "ray_kwargs.ray_init.num_")) for k in joined
    )
    named = _keys(plan_training(recipe, ["+ray_kwargs.ray_init.address=auto"], environ=NO_RAY))
    assert named["+ray_kwargs.ray_init.address"] == "auto"
    assert "+ray_kwargs.ray_init.num_gpus" not in named


def test_verl_plugin_modules_are_merged_in_order(tmp_path):
    recipe = _recipe(
        tmp_path,
        """
        hardmode:
          cpu: true
          verl_modules: [my.plugin]
        data:
          sampler:
            +class_path: pkg://rl.sampler
            +class_name: DifficultySampler
        """,
    )
    plan = plan_training(recipe, environ={"VERL_USE_EXTERNAL_MODULES": "site.hook,my.plugin"})
    modules = "rl.cpu.plugin,rl.verl_fixes,site.hook,my.plugin,rl.sampler"  # CPU plugin first: it checks versions
    assert plan.env["VERL_USE_EXTERNAL_MODULES"] == modules
    cfg = verl_config(plan)
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == modules
    plain = _recipe(tmp_path, "actor_rollout_ref:\n  rollout:\n    name: vllm\n")
    with_sampler = plan_training(plain, ["+data.sampler.class_path=pkg://rl.sampler"], environ=NO_RAY)
    assert with_sampler.env["VERL_USE_EXTERNAL_MODULES"] == "rl.verl_fixes,rl.sampler"


def test_workers_modules_named_on_the_command_line_join_the_needed_ones(tmp_path):
    """Naming the workers' plugin list adds to it: the verl fix and the CPU plugin stay loaded."""
    recipe = _recipe(tmp_path, "hardmode:\n  cpu: true\n")
    key = "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES"
    plan = plan_training(recipe, [f"+{key}='rl.cpu.plugin,rl.sampler'"], environ=NO_RAY)
    modules = "rl.cpu.plugin,rl.verl_fixes,rl.sampler"
    assert plan.env["VERL_USE_EXTERNAL_MODULES"] == modules
    assert [o for o in plan.overrides if key in o] == [f"+{key}='{modules}'"]  # once, quoted for Hydra
    assert verl_config(plan).ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == modules


def test_gpu_recipe_gets_no_cpu_settings(tmp_path):
    plan = plan_training(
        _recipe(tmp_path, "actor_rollout_ref:\n  rollout:\n    name: vllm\n"), environ=NO_RAY
    )
    # metrics under outputs/, not in the cwd; the verl fix every platform needs
    assert plan.env == {"VERL_FILE_LOGGER_ROOT": "outputs/rl", "VERL_USE_EXTERNAL_MODULES": "rl.verl_fixes"}
    assert not any("rl.cpu" in o or "VERL_PLATFORM" in o for o in plan.overrides)
    assert _keys(plan)["actor_rollout_ref.rollout.name"] == "vllm"


@pytest.mark.parametrize(
    ("recipe", "cli", "message"),
    [
        ("data:\n  train_fils: x\n", [], "Could not override 'data.train_fils'"),
        ("data:\n  train_files: x\n", ["trainer.toal_epochs=1"], "Could not override 'trainer.toal_epochs'"),
        ("hardmode:\n  gpu: true\n", [], "hardmode.gpu"),
        ("hardmode:\n  cpu: maybe\n", [], "hardmode.cpu"),
        ("data:\n  train_files: ???\n", [], "config key 'data.train_files' must be given"),
    ],
)
def test_config_mistakes_fail_naming_the_key(tmp_path, recipe, cli, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        verl_config(plan_training(_recipe(tmp_path, recipe), cli, environ=NO_RAY))


def test_toy_model_path_is_resolved_to_the_cached_directory(tmp_path, monkeypatch):
    cache = pytest.importorskip("curate.toy.cache")
    monkeypatch.setattr(cache, "toy_model_path", lambda **_: tmp_path / "toy-model" / "abc")
    plan = plan_training(TOY_CPU, ["data.train_files=/data/t.parquet"], environ=NO_RAY)
    assert _keys(plan)["actor_rollout_ref.model.path"] == f"{tmp_path}/toy-model/abc"
    given = plan_training(TOY_CPU, ["data.train_files=t", "actor_rollout_ref.model.path=/m"], environ=NO_RAY)
    assert "actor_rollout_ref.model.path=/m" in given.overrides


def test_missing_recipe_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        plan_training(tmp_path / "nope.yaml")


def test_toy_cpu_recipe_composes_into_a_cpu_grpo_run():
    plan = plan_training(
        TOY_CPU, ["data.train_files=/data/t.parquet", "actor_rollout_ref.model.path=/m"], environ=NO_RAY
    )
    cfg = verl_config(plan)
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True  # reference model + KL loss
    assert cfg.actor_rollout_ref.rollout.name == "hf" and cfg.actor_rollout_ref.actor.strategy == "fsdp2"
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.model.use_remove_padding is False
    for role in ("actor", "ref"):  # fp32 compute, like the fp32 rollout (verl's FSDP default is bf16)
        assert dict(cfg.actor_rollout_ref[role].fsdp_config.mixed_precision) == {
            "param_dtype": "fp32",
            "reduce_dtype": "fp32",
            "buffer_dtype": "fp32",
        }
    assert cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 1
    assert cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert cfg.data.val_files == "/data/t.parquet" and cfg.data.dataloader_num_workers == 0
    assert cfg.actor_rollout_ref.rollout.agent.num_workers == 1 and cfg.reward.num_workers == 1
    assert cfg.reward.custom_reward_function.path == "pkg://rl.reward"
    assert cfg.ray_kwargs.ray_init.address == "local" and cfg.ray_kwargs.ray_init.num_gpus == 1


def test_command_line_dry_run_prints_the_verl_command_and_config(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl",
            "train",
            "--config",
            str(TOY_CPU),
            "--dry-run",
            "data.train_files=/data/t.parquet",
            "actor_rollout_ref.model.path=/m",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    command, config = proc.stdout.split("\n", 1)
    assert f"VERL_PLATFORM=cpu VERL_USE_EXTERNAL_MODULES=rl.cpu.plugin,rl.verl_fixes python -m {VERL_ENTRY}" in command
    assert "VERL_FILE_LOGGER_ROOT=outputs/rl" in command
    assert "data.train_files=/data/t.parquet" in command
    assert "adv_estimator: grpo" in config and "name: hf" in config
    # verl's validate_config ran, quietly: its check lines and warnings are verl's to print at start
    assert "validate_config" not in proc.stdout and "Warning" not in proc.stderr, proc.stderr[-2000:]


def test_command_line_reports_config_errors_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rl", "train", "--config", str(TOY_CPU), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "python -m rl train: config key 'data.train_files' must be given on the "
        "command line (the recipe leaves it ???)"
    )
