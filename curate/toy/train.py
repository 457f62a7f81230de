"""Teach the toy model the toy tasks on a CPU in a few minutes, in the exact chat format engines use.

Each example is the prompt every engine sends — ``curate.scoring.prompts.build_messages(question, 1,
PromptConfig())`` (the default system prompt asking for ``<think>…</think><answer>…</answer>``) through
the processor's chat template with the generation prompt — followed by the target response
``<think>…</think><answer>…</answer><|im_end|>``. The loss covers the response tokens only.

The whole training set is encoded once (processor, mrope position ids) into fixed-shape tensors; a
step is then a forward and backward pass on a random batch of it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from curate.config import PromptConfig
from curate.scoring.prompts import build_messages
from curate.toy.corpus import TASKS, ToySample, iter_samples
from curate.toy.model import ToyArchitecture, build_model
from curate.toy.tokenizer import END_OF_TURN

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainSettings:
    """The trainer's knobs. Changing any field changes the cache key (a new model is trained)."""

    # Reading (ocr, arithmetic) emerges late and abruptly: with 700 steps of 32 it reached 40-75%; with
    # 1000, arithmetic was 70% in one run and 8% in another (2 threads instead of 1); with 1200 it was
    # 84% and 92% for two init seeds. Half the batch for twice the steps, or lr 5e-3 / 1e-2, did worse.
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    # Samples drawn from the corpus with `corpus_seed` and cycled; demo and test corpora use other
    # seeds, so what the model is evaluated on is held out.
    train_samples: int = 4000
    corpus_seed: int = 1_000_003
    tasks: tuple[str, ...] = TASKS
    shuffle_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainReport:
    steps: int
    seconds: float
    encode_seconds: float
    final_loss: float
    threads: int
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_text(processor: "ProcessorMixin", question: str, prompt: PromptConfig | None = None) -> str:
    """The prompt string engines build for one question and one image."""
    messages = build_messages(question, 1, prompt or PromptConfig())
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_examples(processor: "ProcessorMixin", model: "PreTrainedModel",
                    samples: Sequence[ToySample]) -> dict[str, "torch.Tensor"]:
    """Prompt + response of every sample as right-padded tensors, with labels and mrope positions."""
    import torch
    from PIL import Image

    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id
    prompts = processor(
        text=[prompt_text(processor, s.question) for s in samples],
        images=[Image.fromarray(s.image) for s in samples],
        return_tensors="pt", padding=True, padding_side="right",
    )
    responses = [tokenizer(s.response() + END_OF_TURN, add_special_tokens=False)["input_ids"] for s in samples]
    prompt_lengths = prompts["attention_mask"].sum(dim=1).tolist()
    length = max(p + len(r) for p, r in zip(prompt_lengths, responses))
    n = len(samples)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    mm_token_type_ids = torch.zeros((n, length), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lengths, responses)):
        input_ids[i, :p] = prompts["input_ids"][i, :p]
        mm_token_type_ids[i, :p] = prompts["mm_token_type_ids"][i, :p]
        input_ids[i, p : p + len(r)] = torch.tensor(r)
        labels[i, p : p + len(r)] = torch.tensor(r)
        attention_mask[i, : p + len(r)] = 1
    position_ids, _ = model.model.get_rope_index(
        input_ids, mm_token_type_ids, image_grid_thw=prompts["image_grid_thw"], attention_mask=attention_mask
    )
    grid = prompts["image_grid_thw"]
    if not bool((grid == grid[0]).all()):
        raise ValueError("toy training expects every image at the same resolution")
    patches = int(grid[0].prod())
    # Every prompt starts with the same system turn: computed once per step (see `_loss`).
    shared = ((input_ids == input_ids[0]) & attention_mask.bool()).all(dim=0).long().cumprod(dim=0)
    p = int(shared.sum())
    return {
        "prefix_ids": input_ids[:1, :p],
        "prefix_position_ids": position_ids[:, :1, :p],
        "input_ids": input_ids[:, p:],
        "labels": labels[:, p:],
        "attention_mask": attention_mask[:, p:],
        "position_ids": position_ids[:, :, p:],  # (3, n, length - p)
        # float16 halves the resident set (4000 examples: 0.6 GB); batches are cast back to float32.
        "pixel_values": prompts["pixel_values"].reshape(n, patches, -1).to(torch.float16),
        "image_grid_thw": grid,
    }


def _batch(data: dict[str, "torch.Tensor"], index: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    width = int(data["attention_mask"][index].sum(dim=1).max())  # trim the common padding
    return {
        "input_ids": data["input_ids"][index, :width],
        "labels": data["labels"][index, :width],
        "attention_mask": data["attention_mask"][index, :width],
        "position_ids": data["position_ids"][:, index, :width],
        "pixel_values": data["pixel_values"][index].flatten(0, 1).float(),
        "image_grid_thw": data["image_grid_thw"][index],
    }


def _loss(model: "PreTrainedModel", data: dict[str, "torch.Tensor"], batch: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    """Mean response-token loss of the batch, with the shared prompt prefix run once, not per example.

    The system turn is about half of every sequence; its keys and values are computed for one row and
    repeated (gradients flow back through the repeat), which is exactly the full forward pass.
    """
    import torch

    n, width = batch["input_ids"].shape
    p = data["prefix_ids"].shape[1]
    cache = model.model(input_ids=data["prefix_ids"], position_ids=data["prefix_position_ids"],
                        use_cache=True).past_key_values
    cache.batch_repeat_interleave(n)
    return model(
        input_ids=batch["input_ids"],
        attention_mask=torch.cat([torch.ones(n, p, dtype=torch.long), batch["attention_mask"]], dim=1),
        position_ids=batch["position_ids"],
        past_key_values=cache,
        cache_position=torch.arange(p, p + width),
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        labels=batch["labels"],
    ).loss


def _learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_toy_model(arch: ToyArchitecture, settings: TrainSettings,
                    log_every: int = 100) -> tuple["PreTrainedModel", "ProcessorMixin", TrainReport]:
    """Build the toy model, train it on ``settings.train_samples`` fresh samples, return it in eval mode."""
    import torch

    model, processor = build_model(arch)
    start = time.perf_counter()
    samples = list(iter_samples(settings.train_samples, settings.corpus_seed, settings.tasks))
    data = encode_examples(processor, model, samples)
    encode_seconds = time.perf_counter() - start
    logger.info("encoded %d training examples (%d tokens max) in %.1f s", len(samples),
                data["input_ids"].shape[1], encode_seconds)

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(settings.shuffle_seed)
    order = torch.randperm(len(samples), generator=generator)
    cursor, smoothed = 0, float("nan")
    model.train()
    start = time.perf_counter()
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.randperm(len(samples), generator=generator), 0
        batch = _batch(data, order[cursor : cursor + settings.batch_size])
        cursor += settings.batch_size
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = _loss(model, data, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        smoothed = value if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * value
        if log_every and (step + 1) % log_every == 0:
            logger.info("step %d/%d loss %.4f (%.1f s)", step + 1, settings.steps, smoothed,
                        time.perf_counter() - start)
    model.eval()
    report = TrainReport(
        steps=settings.steps,
        seconds=round(time.perf_counter() - start, 2),
        encode_seconds=round(encode_seconds, 2),
        final_loss=round(smoothed, 5),
        threads=torch.get_num_threads(),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return model, processor, report
