"""Named toy models (curate.toy.presets): one name → (architecture, settings) lookup used everywhere.

Fast: nothing here trains a model (``toy_model_path`` is replaced where a path is needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.toy import cache
from curate.toy.model import ToyArchitecture
from curate.toy.presets import DEFAULT_PRESET, PRESETS, UnknownToyModel, is_toy_model, toy_preset
from curate.toy.train import TrainSettings

REPO = Path(__file__).resolve().parents[1]
# The default toy model's key: the demo, the tests and every machine's cache use this directory.
# Adding or changing another preset must never change it. Editing a keyed module's text does (even a
# docstring: curate/scoring moved build_messages), which retrains every machine's toy model once: update
# this only then.
DEFAULT_KEY = "157f185929ecff85"


def test_default_preset_is_the_unchanged_toy_model():
    toy = toy_preset(DEFAULT_PRESET)
    assert DEFAULT_PRESET == "toy"
    assert (toy.arch, toy.settings) == (ToyArchitecture(), TrainSettings())
    assert cache.cache_key(ToyArchitecture(), TrainSettings()) == DEFAULT_KEY


def test_study_preset_is_deeper_and_earlier_with_its_own_key():
    study = toy_preset("toy-study")
    assert study.arch.num_layers >= 3  # CMAB's paper variant averages layers 2..L-1
    assert study.settings.steps < TrainSettings().steps  # an early base checkpoint
    study.arch.validate()
    keys = {cache.cache_key(p.arch, p.settings) for p in PRESETS.values()}
    assert len(keys) == len(PRESETS)


def test_cmab_paper_variant_accepts_the_study_model_only():
    from curate.scoring.cmab import cmab_layers

    assert cmab_layers("paper", toy_preset("toy-study").arch.num_layers)
    with pytest.raises(ValueError, match="at least 3 decoder layers"):
        cmab_layers("paper", toy_preset("toy").arch.num_layers)


@pytest.mark.parametrize("name", ["toy-nope", "toy-Study"])
def test_unknown_names_fail_naming_the_presets(name):
    with pytest.raises(UnknownToyModel, match=rf"unknown toy model '{name}'.*toy-study"):
        toy_preset(name)
    with pytest.raises(UnknownToyModel):
        is_toy_model(name)
    with pytest.raises(UnknownToyModel):
        cache.toy_model_path(preset=name)


def test_other_names_are_not_toy_models(tmp_path, monkeypatch):
    for name in ("Qwen/Qwen2.5-VL-7B-Instruct", "/models/toy-study", "toyota", None, 3):
        assert not is_toy_model(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy-local").mkdir()  # an existing directory is a directory, not a preset
    assert not is_toy_model("toy-local")


def test_toy_model_path_trains_the_named_preset(tmp_path, monkeypatch):
    seen = []

    def fake_train(directory, arch, settings, key, preset=None):
        seen.append((arch, settings, key, preset))
        directory.mkdir(exist_ok=True)
        (directory / cache.METADATA_FILE).write_text("{}")

    monkeypatch.setattr(cache, "_train_into", fake_train)
    study = toy_preset("toy-study")
    path = cache.toy_model_path(tmp_path, preset="toy-study")
    assert path == tmp_path / "toy-model" / cache.cache_key(study.arch, study.settings)
    assert seen == [(study.arch, study.settings, path.name, "toy-study")]
    assert cache.toy_model_path(tmp_path, preset="toy-study") == path  # cached: not trained again
    assert len(seen) == 1


@pytest.fixture
def fake_paths(tmp_path, monkeypatch):
    """toy_model_path → a fake directory per preset (nothing trains)."""
    monkeypatch.setattr(cache, "toy_model_path",
                        lambda cache_dir=None, *, preset=DEFAULT_PRESET, **_: tmp_path / preset)
    return tmp_path


def test_every_entry_point_resolves_the_preset_name(fake_paths, capsys):
    from curate.modeling import resolve_model_path
    from rl.eval import resolve_checkpoint

    for name in PRESETS:
        assert resolve_model_path(name) == str(fake_paths / name)
        assert resolve_checkpoint(name) == str(fake_paths / name)
    assert resolve_model_path("some/model") == "some/model"

    from curate.__main__ import main

    assert main(["toy", "model", "--preset", "toy-study"]) == 0
    assert capsys.readouterr().out.strip() == str(fake_paths / "toy-study")
    with pytest.raises(SystemExit):
        main(["toy", "model", "--preset", "toy-nope"])


def test_rl_train_resolves_a_preset_in_the_recipe_or_on_the_command_line(fake_paths):
    from curate.config import ConfigError
    from rl.train import plan_training

    recipe = REPO / "configs" / "rl" / "toy_cpu.yaml"
    environ = {"PATH": "/usr/bin"}

    def model_path(cli):
        plan = plan_training(recipe, ["data.train_files=/d/t.parquet", *cli], environ=environ)
        found = [o.split("=", 1)[1] for o in plan.overrides if o.startswith("actor_rollout_ref.model.path=")]
        assert len(found) == 1
        return found[0]

    assert model_path([]) == str(fake_paths / "toy")
    assert model_path(["actor_rollout_ref.model.path=toy-study"]) == str(fake_paths / "toy-study")
    assert model_path(["actor_rollout_ref.model.path=/m"]) == "/m"
    with pytest.raises(ConfigError, match="actor_rollout_ref.model.path.*unknown toy model 'toy-nope'"):
        model_path(["actor_rollout_ref.model.path=toy-nope"])


def test_curate_config_accepts_presets_and_names_unknown_ones():
    from curate.config import ConfigError, load_config

    toy = REPO / "configs" / "curate" / "toy.yaml"
    assert load_config(toy, ["engine.model=toy-study"]).engine.model == "toy-study"
    with pytest.raises(ConfigError, match="engine.model.*unknown toy model 'toy-nope'"):
        load_config(toy, ["engine.model=toy-nope"])
    with pytest.raises(ConfigError, match="offline CPU toy model"):
        load_config(toy, ["engine.model=toy-study", "ray.num_gpus=1"])
