"""A CPU platform for verl's platform registry (selected with ``VERL_PLATFORM=cpu``).

verl 0.9.1 resolves every device question (device name, torch device module, collective backend, Ray
resource) through ``verl.plugin.platform.get_platform()`` and ships CUDA, NPU and ROCm platforms only;
without an accelerator it falls back to "nvidia" and dies at ``init_process_group`` with "Distributed
package doesn't have NCCL built in". This platform answers those questions for a machine without an
accelerator: device "cpu", collective backend gloo, ``rl.cpu.torch_cpu`` as the device module.

Ray still schedules verl's workers on "GPU" bundles (every resource pool asks for one accelerator per
worker), so a CPU run declares logical GPUs to Ray (``ray_kwargs.ray_init.num_gpus``) and this platform
keeps ``ray_resource_name() == "GPU"``; nothing ever runs on them.

It never claims a machine by auto-detection (``is_platform_available`` is False): only an explicit
``VERL_PLATFORM=cpu`` selects it, so importing it on a GPU node changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from rl.cpu import PLATFORM_NAME, torch_cpu


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl's device abstraction answered for host CPUs."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return torch_cpu

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # only VERL_PLATFORM=cpu selects it

    def current_device(self) -> str:  # type: ignore[override]
        # verl moves tensors with `.to(get_device_id())`; "cpu" is the only valid target here.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        """A process has one CPU "device"; Ray's logical GPU index means nothing here."""

    def synchronize(self, device_index: int | None = None) -> None:
        """CPU kernels run synchronously."""

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        """verl toggles CUDA's expandable segments around weight syncs; the CPU allocator has none."""

    def empty_cache(self) -> None:
        torch_cpu.empty_cache()

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets it for the logical GPU a worker holds; CPU torch ignores it.
        return "CUDA_VISIBLE_DEVICES"

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    @contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        """No device profiler on CPU."""

    def profiler_stop(self) -> None:
        """No device profiler on CPU."""

    def cudart(self) -> Any:
        return None
