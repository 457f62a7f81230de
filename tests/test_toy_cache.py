"""The toy model cache: keyed by content, trained once even when several processes ask at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path

from curate.toy.cache import METADATA_FILE, cache_key, cache_root, toy_model_path, train_in_background
from curate.toy.model import ToyArchitecture
from curate.toy.train import TrainSettings

# A few steps on a few samples: the mechanics of the cache, not a useful model.
TINY = TrainSettings(steps=2, batch_size=4, train_samples=8, warmup_steps=1)


def _ask(cache_dir: str) -> tuple[str, str]:
    import torch

    torch.set_num_threads(1)
    path = toy_model_path(cache_dir, settings=TINY)
    return str(path), json.loads((path / METADATA_FILE).read_text())["created_by"]


def test_key_depends_on_architecture_and_settings_only():
    arch, settings = ToyArchitecture(), TrainSettings()
    assert cache_key(arch, settings) == cache_key(ToyArchitecture(), TrainSettings())
    assert cache_key(replace(arch, intermediate_size=arch.intermediate_size * 2), settings) != cache_key(arch, settings)
    assert cache_key(arch, replace(settings, steps=settings.steps + 1)) != cache_key(arch, settings)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HARDMODE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("HARDMODE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "hardmode"


def test_concurrent_requests_train_once_and_share_the_directory(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        answers = pool.map(_ask, [str(tmp_path)] * 2)
    paths = {path for path, _ in answers}
    trainers = {pid for _, pid in answers}
    assert len(paths) == 1 and len(trainers) == 1  # one process trained, all got its directory
    entries = sorted(p.name for p in (tmp_path / "toy-model").iterdir())
    key = Path(paths.pop()).name
    assert entries == [key, f"{key}.lock"]  # no scratch directory left behind
    # A later request is a cache hit: same directory, not retrained.
    again, pid = _ask(str(tmp_path))
    assert Path(again).name == key and pid in trainers


def test_incomplete_directory_and_leftover_scratch_are_replaced(tmp_path):
    key = cache_key(ToyArchitecture(), TINY)
    stale = tmp_path / "toy-model" / key
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # a crash before the metadata was written
    scratch = tmp_path / "toy-model" / f".{key}-killed"
    scratch.mkdir()  # the scratch directory of a process killed mid-training
    path = toy_model_path(tmp_path, settings=TINY)
    assert path == stale and (path / METADATA_FILE).is_file() and (path / "model.safetensors").is_file()
    assert not scratch.exists()
    assert json.loads((path / METADATA_FILE).read_text())["created_by"] == os.getpid()


def test_training_uses_the_same_threads_whoever_asks(tmp_path):
    """The weights depend on torch's thread count (CPU reductions are split by it), so the key only
    names one model if every training uses the same count: a caller on 2 threads trains on
    TRAIN_THREADS and gets its own setting back."""
    import torch

    from curate.toy.cache import TRAIN_THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS + 1)
    try:
        path = toy_model_path(tmp_path, settings=TINY)
        assert torch.get_num_threads() == TRAIN_THREADS + 1
    finally:
        torch.set_num_threads(before)
    assert json.loads((path / METADATA_FILE).read_text())["report"]["threads"] == TRAIN_THREADS


def test_background_training_is_one_thread_and_only_when_missing(tmp_path):
    """What `make test` and tests/conftest.py start: the preset's training, one thread, logged; not
    again while it runs, nor once the model is cached."""
    import psutil

    from curate.toy.presets import toy_preset

    preset = toy_preset("toy")
    key = cache_key(preset.arch, preset.settings)
    process, log = train_in_background(tmp_path)
    try:
        assert psutil.Process(process.pid).environ()["OMP_NUM_THREADS"] == "1"
        deadline = time.monotonic() + 120
        while f"training toy model {key}" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        assert f"training toy model {key}" in log.read_text()
        assert train_in_background(tmp_path) is None  # it holds the lock: no second trainer, log kept
        assert f"training toy model {key}" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=60)
    (tmp_path / "toy-model" / key).mkdir(exist_ok=True)
    (tmp_path / "toy-model" / key / METADATA_FILE).write_text("{}")  # as a finished training leaves it
    assert train_in_background(tmp_path) is None
