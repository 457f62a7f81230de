"""Test-wide settings: offline, one torch thread (a busy 2-core box swings timings wildly otherwise)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the grading-only tests need no torch
    pass
