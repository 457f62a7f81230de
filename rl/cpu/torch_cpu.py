"""``torch.cpu`` completed with the accelerator calls verl makes on its device module.

verl reaches the device through ``get_torch_device()`` (the platform's ``device_module``) and calls
``empty_cache``, ``mem_get_info``, ``memory_allocated``, ``get_rng_state`` … on it, as on ``torch.cuda``.
``torch.cpu`` has the stream/synchronize/device calls but none of the memory or RNG ones. This module
re-exports ``torch.cpu`` and adds them: memory calls report the process's real RAM use (verl only logs
them), cache calls do nothing (the CPU allocator keeps no cache to release), RNG calls use torch's
CPU generator.
"""

from __future__ import annotations

import os

import psutil
import torch
from torch.cpu import (  # noqa: F401  (re-exported: verl calls them on the device module)
    Event,
    Stream,
    current_device,
    current_stream,
    device_count,
    is_available,
    set_device,
    stream,
    synchronize,
)


def empty_cache() -> None:
    """Nothing to release: the CPU allocator returns freed memory itself."""


def ipc_collect() -> None:
    """No inter-process memory handles on CPU."""


def set_per_process_memory_fraction(fraction: float, device: object = None) -> None:
    """No per-device memory pool to cap on CPU."""


def mem_get_info(device: object = None) -> tuple[int, int]:
    """(free, total) bytes of host RAM, the memory the model and activations live in."""
    vm = psutil.virtual_memory()
    return vm.available, vm.total


def memory_allocated(device: object = None) -> int:
    return psutil.Process(os.getpid()).memory_info().rss


memory_reserved = memory_allocated


def max_memory_allocated(device: object = None) -> int:
    # Peak RSS; ru_maxrss (KiB on Linux) is updated lazily, so it can trail the current RSS.
    import resource

    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, memory_allocated())


max_memory_reserved = max_memory_allocated


def get_device_name(device: object = None) -> str:
    return "cpu"


def get_rng_state(device: object = None) -> torch.Tensor:
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device: object = None) -> None:
    torch.set_rng_state(state)


def manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


manual_seed_all = manual_seed
