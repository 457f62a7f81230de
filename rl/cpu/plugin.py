"""Loaded by verl itself in every process of a CPU run (``VERL_USE_EXTERNAL_MODULES=rl.cpu.plugin``).

Importing it checks the pinned versions, registers the "cpu" platform and the "hf" rollout in verl's
registries and, when the CPU platform is selected (``VERL_PLATFORM=cpu``), applies
:mod:`rl.cpu.overrides`. It runs inside ``import verl``, before any verl worker module is imported.

It imports rl.cpu's modules as modules and reads no names from them: a Ray worker may be importing
one of them right now (unpickling ``HFRolloutServer`` imports ``rl.cpu.hf_rollout``, which imports
verl, which imports this plugin), and that module is then only half-initialized. Each module does its
own registration when its import completes; the rollout classes are registered by name.
"""

from __future__ import annotations

from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

from rl.cpu import ROLLOUT_NAME, check_versions, cpu_platform_selected

check_versions()

import rl.cpu.platform  # noqa: E402,F401  (registers the "cpu" platform)


def _load_hf_replica() -> type[RolloutReplica]:
    from rl.cpu.hf_rollout import HFReplica

    return HFReplica


RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_hf_replica)
_ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "rl.cpu.hf_rollout.HFServerAdapter"

if cpu_platform_selected():
    import rl.cpu.overrides  # noqa: F401  (applies itself)
