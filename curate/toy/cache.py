"""Train the toy model once per machine and hand out its directory: a content-addressed cache.

The key hashes everything that decides the trained weights: the architecture and trainer settings,
the chat messages the model is trained on (``curate.scoring.prompts.build_messages`` with the default
``PromptConfig``), and the source code of the modules that draw the corpus, build the tokenizer and
model, and train it. Anything else (library versions, the time) is recorded in
``toy_model.json`` but not keyed, so one trained directory serves every process and environment.

Several processes may ask at once (tests, the demo, Ray actors): the first takes an exclusive file
lock and trains, the others wait on the lock and then find the directory. Training writes into a
temporary directory that is renamed into place when complete, so a crash never leaves a half-written
model where readers look.

Which model: ``toy_model_path(preset=NAME)`` takes a named preset of ``curate.toy.presets`` (``toy``, the
default, or ``toy-study``); ``arch=`` / ``settings=`` replace the preset's. Each distinct
(architecture, settings) pair has its own key and directory under ``<cache root>/toy-model/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from curate.config import PromptConfig
from curate.schema import IMAGE_PLACEHOLDER
from curate.scoring.prompts import build_messages
from curate.toy.model import ToyArchitecture
from curate.toy.presets import DEFAULT_PRESET, toy_preset
from curate.toy.train import TrainSettings

logger = logging.getLogger(__name__)

CACHE_ENV = "HARDMODE_CACHE"
METADATA_FILE = "toy_model.json"  # written last: its presence marks a complete directory
_KEYED_MODULES = ("font.py", "corpus.py", "tokenizer.py", "model.py", "train.py", "processing_hardmode.py")
# torch splits CPU reductions by its thread count, so the weights depend on it (a copy trained on 2
# threads and one on 1 differed under the same key): every training uses this many, whoever asks.
TRAIN_THREADS = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$HARDMODE_CACHE``, else ``~/.cache/hardmode``."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hardmode"
    return Path(root).expanduser()


def cache_key(arch: ToyArchitecture, settings: TrainSettings) -> str:
    here = Path(__file__).resolve().parent
    messages = build_messages(f"Question?\n{IMAGE_PLACEHOLDER}", 1, PromptConfig())
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch.to_dict(), "train": settings.to_dict(), "messages": messages},
                        sort_keys=True).encode())
    for path in (here / name for name in _KEYED_MODULES):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@contextmanager
def _flock(lock_path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold ``lock_path`` exclusively; yields whether it is held (False only with ``wait=False``, when
    another process holds it)."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            logger.info("waiting for another process that is training the toy model (%s)", lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _locked(lock_path: Path) -> bool:
    """Whether a process holds ``lock_path`` (is training that model) right now."""
    if not lock_path.exists():
        return False
    with _flock(lock_path, wait=False) as held:
        return not held


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _train_into(directory: Path, arch: ToyArchitecture, settings: TrainSettings, key: str,
                preset: str | None = None) -> None:
    import torch

    from curate.toy.model import save_toy_model
    from curate.toy.train import train_toy_model

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        model, processor, report = train_toy_model(arch, settings)
    finally:
        torch.set_num_threads(threads)
    save_toy_model(model, processor, directory, extra={
        "key": key,
        "preset": preset,
        "architecture": arch.to_dict(),
        "training": settings.to_dict(),
        "report": report.to_dict(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_by": os.getpid(),
    })


def _model_dir(cache_dir: str | os.PathLike | None, arch: ToyArchitecture, settings: TrainSettings) -> Path:
    return cache_root(cache_dir) / "toy-model" / cache_key(arch, settings)


def _complete(directory: Path) -> bool:
    return (directory / METADATA_FILE).is_file()


def cached_toy_model(cache_dir: str | os.PathLike | None = None, *,
                     preset: str = DEFAULT_PRESET) -> Path | None:
    """The directory of the trained toy model ``preset`` if this machine has it, else None (never trains)."""
    named = toy_preset(preset)
    final = _model_dir(cache_dir, named.arch, named.settings)
    return final if _complete(final) else None


def toy_model_path(cache_dir: str | os.PathLike | None = None, *, preset: str = DEFAULT_PRESET,
                   arch: ToyArchitecture | None = None, settings: TrainSettings | None = None) -> Path:
    """The directory of the trained toy model ``preset``, training it first if this machine has none yet.

    ``arch`` / ``settings`` replace the preset's; an unknown preset name raises ``UnknownToyModel``.
    """
    named = toy_preset(preset)
    arch = arch or named.arch
    settings = settings or named.settings
    label = preset if (arch, settings) == (named.arch, named.settings) else None
    final = _model_dir(cache_dir, arch, settings)
    root, key = final.parent, final.name
    if _complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _flock(root / f"{key}.lock", wait=True):
        if _complete(final):  # another process finished while we waited
            return final
        # Leftovers of a process killed mid-training (no exception ran its cleanup); we hold the lock.
        for stale in [final, *root.glob(f".{key}-*")]:
            if stale.exists():
                shutil.rmtree(stale)
        logger.info("training toy model %s (%s; once per machine, a few minutes on one CPU core)", key,
                    label or "custom sizes")
        start = time.perf_counter()
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            _train_into(scratch, arch, settings, key, label)
            os.rename(scratch, final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        logger.info("toy model trained in %.0f s, cached at %s", time.perf_counter() - start, final)
    return final


def train_in_background(cache_dir: str | os.PathLike | None = None, *,
                        preset: str = DEFAULT_PRESET) -> tuple[subprocess.Popen, Path] | None:
    """Start ``python -m curate toy model`` in its own session unless ``preset`` is cached or being
    trained: (process, log).

    The process is one thread (``OMP_NUM_THREADS=1``; every training uses ``TRAIN_THREADS``), so it
    leaves the other core to the tests. ``make test`` starts one before it installs the vLLM environment.
    """
    named = toy_preset(preset)
    final = _model_dir(cache_dir, named.arch, named.settings)
    if _complete(final) or _locked(final.parent / f"{final.name}.lock"):
        return None  # cached, or another process is training it (a second would only wait)
    log = final.parent / f"background-training-{preset}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "curate", "toy", "model", "--preset", preset]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    return process, log
