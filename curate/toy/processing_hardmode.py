"""Qwen2.5-VL's processor, usable where torchvision is not (shipped into model directories as remote code).

transformers builds ``Qwen2_5_VLProcessor`` from an image processor, a tokenizer AND a video
processor, and every video processor needs torchvision; on a CPU machine, where PyPI only offers a
CUDA torchvision that does not import, ``AutoProcessor`` therefore fails for any Qwen2.5-VL model.
Without a working torchvision this module's ``Qwen2_5_VLProcessor`` is the same processor minus
videos (the PIL image processor does the images); with one it is the full processor.

The class keeps transformers' name on purpose: verl (``verl.utils.tokenizer.hf_processor``) picks the
mrope ``get_rope_index`` by processor class name and refuses names it does not know, and vLLM checks
``isinstance(…, Qwen2_5_VLProcessor)``; a subclass with the same name passes both.

Saved model directories name this file in ``processor_config.json``'s ``auto_map``, so
``AutoProcessor.from_pretrained(path, trust_remote_code=True)`` (verl's ``data.trust_remote_code`` /
``actor_rollout_ref.model.trust_remote_code``) loads it. The module imports nothing but transformers,
because transformers copies it alone into its dynamic-module cache.
"""

from __future__ import annotations

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as _FullProcessor


def torchvision_works() -> bool:
    """Whether transformers' video processors can be used (torchvision imports, not just installed)."""
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception:  # ImportError, or a CUDA build beside CPU torch failing at import
        return False
    return True


def images_only(processor_class: type) -> type:
    """A subclass of a Qwen-VL processor class with the same name that takes no video processor.

    ``ProcessorMixin`` derives the sub-processors it loads and saves from ``__init__``'s signature;
    dropping ``video_processor`` from it is all it takes. One class per base, kept in this module
    under ``ImagesOnly<name>`` so that pickle (Ray, dataloader workers) finds it again by reference.
    """
    qualname = f"ImagesOnly{processor_class.__name__}"
    existing = globals().get(qualname)
    if existing is not None and existing.__bases__ == (processor_class,):
        return existing

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: N807
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    cls = type(processor_class.__name__, (processor_class,), {
        "__init__": __init__,
        "__module__": __name__,
        "__qualname__": qualname,
        "__doc__": f"{processor_class.__name__} for images only (no working torchvision for videos).",
    })
    globals()[qualname] = cls
    return cls


if torchvision_works():

    class Qwen2_5_VLProcessor(_FullProcessor):  # noqa: N801
        """transformers' Qwen2.5-VL processor, unchanged (torchvision works here)."""

else:
    Qwen2_5_VLProcessor = images_only(_FullProcessor)
