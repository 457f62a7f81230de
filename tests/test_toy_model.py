"""The trained toy model: it reads its images, masking them hurts, and every loader opens its directory.

The model trains once per machine into the cache (``curate.toy.toy_model_path``); these tests reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate.toy.corpus import TASKS, iter_samples
from curate.toy.model import ToyArchitecture
from curate.toy.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS
from curate.toy.train import TrainSettings

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

HELD_OUT_SEED = 0  # the trainer draws from TrainSettings.corpus_seed, so these samples are unseen


@pytest.fixture(scope="module")
def toy_dir() -> Path:
    from curate.toy import toy_model_path

    return toy_model_path()


@pytest.fixture(scope="module")
def toy(toy_dir):
    from curate.modeling import load_model, load_processor

    return load_model(str(toy_dir), device="cpu"), load_processor(str(toy_dir))


def test_held_out_accuracy_well_above_chance_and_lower_when_masked(toy):
    from curate.toy.evaluate import evaluate

    model, processor = toy
    assert HELD_OUT_SEED != TrainSettings().corpus_seed
    samples = list(iter_samples(100, seed=HELD_OUT_SEED))
    result = evaluate(model, processor, samples, ratios=(0.0, 0.5, 0.9), realizations=2, seed=0)
    chance = {t: max(np.unique([s.answer for s in samples if s.task == t], return_counts=True)[1])
              / sum(s.task == t for s in samples) for t in TASKS}
    clear, half, most = (np.mean([result.accuracy[t][j] for t in TASKS]) for j in range(3))
    assert clear >= 0.6 and clear >= 2 * np.mean(list(chance.values()))
    assert sum(result.accuracy[t][0] > chance[t] + 0.2 for t in TASKS) >= 4
    assert most <= clear - 0.3  # a black block over 90% of the image
    # The spread PISM measures: among samples answered right unmasked, some survive half the image
    # masked and others do not.
    solved = [counts for counts in result.per_sample.values() if counts[0] == 2]
    assert any(c[1] == 2 for c in solved) and any(c[1] == 0 for c in solved)


def test_saved_directory_matches_the_architecture(toy_dir):
    from transformers import AutoConfig, AutoTokenizer

    arch = ToyArchitecture()
    config = AutoConfig.from_pretrained(toy_dir)
    tokenizer = AutoTokenizer.from_pretrained(toy_dir)
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + 14))  # Qwen2.5-VL's order, consecutive
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = config.text_config
    assert text.vocab_size >= len(tokenizer) and text.vocab_size % 64 == 0
    assert text.hidden_size // text.num_attention_heads >= 32
    assert config.vision_config.hidden_size // config.vision_config.num_heads >= 32
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    assert (toy_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    meta = json.loads((toy_dir / "toy_model.json").read_text())
    as_json = json.loads(json.dumps({"architecture": arch.to_dict(), "training": TrainSettings().to_dict()}))
    assert {k: meta[k] for k in as_json} == as_json


def test_processor_without_torchvision_gives_16_image_tokens(toy_dir):
    from curate.modeling import load_processor
    from curate.toy.processing_hardmode import torchvision_works

    processor = load_processor(str(toy_dir))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    if not torchvision_works():
        assert "video_processor" not in type(processor).get_attributes()
    sample = next(iter_samples(1))
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.fromarray(sample.image)],
                       return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 16


def test_auto_processor_with_remote_code_and_without(toy_dir):
    """verl's path is AutoProcessor(trust_remote_code=True); plain AutoProcessor needs torchvision."""
    from transformers import AutoProcessor

    from curate.toy.processing_hardmode import torchvision_works

    remote = AutoProcessor.from_pretrained(toy_dir, trust_remote_code=True)
    assert type(remote).__name__ == "Qwen2_5_VLProcessor"
    assert remote.image_processor.size.longest_edge == 112 * 112
    if torchvision_works():
        full = AutoProcessor.from_pretrained(toy_dir)
        assert full.video_processor is not None
    else:
        with pytest.raises(Exception, match="(?i)torchvision"):
            AutoProcessor.from_pretrained(toy_dir)


def test_verl_builds_a_multimodal_sample_with_the_saved_processor(toy_dir, tmp_path):
    """verl's own loaders and dataset on a verl-format parquet row of the toy corpus."""
    import io

    import pandas as pd
    import torch
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import build_multimodal_processor_inputs, hf_processor, hf_tokenizer

    sample = next(iter_samples(1, seed=HELD_OUT_SEED))
    png = io.BytesIO()
    Image.fromarray(sample.image).save(png, format="PNG")
    pd.DataFrame([{
        "data_source": f"toy/{sample.task}",
        "prompt": [{"role": "user", "content": sample.question}],
        "images": [{"bytes": png.getvalue(), "path": None}],
        "ability": sample.task,
        "reward_model": {"style": "rule", "ground_truth": sample.answer},
        "extra_info": {"index": 0, "id": sample.id},
    }]).to_parquet(tmp_path / "train.parquet")

    processor = hf_processor(str(toy_dir), trust_remote_code=True, use_fast=True)  # as verl's main_ppo
    assert processor is not None and hasattr(processor, "get_rope_index")
    tokenizer = hf_tokenizer(str(toy_dir), trust_remote_code=True)
    config = OmegaConf.create({"max_prompt_length": 512, "filter_overlong_prompts": False,
                               "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset(str(tmp_path / "train.parquet"), tokenizer, config, processor)
    row = dataset[0]
    messages = row["raw_prompt"]
    # What verl's agent loop does next (its image extraction needs qwen_vl_utils, i.e. torchvision).
    images = [part["image"] for m in messages for part in m["content"] if part.get("type") == "image"]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = build_multimodal_processor_inputs(processor, text=[prompt], images=images)
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 16
    position_ids, _ = processor.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    assert position_ids.shape == (3, 1, inputs["input_ids"].shape[1])
    vision = position_ids[:, 0, inputs["input_ids"][0] == processor.image_token_id]
    assert torch.equal(vision[1].unique(), vision[1].min() + torch.arange(4))  # 4 rows of merged tokens
    assert row["reward_model"]["ground_truth"] == sample.answer
