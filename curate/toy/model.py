"""The toy Qwen2.5-VL: every size in one dataclass, a builder, and a saver that any loader can read.

The model is a real ``Qwen2_5_VLForConditionalGeneration`` (same code path as Qwen2.5-VL-7B: window
attention ViT, 2×2 patch merger, mrope), only tiny. Sizes respect vLLM's CPU attention kernels
(head_dim >= 32 in the language model and the ViT).

A saved directory holds: ``config.json`` + ``model.safetensors`` + ``generation_config.json``, the
tokenizer (``tokenizer.json``, ``tokenizer_config.json``), ``chat_template.jinja``, and
``processor_config.json`` whose ``auto_map`` names ``processing_hardmode.py`` (copied alongside). It
loads with ``AutoProcessor`` where torchvision works, with
``AutoProcessor.from_pretrained(path, trust_remote_code=True)`` everywhere (verl's path), and with
``curate.modeling.load_processor`` everywhere without remote code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.toy.tokenizer import END_OF_TURN, PAD, SPECIAL_TOKENS, build_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ToyArchitecture:
    """All sizes of the toy model. Changing any field changes the cache key (a new model is trained)."""

    # BPE budget; the trained vocabulary may stop short of it. Embedding rows are padded to a
    # multiple of 64 beyond the 14 special tokens (Qwen's checkpoints pad theirs too).
    bpe_vocab_size: int = 1024
    # Width 128 learns the five tasks from about half the samples width 64 needs (and width 64 never
    # learned to read in our trials), which more than pays for its slower steps.
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4  # head_dim = hidden_size / num_heads = 32, vLLM CPU's minimum
    num_kv_heads: int = 2  # grouped-query attention, like the real model (28 query / 4 kv heads for 7B)
    intermediate_size: int = 512
    # mrope splits each head's 16 rotary frequency pairs into (temporal, height, width) chunks, highest
    # frequencies first; they must sum to head_dim / 2. A low base keeps the width chunk's frequencies
    # high enough to tell neighbouring image columns apart, which reading text in order needs (the
    # real model has 64 pairs and base 1e6). With base 100, OCR stayed at 0%; with base 2, 77%.
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    rope_theta: float = 2.0
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 128
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    # The image processor resizes into [min_image_side², max_image_side²] pixels: a 112×112 image is
    # 8×8 patches = 16 merged image tokens.
    min_image_side: int = 56
    max_image_side: int = 112
    max_position_embeddings: int = 4096
    # transformers' default 0.02 left this model at the unconditional answer distribution for
    # hundreds of steps (attention starts uniform over ~120 tokens); 0.1 breaks symmetry at once.
    init_std: float = 0.1
    init_seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> "ToyArchitecture":
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("toy architecture: hidden_size % num_heads and num_heads % num_kv_heads must be 0")
        if self.head_dim < 32 or self.vision_hidden_size // self.vision_heads < 32:
            raise ValueError("toy architecture: head_dim must be >= 32 (vLLM's CPU attention kernels)")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(f"toy architecture: mrope_section {self.mrope_section} must sum to head_dim/2")
        factor = self.patch_size * self.spatial_merge_size
        if self.min_image_side % factor or self.max_image_side % factor:
            raise ValueError(f"toy architecture: image sides must be multiples of {factor}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _special_ids(tokenizer: "PreTrainedTokenizerBase") -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def build_config(arch: ToyArchitecture, tokenizer: "PreTrainedTokenizerBase"):
    from transformers import Qwen2_5_VLConfig

    arch.validate()
    ids = _special_ids(tokenizer)
    vocab = -(-len(tokenizer) // 64) * 64
    eos, pad = ids[END_OF_TURN], ids[PAD]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_kv_heads,
            max_position_embeddings=arch.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta,
                             "mrope_section": list(arch.mrope_section)},
            bos_token_id=pad,
            eos_token_id=eos,
            pad_token_id=pad,
            tie_word_embeddings=True,
            initializer_range=arch.init_std,
        ),
        vision_config=dict(
            initializer_range=arch.init_std,
            depth=arch.vision_depth,
            hidden_size=arch.vision_hidden_size,
            intermediate_size=arch.vision_intermediate_size,
            num_heads=arch.vision_heads,
            out_hidden_size=arch.hidden_size,
            patch_size=arch.patch_size,
            spatial_merge_size=arch.spatial_merge_size,
            temporal_patch_size=arch.temporal_patch_size,
            window_size=arch.max_image_side,
            fullatt_block_indexes=[arch.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
        initializer_range=arch.init_std,
    )


def _image_size(arch: ToyArchitecture) -> dict[str, int]:
    # A `size` dict, never min_pixels/max_pixels: those kwargs mutate the class-wide default `size`.
    return {"shortest_edge": arch.min_image_side ** 2, "longest_edge": arch.max_image_side ** 2}


def build_processor(arch: ToyArchitecture, tokenizer: "PreTrainedTokenizerBase") -> "ProcessorMixin":
    """The image-only Qwen2.5-VL processor (PIL image processor), the same with or without torchvision."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as Full
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from curate.toy.processing_hardmode import images_only

    image_processor = Qwen2VLImageProcessorPil(
        size=_image_size(arch), patch_size=arch.patch_size, temporal_patch_size=arch.temporal_patch_size,
        merge_size=arch.spatial_merge_size,
    )
    return images_only(Full)(image_processor=image_processor, tokenizer=tokenizer,
                             chat_template=tokenizer.chat_template)


def build_model(arch: ToyArchitecture) -> tuple["PreTrainedModel", "ProcessorMixin"]:
    """A freshly initialised toy model (seeded) and its processor."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tokenizer(arch.bpe_vocab_size)
    config = build_config(arch, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(arch.init_seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    return model, build_processor(arch, tokenizer)


def save_toy_model(model: "PreTrainedModel", processor: "ProcessorMixin", path: str | Path,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write a directory that transformers, verl and vLLM load (see the module docstring)."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as Full

    from curate.toy.processing_hardmode import images_only

    path = Path(path)
    model.save_pretrained(path)
    # Saved through the images-only class whatever `processor` is: its module (processing_hardmode.py)
    # is copied alongside and named in auto_map; the directory is the same on every machine.
    saved = images_only(Full)(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                              chat_template=processor.chat_template)
    type(saved).register_for_auto_class("AutoProcessor")
    saved.save_pretrained(path)
    processor_file = path / "processor_config.json"
    spec = json.loads(processor_file.read_text())
    # Where torchvision works, transformers' own Qwen2_5_VLProcessor (no remote code) needs a video
    # processor config: the same pixel budget as images.
    image = spec["image_processor"]
    spec["video_processor"] = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        **{k: image[k] for k in ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean",
                                 "image_std", "do_convert_rgb", "do_normalize", "do_rescale", "do_resize",
                                 "rescale_factor", "resample")},
    }
    processor_file.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    if extra:
        (path / "toy_model.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
    return path
