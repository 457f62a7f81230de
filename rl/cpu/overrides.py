"""Three places in verl 0.9.1 that no platform answer or config key reaches.

Each override replaces one module attribute of verl *before* the module that uses it is imported
(``rl.cpu.plugin`` imports this module inside ``import verl``, ahead of any worker code). They apply
when this module is imported in a process that selected the CPU platform, and nowhere else.
"""

from __future__ import annotations

from typing import Any

import torch
import verl.utils.distributed as verl_distributed
import verl.utils.fsdp_utils as verl_fsdp_utils
import verl.utils.tensordict_utils as verl_tensordict_utils
from tensordict import TensorDict

from rl.cpu import cpu_platform_selected

_init_process_group_ray = verl_distributed.initialize_global_process_group_ray
_fix_3d_position_ids = verl_tensordict_utils.maybe_fix_3d_position_ids


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


def maybe_fix_3d_position_ids(data: TensorDict) -> None:
    """verl's repair of Qwen2/2.5-VL's (B, 4, seq) nested position ids, correct for equal lengths too.

    TransferQueue packs per-sample (4, seq_i) tensors with ``torch.nested.as_nested_tensor(jagged)``,
    which makes the sequence dim ragged (``_ragged_idx=2``) when lengths differ, but, when every
    sample has the same length, makes the *first* dim ragged (``_ragged_idx=1``, values (4B, seq)).
    verl then forces ``_ragged_idx=2`` on it, and the next unbind fails with "split_with_sizes expects
    split_sizes to sum exactly to <seq>" (a GRPO step whose responses all hit the length cap). Such a
    tensor is rebuilt ragged on the sequence dim; anything else gets verl's own fix.
    """
    positions = data.get("position_ids", None) if "position_ids" in data.keys() else None
    if (
        isinstance(positions, torch.Tensor)
        and positions.is_nested
        and positions.dim() == 3
        and positions._ragged_idx == 1
        and int(positions.offsets()[-1]) == positions.values().shape[0]
    ):
        rows = positions.unbind()  # (4, seq) each, all the same seq
        lengths = torch.tensor([row.shape[-1] for row in rows])
        data["position_ids"] = torch.nested.nested_tensor_from_jagged(
            torch.cat(rows, dim=-1),
            lengths=None,
            offsets=torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]),
            jagged_dim=2,
        )
        return
    _fix_3d_position_ids(data)


def apply() -> None:
    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    verl_fsdp_utils.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy
    verl_tensordict_utils.maybe_fix_3d_position_ids = maybe_fix_3d_position_ids


if cpu_platform_selected():
    apply()
