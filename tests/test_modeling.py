"""The shared loader: model names, processors with and without torchvision, pixel budgets, models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from curate.modeling import DEFAULT_MAX_PIXELS, load_model, load_processor, pixel_bounds, resolve_model_path

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model


@pytest.fixture(scope="module")
def toy_dir() -> Path:
    from curate.toy import toy_model_path

    return toy_model_path()


def _image_tokens(processor, side: int) -> int:
    image = Image.new("RGB", (side, side), (200, 30, 30))
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    return int((inputs["input_ids"] == processor.image_token_id).sum())


def test_resolve_model_path(toy_dir):
    assert resolve_model_path("toy") == str(toy_dir)
    assert resolve_model_path("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_model_path("/models/mine") == "/models/mine"


def test_pixel_budget_is_per_instance(toy_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class_default = dict(Qwen2VLImageProcessorPil.size)
    small = load_processor(str(toy_dir), max_pixels=56 * 56)
    assert _image_tokens(small, 112) == 4  # 112×112 resized to 56×56: 2×2 merged tokens
    assert _image_tokens(load_processor(str(toy_dir)), 112) == 16  # a fresh load keeps the saved budget
    large = load_processor(str(toy_dir), min_pixels=224 * 224, max_pixels=224 * 224)
    assert _image_tokens(large, 112) == 64
    assert dict(Qwen2VLImageProcessorPil.size) == class_default
    with pytest.raises(ValueError, match="min_pixels"):
        load_processor(str(toy_dir), min_pixels=200 * 200, max_pixels=100 * 100)


def test_call_time_pixel_caps_need_both_bounds(toy_dir):
    """The trap vLLM's mm_processor_kwargs fall into: transformers applies call-time bounds only in
    pairs, so max_pixels alone changes nothing; pixel_bounds always gives both."""
    processor = load_processor(str(toy_dir))
    image = Image.new("RGB", (448, 448), (200, 30, 30))

    def tokens(**kwargs) -> int:
        grid = processor.image_processor(images=[image], return_tensors="pt", **kwargs)["image_grid_thw"]
        return int(grid.prod()) // 4

    cap = 8 * 28 * 28  # at most 8 merged tokens
    assert tokens(max_pixels=cap) == tokens() == 16  # ignored alone
    bounds = pixel_bounds(str(toy_dir), None, cap)
    assert bounds == {"min_pixels": 3136, "max_pixels": cap}  # the checkpoint's own minimum
    assert tokens(**bounds) <= 8


def test_pixel_bounds_fill_the_missing_bound_from_the_checkpoint(toy_dir, tmp_path):
    assert pixel_bounds(str(toy_dir), None, None) is None
    assert pixel_bounds(str(toy_dir), 6272, None) == {"min_pixels": 6272, "max_pixels": 12544}
    hub_style = tmp_path / "hub_style"
    hub_style.mkdir()
    (hub_style / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 12845056}))
    assert pixel_bounds(str(hub_style), None, 1254400) == {"min_pixels": 3136, "max_pixels": 1254400}
    bare = tmp_path / "bare"
    bare.mkdir()
    assert pixel_bounds(str(bare), 100, None) == {"min_pixels": 100, "max_pixels": DEFAULT_MAX_PIXELS}
    with pytest.raises(ValueError, match="must not exceed"):
        pixel_bounds(str(toy_dir), 20000, None)


def test_images_only_processor_for_any_qwen_vl_checkpoint(toy_dir, tmp_path, monkeypatch):
    """A checkpoint without remote code (as on the hub) still loads where torchvision does not work."""
    import shutil

    import curate.toy.processing_hardmode as processing

    plain = tmp_path / "plain"
    shutil.copytree(toy_dir, plain)
    (plain / "processing_hardmode.py").unlink()
    spec = json.loads((plain / "processor_config.json").read_text())
    spec.pop("auto_map")
    (plain / "processor_config.json").write_text(json.dumps(spec))
    monkeypatch.setattr(processing, "torchvision_works", lambda: False)
    processor = load_processor(str(plain))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor).get_attributes() == ["image_processor", "tokenizer"]
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert _image_tokens(processor, 112) == 16


def test_non_processor_checkpoint_fails_clearly(tmp_path, monkeypatch):
    import curate.toy.processing_hardmode as processing

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"processor_class": "NoSuchProcessor"}))
    monkeypatch.setattr(processing, "torchvision_works", lambda: False)
    with pytest.raises(ValueError, match="NoSuchProcessor"):
        load_processor(str(tmp_path))


def test_load_model_eval_mode_dtype_and_attention(toy_dir):
    model = load_model(str(toy_dir), device="cpu")
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    eager = load_model(str(toy_dir), dtype="bfloat16", device="cpu", attn_implementation="eager")
    assert eager.dtype == torch.bfloat16
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        attentions = eager(input_ids=ids, output_attentions=True).attentions
    assert len(attentions) == model.config.text_config.num_hidden_layers
    assert torch.allclose(attentions[0].float().sum(-1), torch.ones(1), atol=1e-2)  # probabilities


def test_load_model_rejects_bad_arguments(toy_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(toy_dir), dtype="float8")
    with pytest.raises(ValueError, match="device"):
        load_model(str(toy_dir), device="tpu")


def test_processors_survive_pickle(toy_dir):
    """Ray and dataloader workers pickle processors: the images-only class must be found by reference."""
    import pickle

    from transformers import AutoProcessor

    for processor in (load_processor(str(toy_dir)), AutoProcessor.from_pretrained(toy_dir, trust_remote_code=True)):
        clone = pickle.loads(pickle.dumps(processor))
        assert type(clone) is type(processor)
        assert _image_tokens(clone, 112) == 16
