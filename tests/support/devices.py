"""Catch tensors created on the default device while the data lives on another one, without a GPU.

On a GPU machine the default device is the CPU and the model's tensors are on ``cuda``: any tensor a
code path builds without ``device=`` (``torch.tensor(ids)``, ``torch.arange(n)``) lands on the CPU and
the next op that mixes it with model tensors fails ("Expected all tensors to be on the same device").
CPU tests cannot see that, because both devices are the CPU. ``default_device_elsewhere()`` turns the
situation around: the data stays on the CPU and every constructor that the guarded code (the given
modules and packages) calls without a device creates a ``meta`` tensor instead, so the same mistake fails
the same way here. Library code is left alone: transformers deliberately builds some index tensors on
the CPU and moves them itself. ``torch.as_tensor(t)`` of an existing tensor keeps ``t``'s device, as
it does without a default device.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Sequence

import torch
from torch.overrides import TorchFunctionMode

# The factory functions that take a device (torch.utils._device's list, spelled out).
_CONSTRUCTORS = {
    torch.arange, torch.as_tensor, torch.asarray, torch.empty, torch.empty_strided, torch.eye, torch.full,
    torch.linspace, torch.logspace, torch.ones, torch.rand, torch.randint, torch.randn, torch.randperm,
    torch.scalar_tensor, torch.tensor, torch.zeros, torch.tril_indices, torch.triu_indices,
}
_KEEP_DEVICE_OF_TENSOR_INPUT = {torch.as_tensor, torch.asarray}


class _DefaultDeviceElsewhere(TorchFunctionMode):
    def __init__(self, device: str, packages: Sequence[str]):
        super().__init__()
        self.device = torch.device(device)
        self.packages = tuple(packages)
        self.redirected = 0

    def _called_from_ours(self) -> bool:
        caller = sys._getframe(2).f_globals.get("__name__", "")
        return any(caller == p or caller.startswith(p + ".") for p in self.packages)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _CONSTRUCTORS and kwargs.get("device") is None and self._called_from_ours():
            keeps = func in _KEEP_DEVICE_OF_TENSOR_INPUT and args and isinstance(args[0], torch.Tensor)
            if not keeps:
                kwargs["device"] = self.device
                self.redirected += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def default_device_elsewhere(
    device: str = "meta", packages: Sequence[str] = ("curate",)
) -> Iterator[_DefaultDeviceElsewhere]:
    """Within the block, tensors ``packages`` build without ``device=`` land on ``device``.

    The yielded mode counts the redirected constructors (``redirected``), so a test can show that it
    reached the code it guards.
    """
    with _DefaultDeviceElsewhere(device, packages) as mode:
        yield mode
