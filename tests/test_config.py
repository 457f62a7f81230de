"""Config mistakes fail fast with a message that names the key."""

from __future__ import annotations

import pytest

from curate.config import ConfigError, CurateConfig, load_config


def test_defaults_are_valid():
    cfg = load_config(overrides=["data.format=toy"])
    assert isinstance(cfg, CurateConfig)
    assert cfg.pism.mode == "early_exit" and cfg.pism.k == 10 and cfg.pism.tau == 0.1
    assert cfg.pism.ratios == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.mark.parametrize(
    "override, key",
    [
        ("pism.nope=1", "pism.nope"),
        ("pism.k=ten", "pism.k"),
        ("pism.mode=fast", "pism.mode"),
        ("pism.mask=circle", "pism.mask"),
        ("pism.ratios=[0.5,0.1]", "pism.ratios"),
        ("pism.wave_attempts=11", "pism.wave_attempts"),
        ("engine.backend=tgi", "engine.backend"),
        ("cmab.variant=mine", "cmab.variant"),
        ("ray.min_actors=3", "ray.min_actors"),
        ("sampling.top_p=0", "sampling.top_p"),
    ],
)
def test_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(overrides=["data.format=toy", override])


def test_data_path_required_for_real_formats():
    with pytest.raises(ConfigError, match="'data.path'"):
        load_config(overrides=["data.format=verl"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("thresholds",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_yaml_lists_every_key_with_its_default():
    import dataclasses
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "configs" / "curate" / "default.yaml"
    written = _flatten(OmegaConf.to_container(OmegaConf.load(path)))
    defaults = _flatten(dataclasses.asdict(CurateConfig()))
    assert written == defaults


def test_every_recipe_loads(tmp_path):
    from pathlib import Path

    (tmp_path / "config.json").write_text("{}")  # a local checkpoint directory, as GPU recipes require
    for recipe in sorted((Path(__file__).resolve().parents[1] / "configs" / "curate").glob("*.yaml")):
        overrides = [] if "toy" in recipe.name else ["data.format=toy"]
        if recipe.name in ("orsta_qwen25vl7b.yaml", "single_gpu.yaml"):
            overrides.append(f"engine.model={tmp_path}")
        load_config(recipe, overrides)


def test_the_command_line_names_the_key_in_one_line_and_exits_2(capsys):
    from curate.__main__ import main

    for override, key in [("ray.num_cpus=-1", "ray.num_cpus"), ("engine.max_pixels=-5", "engine.max_pixels"),
                          ("output=/tmp/x", "output")]:
        assert main(["run", "data.format=toy", override]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"python -m curate run: error: config key '{key}':"), err
        assert "Traceback" not in err and err.count("\n") == 1
