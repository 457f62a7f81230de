"""The places in verl 0.9.1 that no platform answer or config key reaches on a CPU.

Each override replaces one module attribute of verl *before* the module that uses it is imported
(``rl.cpu.plugin`` imports this module inside ``import verl``, ahead of any worker code). They apply
when this module is imported in a process that selected the CPU platform, and nowhere else. (The
mRoPE position-ids fix applies on every platform: ``rl.verl_fixes``.)
"""

from __future__ import annotations

import io
import os
from typing import Any

import ray
import verl.utils.dataset.vision_utils as verl_vision_utils
import verl.utils.distributed as verl_distributed
import verl.utils.fsdp_utils as verl_fsdp_utils
from PIL import Image

from rl.cpu import cpu_platform_selected

_ray_init = ray.init

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


def ray_init_with_logical_gpus(*args: Any, **kwargs: Any) -> Any:
    """``ray.init`` that starts a private cluster with logical GPUs and CPUs.

    verl's SFT trainer (``sft_trainer_ray``) calls a bare ``ray.init()`` and asks its resource pool for
    one GPU and ten CPUs per worker; the GRPO trainer takes them from ``ray_kwargs`` instead
    (``rl.cpu.cpu_overrides``), and those given values win here. A cluster that already exists
    (``RAY_ADDRESS``, an address argument) declared its resources with ``ray start``: left alone.
    """
    address = kwargs.get("address", args[0] if args else None) or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized() and address in (None, "", "local"):
        kwargs.setdefault("num_gpus", 1)
        kwargs.setdefault("num_cpus", 16)
        kwargs.setdefault("include_dashboard", False)
    return _ray_init(*args, **kwargs)


def process_image(image: Any, image_patch_size: int = 14) -> Image.Image:
    """verl's SFT image decoding without ``qwen_vl_utils`` (whose import needs torchvision): the
    ``{"bytes", "path"}`` items of a verl_sft parquet, or a PIL image, decoded by
    ``rl.cpu.dataset.load_image`` as the GRPO dataset does."""
    from rl.cpu.dataset import load_image

    if isinstance(image, dict) and image.get("bytes") is not None:
        image = {"image": Image.open(io.BytesIO(image["bytes"]))}
    elif isinstance(image, dict) and image.get("path"):
        image = {"image": image["path"]}
    elif isinstance(image, Image.Image):
        image = {"image": image}
    return load_image(image, image_patch_size)


def apply() -> None:
    verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    verl_fsdp_utils.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy
    ray.init = ray_init_with_logical_gpus
    # Replaced before verl.utils.dataset.multiturn_sft_dataset imports it by name.
    verl_vision_utils.process_image = process_image
    # The SFT driver pickles the model config, its processor included, for the workers; a remote-code
    # processor (the toy model's) lives in transformers' dynamic-module cache, which a fresh Ray
    # worker has not put on sys.path ("No module named 'transformers_modules'").
    from transformers.dynamic_module_utils import init_hf_modules

    init_hf_modules()


if cpu_platform_selected():
    apply()
