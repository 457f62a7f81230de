"""The toy model's tokenizer: a small byte-level BPE with Qwen2's pre-tokenizer and Qwen2.5-VL's tokens.

Why not the real 151k-token Qwen vocabulary: the toy model's embedding and output layers would then
hold 10M of its parameters and most of its training time; a vocabulary of about a thousand tokens
trains in milliseconds and keeps everything that matters for the code under test: byte-level BPE (any
text encodes), Qwen2's pre-tokenizer (digits split one by one), the 14 special tokens of Qwen2.5-VL in
their real order, and Qwen2.5-VL's official chat template, so engines, verl and vLLM see the exact
token layout of the real model, only with smaller ids.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterator

from curate.config import DEFAULT_SYSTEM_PROMPT
from curate.toy.corpus import COLORS, OCR_ALPHABET, SHAPES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Qwen2.5-VL's special tokens, in the order of their ids (151643…151656 in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL-Instruct's chat template (chat_template.json of the released checkpoints).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

END_OF_TURN = "<|im_end|>"
PAD = "<|endoftext|>"


def _training_text() -> Iterator[str]:
    """What the BPE merges are learned from: the fixed text of prompts and responses, in fixed order.

    Codes and numbers of individual samples are left out on purpose: OCR codes then tokenize letter by
    letter and every number digit by digit (Qwen2's pre-tokenizer already splits digits).
    """
    yield DEFAULT_SYSTEM_PROMPT
    yield "You are a helpful assistant."
    for role in ("system", "user", "assistant"):
        yield role
    yield "What is the value of the sum in the image? What text is written in the image?"
    yield "I count them. I look at its color. I read the text. I find it."
    for shape in SHAPES:
        yield f"What color is the {shape}?"
        for color in COLORS:
            yield f"How many {color} {shape}s are there?"
            yield f"Where is the {color} {shape}? Answer with its bbox_2d in JSON."
            yield f"<think></think><answer>{color}</answer>"
    yield '<think></think><answer>[{"bbox_2d": [0, 0, 0, 0]}]</answer>'
    yield "0 1 2 3 4 5 6 7 8 9 + - * / = . , ; : ! ? ( ) [ ] { } \" ' " + " ".join(OCR_ALPHABET)


def build_tokenizer(vocab_size: int) -> "PreTrainedTokenizerBase":
    """A ``Qwen2Tokenizer`` with a BPE of at most ``vocab_size`` tokens, then the 14 special tokens.

    Deterministic: the same text in the same order gives the same merges on every machine.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # Repeating the text weights its words; the lines stay in a fixed order.
    bpe.train_from_iterator([line for line in _training_text() for _ in range(4)], trainer)
    spec = json.loads(bpe.to_str())["model"]
    vocab = dict(spec["vocab"])
    first = len(vocab)
    vocab.update({token: first + i for i, token in enumerate(SPECIAL_TOKENS)})  # ids fixed here, in order
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in spec["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(first, first + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected consecutive from {first}")
    return tokenizer
