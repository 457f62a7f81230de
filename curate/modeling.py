"""Load a vision-language model and its processor the same way everywhere (engines, probe, verl glue).

``resolve_model_path("toy")`` gives the offline toy model (trained on first use, then cached), and
``"toy-study"`` or any other preset of ``curate.toy.presets`` that preset's; any other name is a local
directory or hub id and is returned unchanged.

``load_processor`` returns transformers' processor for the model. Where torchvision does not work (CPU
machines: PyPI's torchvision is a CUDA build), transformers' Qwen-VL processors cannot be built at all
because their video processor needs it; the same processor class minus videos is returned instead,
with the PIL image processor, so images are processed identically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

TOY_MODEL = "toy"  # the default toy preset; is_toy_model() knows them all
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def is_toy_model(name: object) -> bool:
    """Whether ``name`` names a toy preset (``toy``, ``toy-study``); an unknown ``toy-…`` name raises
    ``curate.toy.presets.UnknownToyModel`` (a ``ValueError``) naming the presets."""
    from curate.toy.presets import is_toy_model as _is_toy

    return _is_toy(name)


def resolve_model_path(name: str) -> str:
    """A toy preset's name → its trained directory (built if needed); anything else unchanged."""
    if is_toy_model(name):
        from curate.toy.cache import toy_model_path

        return str(toy_model_path(preset=name))
    return name


def _processor_class_name(path: str) -> str | None:
    """The ``processor_class`` a checkpoint declares (local directory or hub id)."""
    from transformers.utils import cached_file

    for filename in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        resolved = cached_file(path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        if resolved:
            with open(resolved, encoding="utf-8") as f:
                name = json.load(f).get("processor_class")
            if name:
                return name
    return None


def _images_only_processor(path: str) -> "ProcessorMixin":
    from transformers.models.auto.processing_auto import processor_class_from_name

    from curate.toy.processing_hardmode import images_only

    name = _processor_class_name(path)
    processor_class = processor_class_from_name(name) if name else None
    if processor_class is None or not isinstance(processor_class, type):
        raise ValueError(f"cannot load a processor for {path!r} without torchvision: processor_class {name!r} "
                         "is not a transformers processor")
    logger.info("torchvision unavailable: loading %s for images only (PIL image processor)", name)
    return images_only(processor_class).from_pretrained(path)


# transformers' Qwen2-VL image processor defaults, for a checkpoint whose configs name no bounds.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def _checkpoint_pixel_bounds(path: str) -> tuple[int, int]:
    """(min, max) image pixels a checkpoint's image processor config declares."""
    from transformers.utils import cached_file

    for filename, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        resolved = cached_file(path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        if not resolved:
            continue
        with open(resolved, encoding="utf-8") as f:
            config = json.load(f)
        config = config.get(section) or {} if section else config
        size = config.get("size") or {}
        low = config.get("min_pixels", size.get("shortest_edge"))
        high = config.get("max_pixels", size.get("longest_edge"))
        if low is not None or high is not None:
            return (int(low) if low is not None else DEFAULT_MIN_PIXELS,
                    int(high) if high is not None else DEFAULT_MAX_PIXELS)
    return DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS


def pixel_bounds(path: str, min_pixels: int | None, max_pixels: int | None) -> dict[str, int] | None:
    """Both image pixel bounds for a processor call, the missing one from the checkpoint.

    transformers 5.9's Qwen2-VL image processors apply call-time ``min_pixels``/``max_pixels`` only when
    BOTH are given: ``max_pixels`` alone is silently ignored (15,301 image tokens instead of 1,564 on a
    Qwen2.5-VL-7B image). vLLM passes ``mm_processor_kwargs`` at call time, so they always carry both.
    """
    if min_pixels is None and max_pixels is None:
        return None
    default_low, default_high = _checkpoint_pixel_bounds(path)
    low = default_low if min_pixels is None else min_pixels
    high = default_high if max_pixels is None else max_pixels
    if low > high:
        raise ValueError(f"min_pixels ({low}) must not exceed max_pixels ({high})")
    return {"min_pixels": low, "max_pixels": high}


def _cap_pixels(processor: "ProcessorMixin", min_pixels: int | None, max_pixels: int | None) -> None:
    """Set the image pixel budget on this instance only (never through the class-wide default ``size``)."""
    from transformers.image_utils import SizeDict

    image_processor = processor.image_processor
    size = image_processor.size
    shortest = min_pixels if min_pixels is not None else size.shortest_edge
    longest = max_pixels if max_pixels is not None else size.longest_edge
    if shortest > longest:
        raise ValueError(f"min_pixels ({shortest}) must not exceed max_pixels ({longest})")
    image_processor.size = SizeDict(shortest_edge=shortest, longest_edge=longest)


def load_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None) -> "ProcessorMixin":
    """The model's processor, with an optional image pixel budget; works with or without torchvision."""
    from curate.toy.processing_hardmode import torchvision_works

    if torchvision_works():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
    else:
        processor = _images_only_processor(path)
    if min_pixels is not None or max_pixels is not None:
        _cap_pixels(processor, min_pixels, max_pixels)
    return processor


def resolve_device(device: str) -> str:
    """``auto`` → cuda when there is one, else cpu; cpu, cuda and cuda:N as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


def _dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if dtype == "auto":
        # The checkpoint's dtype on GPUs; float32 on CPUs, where bf16/fp16 matmuls are slow or missing.
        return "auto" if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_model(path: str, dtype: str = "auto", device: str = "auto",
               attn_implementation: str = "sdpa") -> "PreTrainedModel":
    """The image-text-to-text model at ``path`` in eval mode on ``device``.

    ``attn_implementation="eager"`` is what returns attention probabilities (sdpa returns none).
    """
    from transformers import AutoModelForImageTextToText

    device = resolve_device(device)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=_dtype(dtype, device), attn_implementation=attn_implementation
    )
    return model.to(device).eval()


# What defines a model directory's processor (the tokenizer's vocabulary, tokenizer.json, is saved by
# every trainer); remote code (*.py) is copied too.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def restore_processor_files(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> list[str]:
    """Give a trainer's saved HF directory ``target`` the processor of the model it was trained from.

    Trainers save the weights and what ``save_pretrained`` of their own processor object writes:
    verl's ``huggingface/`` and TRL's ``save_model`` drop a remote-code processor's module and the
    ``auto_map`` that names it (the toy model's), so the next load finds no processor (verl's
    ``hf_processor`` then returns None and an image dataset fails). Training never changes the
    processor: the source's files are authoritative. Returns the names copied.
    """
    source, target = Path(source), Path(target)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and (path.name in PROCESSOR_FILES or path.suffix == ".py"):
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    return copied
