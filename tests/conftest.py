"""Test-wide settings: offline, one torch thread (a busy 2-core box swings timings wildly otherwise), and
the toy model trained in the background while the tests that need no model run first.

On a machine without the trained toy model (a fresh CI box), training it takes minutes on one core. The
tests that need it are marked ``toy_model``; they run after all the others, and a background process
(one thread, like a training inside the tests) trains the model on the second core meanwhile. A test
that asks for the model before it is ready waits on the cache's lock (curate.toy.cache); if the
background training fails, the first test that needs the model trains it again and shows the error.
"""

from __future__ import annotations

import os
import subprocess

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the grading-only tests need no torch
    pass


_background: list[subprocess.Popen] = []


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: item.get_closest_marker("toy_model") is not None)  # stable: order kept


def pytest_collection_finish(session) -> None:
    if session.config.option.collectonly or not any(i.get_closest_marker("toy_model") for i in session.items):
        return
    from curate.toy.cache import train_in_background

    started = train_in_background()
    if started is not None:
        _background.append(started[0])


def pytest_unconfigure(config) -> None:
    for process in _background:  # an interrupted session (the next training clears what this one left)
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
