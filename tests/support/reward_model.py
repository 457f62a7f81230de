"""A tiny random reward model built offline: a one-layer Qwen2 sequence classifier (one label) with the
toy model's tokenizer and chat template. Its head size (32) is one vLLM's CPU attention serves."""

from __future__ import annotations

from pathlib import Path


def tiny_reward_model(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    from curate.toy.cache import toy_model_path

    tokenizer = AutoTokenizer.from_pretrained(toy_model_path())
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
