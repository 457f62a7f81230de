"""Running verl's real GRPO and SFT trainers on machines without an accelerator (CI, laptops).

verl 0.9.1 has no CPU support: its trainer assumes CUDA/NPU devices, NCCL and a vLLM/SGLang rollout.
Nothing here edits or copies verl. verl imports every module named in ``VERL_USE_EXTERNAL_MODULES``
inside ``import verl`` (in the driver and in every Ray worker), and ``rl.cpu.plugin`` is that module.
What stands between verl and a CPU, and what removes it:

============================================================  ==============================================
obstacle (verl 0.9.1, torch 2.13 CPU, no torchvision)          removed by
============================================================  ==============================================
silent hang: TransferQueue's 8 one-CPU storage actors          :func:`cpu_overrides` (1 unit, 16 logical CPUs)
"Total available GPUs 0 is less than total desired GPUs 1"     :func:`cpu_overrides` (logical GPUs for Ray)
"NCCL built in": no CPU platform, falls back to "nvidia"       ``rl.cpu.platform`` + ``VERL_PLATFORM=cpu``
"Duplicate device type cpu in backend string"                  ``rl.cpu.overrides`` (gloo only)
"No engine registered for device='cpu'"                        ``VERL_ENGINE_DEVICE=cuda`` (:func:`cpu_env`)
FlashAttention2 import error; remove-padding needs flash-attn   :func:`cpu_overrides` (sdpa, padded batches)
FSDP1 "Cannot access accelerator device"                       :func:`cpu_overrides` (fsdp2)
"rollout world_size 1 not divisible by infer_world_size 2"     :func:`cpu_overrides` (tensor parallel 1)
no rollout engine without vLLM/SGLang                          ``rl.cpu.hf_rollout`` ("hf": replica, server,
                                                               weight-sync adapter)
reference model: CPUOffloadPolicy(pin_memory=True) fails       ``rl.cpu.overrides`` (unpinned policy)
images need qwen_vl_utils, which needs torchvision             ``rl.cpu.dataset`` via ``data.custom_cls``
SFT: the same, inside verl's SFT dataset                       ``rl.cpu.overrides`` (its ``process_image``)
SFT: a bare ``ray.init()``, pools asking for GPUs               ``rl.cpu.overrides`` (logical GPUs and CPUs)
SFT: "No module named 'transformers_modules'" in workers       ``rl.cpu.overrides`` (``init_hf_modules``)
SFT: FlashAttention2, remove-padding, FSDP1, torch.compile     :func:`cpu_sft_overrides`
============================================================  ==============================================

The Qwen2.5-VL position-ids crash of batches whose sequences all have the same length ("split_with_sizes
expects ...") is not a CPU matter: ``rl.verl_fixes`` fixes it on every platform.

Two more facts a CPU recipe must respect (``configs/rl/toy_cpu.yaml``): verl's FSDP engine computes in
bf16 unless ``fsdp_config.mixed_precision`` says otherwise (``fsdp_config.dtype`` is not read), and
``torch.compile`` (``actor.use_torch_compile``) would spend minutes compiling C++ kernels.

These hooks touch verl internals, so the versions they were written against are pinned here and
checked when the plugin loads (:func:`check_versions`).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = [
    "PINNED_VERSIONS",
    "PLATFORM_NAME",
    "PLUGIN_MODULE",
    "ROLLOUT_NAME",
    "check_versions",
    "cpu_env",
    "cpu_overrides",
    "cpu_platform_selected",
    "cpu_sft_overrides",
]

PLUGIN_MODULE = "rl.cpu.plugin"
PLATFORM_NAME = "cpu"  # VERL_PLATFORM value selecting rl.cpu.platform
ROLLOUT_NAME = "hf"  # actor_rollout_ref.rollout.name of rl.cpu.hf_rollout

# Distribution -> the version whose internals rl.cpu was written against.
PINNED_VERSIONS: dict[str, str] = {"verl": "0.9.1", "transformers": "5.10.4", "transferqueue": "0.1.11"}


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Fail with one clear message when an installed version differs from :data:`PINNED_VERSIONS`."""
    if installed is None:
        installed = {}
        for dist in PINNED_VERSIONS:
            try:
                installed[dist] = version(dist)
            except PackageNotFoundError:
                installed[dist] = "not installed"
    wrong = {d: installed.get(d) for d, want in PINNED_VERSIONS.items() if installed.get(d) != want}
    if wrong:
        found = ", ".join(f"{d}=={v}" for d, v in wrong.items())
        want = ", ".join(f"{d}=={PINNED_VERSIONS[d]}" for d in wrong)
        raise RuntimeError(
            f"rl.cpu patches verl internals and supports exactly {want}; found {found}. "
            "Install the pinned versions (bash launch/bootstrap.sh) or port rl/cpu to the new release."
        )


def cpu_platform_selected() -> bool:
    """Whether this process runs verl on the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


def cpu_env() -> dict[str, str]:
    """Environment of the driver and of every Ray worker of a CPU run."""
    return {
        # Loads rl.cpu.plugin inside `import verl` in every process (verl/__init__.py).
        "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE,
        # Selects rl.cpu.platform (auto-detection would fall back to "nvidia").
        "VERL_PLATFORM": PLATFORM_NAME,
        # verl's FSDP engine is registered for cuda/npu only; its code runs unchanged on "cpu"
        # tensors, so engine lookup is pointed at the cuda registration (verl's own override knob).
        "VERL_ENGINE_DEVICE": "cuda",
    }


def cpu_overrides(local_cluster: bool) -> dict[str, Any]:
    """verl settings a CPU run cannot do without, keyed by dotted path ("+" adds a key verl lacks).

    ``local_cluster``: the trainer starts its own (one-node) Ray cluster; otherwise the cluster's
    logical resources were declared by ``ray start --num-cpus ... --num-gpus ...``. A recipe or the
    command line may still set any of these keys; they win.
    """
    overrides: dict[str, Any] = {
        "trainer.device": "cpu",
        # FSDP1 asserts an accelerator ("Cannot access accelerator device"); FSDP2 runs on CPU.
        "actor_rollout_ref.actor.strategy": "fsdp2",
        # No flash-attn on CPU: sdpa attention, and no remove-padding (it needs flash-attn's varlen).
        "+actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
        "actor_rollout_ref.model.use_remove_padding": False,
        # The transformers rollout of rl.cpu.hf_rollout, one process per replica.
        "actor_rollout_ref.rollout.name": ROLLOUT_NAME,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        # verl's dataset extracts images with qwen_vl_utils, which needs torchvision (CUDA-only on PyPI).
        "data.custom_cls.path": "pkg://rl.cpu.dataset",
        "data.custom_cls.name": "TorchvisionFreeRLHFDataset",
        # TransferQueue starts one 1-CPU actor per storage unit (8 by default): one is plenty here and
        # each is a Python process.
        "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    }
    if local_cluster:
        overrides.update(
            {
                # Verl's resource pools ask Ray for one GPU per worker: declare logical ones (never used).
                "+ray_kwargs.ray_init.num_gpus": "${trainer.n_gpus_per_node}",
                # More logical CPUs than cores: verl, TransferQueue and the agent/reward loops start many
                # 1-CPU actors, and Ray queues (silently) any actor it cannot place.
                "ray_kwargs.ray_init.num_cpus": 16,
                "+ray_kwargs.ray_init.include_dashboard": False,
            }
        )
    return overrides


def cpu_sft_overrides() -> dict[str, Any]:
    """verl SFT settings (``sft_trainer_engine``) a CPU run cannot do without, keyed as for
    :func:`cpu_overrides`. Its engine computes in bf16 unless ``engine.mixed_precision`` says otherwise:
    a CPU recipe sets fp32 there (``configs/rl/toy_sft.yaml``)."""
    return {
        "trainer.device": "cpu",
        "engine.strategy": "fsdp2",
        "engine.use_torch_compile": False,
        "+model.override_config.attn_implementation": "sdpa",
        "model.use_remove_padding": False,
    }
