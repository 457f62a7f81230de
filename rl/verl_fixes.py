"""A fix for verl 0.9.1 that every run needs, on every platform (loaded in every verl process).

``rl train`` names this module in ``VERL_USE_EXTERNAL_MODULES``, so verl imports it inside ``import
verl``, before ``verl.workers.engine_workers`` and ``verl.workers.engine.base`` import
``maybe_fix_3d_position_ids`` by name: replacing the module attribute here reaches them.

The bug is in verl's data path, not in a device backend: TransferQueue packs each sample's (4, seq)
mRoPE position ids with ``torch.nested.as_nested_tensor(..., layout=torch.jagged)`` (verl's
``list_of_dict_to_tensordict``), and verl's ``maybe_fix_3d_position_ids`` then forces ``_ragged_idx=2``
on the result. That is right when sequence lengths differ (ragged dim 2) and wrong when every sample
has the same length: the packing is then ragged on dim 1 (values (4B, seq)), and the next unbind fails
with "split_with_sizes expects split_sizes to sum exactly to <seq>". Both the FSDP engine workers and
the engine base call the fix for every Qwen2/2.5-VL batch, whatever the device; a GRPO step whose
responses all hit the length cap (or a batch of one) has equal lengths on a GPU as on a CPU.

A second fix, for the environment rather than the data: verl 0.9.1 asks ``is_trl_available()`` (is a
``trl`` package installed?) and then imports trl's ``AutoModelForCausalLMWithValueHead`` to patch it
(``verl.models.transformers.monkey_patch.apply_monkey_patch``, run at every model load) or to build a
value model (``verl.utils.model.load_valuehead_model``). trl 1.x has no such class (its PPO left
TRL), and the project installs trl 1.16.0 for ``python -m rl mpo``: every verl model load failed with
an ImportError. verl's question is answered as verl uses the answer: whether trl has that class. Both
modules bind the function by name when they are imported, after this module (``import verl`` imports
only ``verl.utils.import_utils`` before its external modules): replacing the attribute reaches them.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from importlib.metadata import version

import torch
import verl.utils.import_utils as verl_import_utils
import verl.utils.tensordict_utils as verl_tensordict_utils
from tensordict import TensorDict

VERL_VERSION = "0.9.1"  # the release whose internals this module replaces

_verl_fix_3d_position_ids = verl_tensordict_utils.maybe_fix_3d_position_ids


def maybe_fix_3d_position_ids(data: TensorDict) -> None:
    """verl's repair of nested (B, 4, seq) position ids, correct for equal lengths too."""
    positions = data.get("position_ids", None) if "position_ids" in data.keys() else None
    if (
        isinstance(positions, torch.Tensor)
        and positions.is_nested
        and positions.dim() == 3
        and positions._ragged_idx == 1
        and int(positions.offsets()[-1]) == positions.values().shape[0]
    ):
        rows = positions.unbind()  # (4, seq) each, all the same seq
        lengths = torch.tensor([row.shape[-1] for row in rows], device=positions.device)
        data["position_ids"] = torch.nested.nested_tensor_from_jagged(
            torch.cat(rows, dim=-1),
            lengths=None,
            offsets=torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]),
            jagged_dim=2,
        )
        return
    _verl_fix_3d_position_ids(data)


@functools.cache
def is_trl_available() -> bool:
    """Whether trl is installed with the value-head model verl imports from it (trl 0.x: verl pins 0.27.0)."""
    if importlib.util.find_spec("trl") is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead  # noqa: F401
        except ImportError:
            try:
                from trl import AutoModelForCausalLMWithValueHead  # noqa: F401
            except ImportError:
                return False
    return True


def apply() -> None:
    installed = version("verl")
    if installed != VERL_VERSION:
        raise RuntimeError(
            f"rl.verl_fixes replaces an internal of verl {VERL_VERSION}; found verl {installed}. "
            "Install the pinned verl or check whether the new release still needs the fix."
        )
    verl_tensordict_utils.maybe_fix_3d_position_ids = maybe_fix_3d_position_ids
    verl_import_utils.is_trl_available = is_trl_available


apply()
