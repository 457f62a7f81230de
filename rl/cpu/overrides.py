"""Two places in verl 0.9.1 that no platform answer or config key reaches on a CPU.

Each override replaces one module attribute of verl *before* the module that uses it is imported
(``rl.cpu.plugin`` imports this module inside ``import verl``, ahead of any worker code). They apply
when this module is imported in a process that selected the CPU platform, and nowhere else. (The
mRoPE position-ids fix applies on every platform: ``rl.verl_fixes``.)
"""

from __future__ import annotations

from typing import Any

import verl.utils.distributed as verl_distributed
import verl.utils.fsdp_utils as verl_fsdp_utils

from rl.cpu import cpu_platform_selected

_init_process_group_ray = verl_distributed.initialize_global_process_group_ray


def initialize_global_process_group_ray(
    timeout_second: int | None = None, backend: str | None = None
) -> None:
    """verl's worker process-group setup with gloo for CPU tensors only.

    verl builds the backend string ``f"cpu:gloo,{device}:{backend}"``, which on CPU becomes
    ``"cpu:gloo,cpu:gloo"`` and torch rejects it ("Duplicate device type cpu in backend string").
    """
    _init_process_group_ray(timeout_second=timeout_second, backend=backend or "cpu:gloo")


class UnpinnedCPUOffloadPolicy(verl_fsdp_utils.CPUOffloadPolicy):  # type: ignore[misc,name-defined]
    """FSDP2's CPU offload policy that never pins memory.

    verl's FSDP engine always builds ``CPUOffloadPolicy(pin_memory=True)`` for the reference model
    (``forward_only``); pinning needs an accelerator ("Cannot access accelerator device"). On a CPU
    machine the parameters already live in host memory, so unpinned offload is the same placement.
    """

    def __init__(self, pin_memory: bool = True, **kwargs: Any) -> None:
        super().__init__(pin_memory=False, **kwargs)


def apply() -> None:
    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    verl_fsdp_utils.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


if cpu_platform_selected():
    apply()
