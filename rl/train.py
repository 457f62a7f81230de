"""Train a VLM with verl's GRPO trainer from a hardmode recipe.

    python -m rl train --config configs/rl/toy_cpu.yaml [--dry-run] [key=value ...]

A recipe is a YAML file mirroring verl's ``ppo_trainer`` config (``verl/trainer/config/ppo_trainer.yaml``)
with the keys it changes, plus a ``hardmode:`` section for this project's switches. ``key=value``
arguments are Hydra overrides for verl (``+key=value`` adds a key verl lacks) or, under ``hardmode.``,
for that section. The result is one command, printed first and then executed in place of this
process: ``python -m verl.trainer.main_ppo <overrides>``, verl's own entry point, unmodified. The same
command runs locally and as a Ray job (``ray job submit --working-dir . -- python -m rl train ...``).

Precedence, lowest first: verl's defaults, what ``hardmode`` implies (e.g. the CPU path), the recipe,
the command line. A recipe key written ``+name`` is added to verl's config instead of overridden.
Every key is checked against verl's config before anything starts (a typo fails naming the key), and
keys the recipe leaves as ``???`` must be given on the command line, and verl's own
``validate_config`` runs on the result. ``hardmode.extends: base.yaml`` makes a recipe a variant of
another: it lists only what differs.

GRPO signal keeping (:mod:`rl.signal`): with the sync trainer, verl's replay-buffer hook
(``trainer.v1.sampler.custom_sampler``) gets ``rl.signal.buffer.SignalReplayBuffer``, so every run logs
``signal/effective_ratio`` per step; ``hardmode.signal`` adds a band to verl's DAPO filter and selective
replay, and ``data.sampler`` = ``PassRateCurriculum`` a curriculum that learns from the rollouts.

Ray: unless ``RAY_ADDRESS`` is set (``ray job submit`` sets it) or the recipe names
``ray_kwargs.ray_init.address``, the trainer starts a private local cluster (``address=local``) and
never joins another cluster running on the same machine.

Data files: verl 0.9.1 copies only ``hdfs://`` files itself (``verl.utils.fs.copy_to_local``). Any other
URI in ``data.train_files`` / ``data.val_files`` that pyarrow opens (``s3://``, ``gs://``, ...) is
downloaded first, into ``$HARDMODE_CACHE/inputs`` (``curate.storage.stage``: again only when the
source changed), and verl gets the local copy. On a multi-node cluster that cache must be on storage
the node running verl's driver task sees (``HARDMODE_CACHE`` on a shared filesystem).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from curate.config import ConfigError
from rl.signal.config import SignalConfig

__all__ = [
    "HardmodeSection",
    "TrainPlan",
    "add_arguments",
    "add_recipe_arguments",
    "as_overrides",
    "check_given",
    "compose",
    "environ_modules",
    "file_logger_env",
    "flatten",
    "hardmode_section",
    "load_recipe",
    "localize_data_files",
    "main",
    "override_key",
    "plan_training",
    "run",
    "split_cli",
    "take_worker_modules",
    "verl_config",
    "validate_like_verl",
]

VERL_ENTRY = "verl.trainer.main_ppo"
VERL_CONFIG_NAME = "ppo_trainer"
MISSING = "???"
EXTERNAL_MODULES = "VERL_USE_EXTERNAL_MODULES"  # verl imports these modules inside `import verl`
# verl 0.9.1 ignores data.sampler.class_path; this module's hook makes it build that sampler again.
SAMPLER_HOOK = "rl.sampler"
# A verl 0.9.1 bug fix every run needs on every platform (mRoPE position ids of equal-length batches).
VERL_FIXES = "rl.verl_fixes"
# A toy preset's name as this key's value (toy, toy-study: curate.toy.presets) becomes the trained
# model's directory (curate.toy.cache), in a recipe or on the command line.
MODEL_PATH_KEY = "actor_rollout_ref.model.path"
WORKER_MODULES_KEY = f"ray_kwargs.ray_init.runtime_env.env_vars.{EXTERNAL_MODULES}"
# verl's replay-buffer hook and what rl.signal's buffer reads from the rest of verl's config.
CUSTOM_SAMPLER = "trainer.v1.sampler.custom_sampler"
SIGNAL_BUFFER = ("pkg://rl.signal.buffer", "SignalReplayBuffer")
SIGNAL_KWARGS = {
    "filter_groups": "${algorithm.filter_groups}",
    "train_batch_size": "${data.train_batch_size}",
    "seed": "${data.seed}",
    "norm_adv_by_std_in_grpo": "${algorithm.norm_adv_by_std_in_grpo}",
}
CURRICULUM = "PassRateCurriculum"
METRICS_ROOT = "outputs/rl"  # where verl's file logger writes <project>/<experiment>.jsonl by default
_UNQUOTED = re.compile(
    r"[A-Za-z_/.][A-Za-z0-9_.\-/:]*|\$\{[^{}'\\]+\}"
)  # plain words, paths, ${interpolation}
_HYDRA_WORDS = {"true", "false", "null", "none", "nan", "inf"}


@dataclass
class HardmodeSection:
    """The recipe's ``hardmode:`` section (everything else in a recipe is verl's)."""

    # Run verl on this machine's CPU (rl.cpu): verl's platform, rollout and env settings for
    # machines without an accelerator. Tests and the offline demo; never on a GPU cluster.
    cpu: bool = False
    # Modules verl imports in every process (VERL_USE_EXTERNAL_MODULES), e.g. plugins that register
    # with verl's registries. rl.cpu.plugin (hardmode.cpu) and rl.sampler (data.sampler.class_path)
    # are added when needed, rl.verl_fixes always; so are the ones already in the environment.
    verl_modules: list[str] = field(default_factory=list)
    # GRPO signal keeping (rl.signal): band-pass group filtering and selective replay. Always on for
    # the sync trainer is its measurement: signal/effective_ratio and friends, every step.
    signal: SignalConfig = field(default_factory=SignalConfig)


@dataclass
class TrainPlan:
    """What ``python -m rl train`` runs: verl's entry point with these overrides and environment."""

    overrides: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # verl's entry module and the Hydra config it composes (the GRPO trainer unless told otherwise).
    entry: str = VERL_ENTRY
    config_name: str = VERL_CONFIG_NAME

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.entry, *self.overrides]

    def shell(self) -> str:
        """The command as one shell line, environment first (what gets printed)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(["python", "-m", self.entry, *self.overrides])


def hydra_value(value: Any) -> str:
    """``value`` written in Hydra's override grammar, keeping its type (a string stays a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _UNQUOTED.fullmatch(value) and value.lower() not in _HYDRA_WORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot pass a {type(value).__name__} to verl: {value!r}")


def flatten(node: Mapping[str, Any], prefix: str = "", add: bool = False) -> dict[str, tuple[bool, Any]]:
    """Dotted key -> (added with '+', value) for every leaf of a nested recipe mapping."""
    leaves: dict[str, tuple[bool, Any]] = {}
    for raw_key, value in node.items():
        key = str(raw_key)
        is_add = add or key.startswith("+")
        path = f"{prefix}{key.lstrip('+')}"
        if isinstance(value, Mapping) and value:
            leaves.update(flatten(value, path + ".", is_add))
        else:
            leaves[path] = (is_add, value)
    return leaves


def override_key(override: str) -> str:
    """The dotted key a Hydra command-line override sets (``+a.b=1`` -> ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: nested mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        both_maps = isinstance(value, Mapping) and isinstance(below, Mapping) and value
        merged[key] = _deep_merge(below, value) if both_maps else value
    return merged


def load_recipe(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hardmode section, verl part) of a recipe file.

    ``hardmode.extends: other.yaml`` (relative to the recipe) starts from that recipe and changes only
    what this one lists, so a variant (e.g. GRPO after SFT) states its differences, not a copy.
    """
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise ConfigError(f"recipe not found: {path}")
    recipe = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} is not a mapping of config keys")
    hardmode = recipe.pop("hardmode", None) or {}
    base = hardmode.pop("extends", None)
    if base is None:
        return hardmode, recipe
    chain = (*_chain, Path(path).resolve())
    base_path = Path(path).parent / str(base)
    if base_path.resolve() in chain:
        raise ConfigError(f"config key 'hardmode.extends': {path} extends itself (through {base})")
    if not base_path.is_file():
        raise ConfigError(f"config key 'hardmode.extends': recipe not found: {base_path}")
    base_hardmode, base_recipe = load_recipe(base_path, chain)
    return _deep_merge(base_hardmode, hardmode), _deep_merge(base_recipe, recipe)


def hardmode_section(section: Mapping[str, Any], cli: Sequence[str], schema: type = HardmodeSection) -> Any:
    """The recipe's ``hardmode:`` section and its ``hardmode.*`` overrides, typed by ``schema``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(schema),
            section,
            OmegaConf.from_dotlist([o.removeprefix("hardmode.") for o in cli]),
        )
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"config key 'hardmode.{key}': {str(err).splitlines()[0]}") from None


def split_cli(cli_overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(``hardmode.*`` overrides, verl's overrides) of a command line."""
    hardmode = [o for o in cli_overrides if o.startswith("hardmode.")]
    return hardmode, [o for o in cli_overrides if not o.startswith("hardmode.")]


def compose(
    recipe_path: str | Path, cli_overrides: Sequence[str], schema: type = HardmodeSection
) -> tuple[Any, dict[str, tuple[bool, Any]], list[str]]:
    """(typed ``hardmode:`` section with its command-line overrides, the recipe's verl keys flattened,
    verl's command-line overrides) of a recipe and a command line."""
    section, verl_part = load_recipe(recipe_path)
    hardmode_cli, verl_cli = split_cli(cli_overrides)
    return hardmode_section(section, hardmode_cli, schema), flatten(verl_part), verl_cli


def file_logger_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Where verl's file logger writes (else ``./<project>/`` in the cwd), unless the caller said."""
    if "VERL_FILE_LOGGER_PATH" in environ or "VERL_FILE_LOGGER_ROOT" in environ:
        return {}
    return {"VERL_FILE_LOGGER_ROOT": METRICS_ROOT}


def environ_modules(environ: Mapping[str, str]) -> list[str]:
    """The verl plugin modules the caller's environment already names."""
    return _module_list(environ.get(EXTERNAL_MODULES, ""))


def _module_list(value: Any) -> list[str]:
    """``'a.mod,b.mod'`` (Hydra-quoted or not, or a list) as module names."""
    items = value if isinstance(value, (list, tuple)) else str(value).strip("'\"").split(",")
    return [m.strip() for m in items if str(m).strip()]


def take_worker_modules(recipe: dict[str, tuple[bool, Any]], verl_cli: list[str]) -> list[str]:
    """Modules the recipe or command line name for the workers' ``VERL_USE_EXTERNAL_MODULES``.

    They are removed from both and joined to the modules every run needs, so that naming a plugin
    there adds it instead of silently dropping the verl fix (or the CPU plugin) the run depends on.
    """
    modules = _module_list(recipe.pop(WORKER_MODULES_KEY, (False, ""))[1])
    for override in [o for o in verl_cli if override_key(o) == WORKER_MODULES_KEY]:
        verl_cli.remove(override)
        modules += _module_list(override.split("=", 1)[1])
    return modules


def check_given(merged: Mapping[str, tuple[bool, Any]], cli_keys: set[str]) -> None:
    """Fail naming every key the recipe leaves ``???`` that the command line does not set."""
    unset = [k for k, (_, v) in merged.items() if v == MISSING and k not in cli_keys]
    if unset:
        raise ConfigError(
            f"config key '{unset[0]}' must be given on the command line (the recipe leaves it {MISSING})"
            + (f"; also {', '.join(unset[1:])}" if unset[1:] else "")
        )


def as_overrides(merged: Mapping[str, tuple[bool, Any]], verl_cli: Sequence[str]) -> list[str]:
    """Hydra overrides: every composed key the command line does not set, then the command line verbatim."""
    cli_keys = {override_key(o) for o in verl_cli}
    composed = [
        f"{'+' if add else ''}{key}={hydra_value(value)}"
        for key, (add, value) in merged.items()
        if key not in cli_keys
    ]
    return composed + list(verl_cli)


def _toy_model_path(name: Any, key: str = MODEL_PATH_KEY) -> str | None:
    """The trained directory of the toy preset ``name`` (``toy``, ``toy-study``; built if needed) or None."""
    try:
        from curate.modeling import is_toy_model

        if not is_toy_model(name):
            return None
        from curate.toy.cache import toy_model_path
    except ImportError as err:
        raise ConfigError(f"config key '{key}': {name!r} needs curate.toy ({err})") from None
    except ValueError as err:  # "toy-…" naming no preset
        raise ConfigError(f"config key '{key}': {err}") from None
    return str(toy_model_path(preset=name))


def plan_training(
    recipe_path: str | Path, cli_overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> TrainPlan:
    """Compose a recipe and command-line overrides into the verl command to run (nothing is started)."""
    environ = os.environ if environ is None else environ
    hardmode, recipe, verl_cli = compose(recipe_path, cli_overrides)
    named_modules = take_worker_modules(recipe, verl_cli)
    cli_keys = {override_key(o) for o in verl_cli}
    ray_address_given = "ray_kwargs.ray_init.address" in recipe or "ray_kwargs.ray_init.address" in cli_keys
    local_cluster = not environ.get("RAY_ADDRESS") and not ray_address_given

    implied: dict[str, tuple[bool, Any]] = {}
    env = file_logger_env(environ)
    if local_cluster:
        implied["ray_kwargs.ray_init.address"] = (True, "local")
    hooks = [VERL_FIXES, *environ_modules(environ), *hardmode.verl_modules, *named_modules]
    if hardmode.cpu:
        from rl.cpu import cpu_env, cpu_overrides

        for key, value in cpu_overrides(local_cluster).items():
            implied[key.lstrip("+")] = (key.startswith("+"), value)
        cpu = cpu_env()
        hooks.insert(0, cpu.pop(EXTERNAL_MODULES))  # before any other plugin: it checks versions
        env.update(cpu)
    if "data.sampler.class_path" in recipe or "data.sampler.class_path" in cli_keys:
        hooks.append(SAMPLER_HOOK)
    env[EXTERNAL_MODULES] = ",".join(dict.fromkeys(hooks))
    # The workers' environment too: on a cluster they are not children of this process.
    for name, value in env.items():
        implied[f"ray_kwargs.ray_init.runtime_env.env_vars.{name}"] = (True, value)

    implied.update(_signal_keys(hardmode.signal, recipe, verl_cli))
    merged = {**implied, **recipe}
    check_given(merged, cli_keys)
    resolve_toy_model(merged, verl_cli, MODEL_PATH_KEY)
    return TrainPlan(overrides=as_overrides(merged, verl_cli), env=env)


def resolve_toy_model(merged: dict[str, tuple[bool, Any]], verl_cli: list[str], key: str) -> None:
    """A toy preset's name at ``key`` (recipe or command line) becomes its trained directory, in place."""
    if key in merged and key not in {override_key(o) for o in verl_cli}:
        add, value = merged[key]
        toy = _toy_model_path(value, key)
        if toy is not None:
            merged[key] = (add, toy)
    for i, override in enumerate(verl_cli):
        if override_key(override) == key:
            head, value = override.split("=", 1)
            toy = _toy_model_path(value.strip("'\""), key)
            if toy is not None:
                verl_cli[i] = f"{head}={hydra_value(toy)}"


def _given(key: str, recipe: Mapping[str, tuple[bool, Any]], verl_cli: Sequence[str], default: Any) -> Any:
    """A verl key's value as the command line or else the recipe sets it (``default``: verl's)."""
    for override in reversed(verl_cli):
        if override_key(override) == key:
            return override.split("=", 1)[1].strip("'\"")
    return recipe[key][1] if key in recipe else default


def _signal_keys(
    signal: SignalConfig, recipe: Mapping[str, tuple[bool, Any]], verl_cli: Sequence[str]
) -> dict[str, tuple[bool, Any]]:
    """verl keys installing rl.signal's replay buffer (sync trainer, no custom sampler of the user's);
    a ``hardmode.signal`` option or the curriculum that needs it, where it cannot be installed, fails."""
    from dataclasses import asdict

    signal.validate()
    mode = str(_given("trainer.v1.trainer_mode", recipe, verl_cli, "sync"))
    own = _given(f"{CUSTOM_SAMPLER}.path", recipe, verl_cli, None)
    curriculum = _given("data.sampler.class_name", recipe, verl_cli, None) == CURRICULUM
    needs = [
        name
        for name, wanted in (
            ("hardmode.signal.band", signal.band is not None),
            ("hardmode.signal.replay.enable", signal.replay.enable),
            ("data.sampler.class_name", curriculum),
        )
        if wanted
    ]
    if mode != "sync" or own not in (None, "null", SIGNAL_BUFFER[0]):
        if needs:
            why = f"trainer.v1.trainer_mode={mode}" if mode != "sync" else f"{CUSTOM_SAMPLER}.path={own}"
            raise ConfigError(
                f"config key '{needs[0]}': needs rl.signal's replay buffer, which {why} rules out"
            )
        return {}
    filtering = str(_given("algorithm.filter_groups.enable", recipe, verl_cli, False)).lower() == "true"
    if signal.band is not None and not filtering:
        raise ConfigError(
            "config key 'hardmode.signal.band': narrows verl's group filter; "
            "set algorithm.filter_groups.enable=true"
        )
    kwargs = {"signal": asdict(signal), **SIGNAL_KWARGS}
    # Dataloader workers prefetch (workers × 2) batches of indices: the curriculum would draw them from
    # estimates that many steps old. A recipe or the command line may still set them.
    fresh_draws = {"data.dataloader_num_workers": (False, 0)} if curriculum else {}
    return {
        **fresh_draws,
        f"{CUSTOM_SAMPLER}.path": (False, SIGNAL_BUFFER[0]),
        f"{CUSTOM_SAMPLER}.name": (False, SIGNAL_BUFFER[1]),
        **{f"trainer.v1.sampler.sampler_kwargs.{k}": (True, v) for k, v in kwargs.items()},
    }


def _verl_config_dir() -> str:
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("verl is not installed (bash launch/bootstrap.sh)")
    return os.path.join(spec.submodule_search_locations[0], "trainer", "config")


def verl_config(plan: TrainPlan) -> Any:
    """verl's config composed with the plan's overrides, as verl's Hydra entry point will see it.

    Fails with a ``ConfigError`` naming the key for overrides verl's config does not have, and for
    mandatory (``???``) keys left unset that verl's own defaults do not leave unset.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=_verl_config_dir(), version_base=None):
        try:
            cfg = compose(config_name=plan.config_name, overrides=plan.overrides)
        except HydraException as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        unset_by_default = OmegaConf.missing_keys(compose(config_name=plan.config_name))
    unset = sorted(OmegaConf.missing_keys(cfg) - unset_by_default) + sorted(
        {"actor_rollout_ref.rollout.name", "actor_rollout_ref.model.path"} & OmegaConf.missing_keys(cfg)
    )
    if unset:
        raise ConfigError(f"config key '{unset[0]}' must be set (it is {MISSING})")
    return cfg


def validate_like_verl(plan: TrainPlan, cfg: Any) -> None:
    """The checks verl's ``main_ppo`` runs before it starts anything (batch sizes against GPUs, micro
    batches, the critic and reference model a recipe implies), as a ``ConfigError``."""
    if plan.config_name != "ppo_trainer":
        return
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:  # verl prints a line per check and warns of what verl itself will warn of at start
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (AssertionError, ValueError) as err:
        raise ConfigError(f"verl's validate_config: {err}") from None


DATA_FILE_KEYS = ("data.train_files", "data.val_files")


def _needs_copy(path: Any) -> bool:
    """A data file URI verl cannot read itself (it copies ``hdfs://`` only)."""
    from curate.storage import is_uri

    return isinstance(path, str) and is_uri(path) and not path.startswith("hdfs://")


def localize_data_files(plan: TrainPlan, cfg: Any, cache: Path | None = None) -> TrainPlan:
    """The plan with every ``data.train_files`` / ``data.val_files`` URI verl cannot read (``s3://``,
    ``gs://``, ...) replaced by a local copy (``curate.storage.stage``; ``cache`` defaults to
    ``$HARDMODE_CACHE/inputs``). ``cfg`` is verl's composed config (:func:`verl_config`), so values
    that come from the recipe or an interpolation are seen as verl will see them."""
    from omegaconf import OmegaConf

    from curate.storage import stage

    local: dict[str, Any] = {}
    for key in DATA_FILE_KEYS:
        value = OmegaConf.select(cfg, key)
        values = list(value) if OmegaConf.is_list(value) else [value]
        if any(_needs_copy(v) for v in values):
            copied = [stage(v, key, cache) if _needs_copy(v) else v for v in values]
            local[key] = copied if OmegaConf.is_list(value) else copied[0]
    if not local:
        return plan
    overrides = [o for o in plan.overrides if override_key(o) not in local]
    overrides += [f"{key}={hydra_value(value)}" for key, value in local.items()]
    return replace(plan, overrides=overrides)


def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_help: str, overrides_help: str) -> None:
    """``--config``, ``--dry-run`` and ``key=value ...``: the arguments of every verl-recipe command."""
    parser.add_argument("--config", required=True, help=recipe_help)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the composed command and verl config, start nothing"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(
        parser, "recipe YAML (configs/rl/*.yaml)", "verl config overrides (Hydra syntax) or hardmode.* keys"
    )


def run(prog: str, plan_of: Callable[[], TrainPlan], dry_run: bool) -> int:
    """Plan, check against verl's config, print the command, then (unless ``dry_run``) exec it."""
    from omegaconf import OmegaConf

    try:
        plan = plan_of()
        cfg = verl_config(plan)
        validate_like_verl(plan, cfg)
        if not dry_run:
            plan = localize_data_files(plan, cfg)
            cfg = verl_config(plan)
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    print(plan.shell(), flush=True)
    if dry_run:
        print(OmegaConf.to_yaml(cfg), flush=True)
        return 0
    os.execvpe(sys.executable, plan.command, {**os.environ, **plan.env})
    return 0  # not reached: exec replaces this process


def main(args: argparse.Namespace) -> int:
    return run("python -m rl train", lambda: plan_training(args.config, args.overrides), args.dry_run)
