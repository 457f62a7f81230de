"""verl's RLHF dataset without ``qwen_vl_utils`` (whose import needs torchvision).

verl's ``RLHFDataset`` (and the agent loop, through ``dataset_cls.process_multi_modal_info``) turns the
images of a chat prompt into PIL images with ``qwen_vl_utils.process_vision_info``. That package
imports torchvision at module level, and the torchvision wheels on PyPI are CUDA builds that fail to
load beside CPU torch, so every multimodal sample fails on a CPU machine ("No module named
'qwen_vl_utils'", or the torchvision operator error once it is installed). verl's documented hook for
this is a dataset subclass (``data.custom_cls``); this one overrides only the image extraction.

Images are decoded the way ``qwen_vl_utils.fetch_image`` accepts them (PIL image, path, ``file://``
path, base64 data URL) and converted to RGB. They are resized only when the message asks for it
(``resized_height``/``resized_width`` or ``min_pixels``/``max_pixels``); otherwise the model's image
processor does its own resizing, the same for the rollout and the actor. Videos need torchvision and
are refused with a clear error.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image
from verl.utils.dataset.rl_dataset import RLHFDataset

SPATIAL_MERGE_SIZE = 2  # Qwen2/2.5-VL merge 2x2 patches into one token


def load_image(item: dict[str, Any], image_patch_size: int = 14) -> Image.Image:
    """The RGB image of one ``{"type": "image", ...}`` message item, resized if the item asks for it."""
    source = item.get("image", item.get("image_url"))
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, str) and source.startswith("data:image") and "base64," in source:
        image = Image.open(io.BytesIO(base64.b64decode(source.split("base64,", 1)[1])))
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ValueError(f"image URLs are not fetched on this path; got {source[:80]!r}")
    elif isinstance(source, str):
        image = Image.open(source.removeprefix("file://"))
    else:
        raise TypeError(f"unsupported image in message: {type(source).__name__}")
    image = _to_rgb(image)
    size = _requested_size(item, image, image_patch_size * SPATIAL_MERGE_SIZE)
    return image.resize(size, resample=Image.BICUBIC) if size and size != image.size else image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return image.convert("RGB")


def _requested_size(item: dict[str, Any], image: Image.Image, factor: int) -> tuple[int, int] | None:
    """(width, height) the message item asks for, on the model's patch grid; None if it asks nothing."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if "resized_height" in item and "resized_width" in item:
        height, width = smart_resize(item["resized_height"], item["resized_width"], factor=factor)
    elif "min_pixels" in item or "max_pixels" in item:
        width, height = image.size
        height, width = smart_resize(
            height,
            width,
            factor=factor,
            min_pixels=item.get("min_pixels", 4 * factor**2),
            max_pixels=item.get("max_pixels", 16384 * factor**2),
        )
    else:
        return None
    return width, height


class TorchvisionFreeRLHFDataset(RLHFDataset):
    """``RLHFDataset`` whose image extraction needs neither qwen_vl_utils nor torchvision."""

    @classmethod
    def _process_multi_modal_info(
        cls, messages: list[dict], image_patch_size: int, config: Any
    ) -> tuple[list[Image.Image] | None, None, list[Any] | None]:
        images = []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for item in content:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "video":
                    raise NotImplementedError("video inputs need qwen_vl_utils and torchvision")
                if item.get("type") == "image":
                    images.append(load_image(item, image_patch_size))
        return images or None, None, cls._extract_audio_info(messages)
