"""The transformers backend: the reference engine, and the one that runs on CPU and in the tests.

Batched, left-padded ``model.generate`` over chat requests with images, with two things HF
``generate`` does not give out of the box:

- **Per-request seeds that do not depend on batching.** ``generate`` draws from one global RNG, so a
  row's sample depends on its batch neighbours. ``SeededSampler`` instead draws each row's Gumbel
  noise from that row's own generator and adds it to the tempered, top-p-filtered logits; the greedy
  argmax of the perturbed logits is then an exact sample (Gumbel-max trick). Row ``i`` of a request
  uses seed ``seed + i``, like vLLM, so PISM's early-exit and full-grid schedules see identical answers
  for identical (sample, ratio, realization) attempts however they batch them.
- **One prefill for identical prompts.** ``n > 1`` (e.g. all K attempts at mask ratio 0) would make
  ``num_return_sequences`` run the prompt n times. Here the prompt is run once per distinct prompt
  (all but its last token), the KV cache is repeated across the n rows, and ``generate`` continues
  from it; for Qwen-VL models the multimodal RoPE offsets of the prompt are repeated alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteriaList,
    StopStringCriteria,
)

from curate.engines.base import (
    Completion,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    check_request,
)

if TYPE_CHECKING:
    from curate.config import EngineConfig

log = logging.getLogger(__name__)

# Keys of a processor's output that are per-token sequences (padded on the left when batching);
# every other tensor (pixel_values, image_grid_thw, ...) is concatenated along dim 0 in row order.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else repr(err)


class SeededSampler(LogitsProcessor):
    """Exact temperature/top-p sampling with one RNG per row (Gumbel-max), for greedy ``generate``."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator().manual_seed(int(s) & 0xFFFF_FFFF_FFFF_FFFF) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop a token when the mass before it already reaches top_p (the top token always stays).
            drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, -math.inf)
        vocab = logits.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))
        return logits + gumbel


@dataclass
class _Prompt:
    """One distinct prompt, processed once, with the (request, sample) rows that sample from it."""

    inputs: dict[str, torch.Tensor]
    length: int
    rows: list[tuple[int, int]] = field(default_factory=list)  # (request index, sample index)
    seeds: list[int] = field(default_factory=list)


class TransformersEngine(GenerationEngine):
    name = "transformers"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_model_len: int = 4096,
        batch_size: int = 32,
        share_prefill: bool = True,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_model_len = max_model_len
        self.batch_size = batch_size
        self.share_prefill = share_prefill
        self.device = next(model.parameters()).device
        self.eos_token_ids = self._eos_token_ids()
        self._stop_cache: dict[tuple[str, ...], StoppingCriteriaList] = {}
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_ids[0]

    @classmethod
    def from_config(cls, cfg: "EngineConfig") -> "TransformersEngine":
        from curate.modeling import load_model, load_processor, resolve_model_path

        path = resolve_model_path(cfg.model)
        processor = load_processor(path, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        model = load_model(path, dtype=cfg.dtype, device=cfg.device, attn_implementation=cfg.attn_implementation)
        log.info("transformers engine: %s on %s (%s)", path, next(model.parameters()).device, model.dtype)
        return cls(model, processor, max_model_len=cfg.max_model_len, batch_size=cfg.batch_size)

    def _eos_token_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v is not None and int(v) not in ids:
                    ids.append(int(v))
        if not ids:
            raise ValueError("the model defines no eos_token_id")
        return ids

    def _stop_criteria(self, stop: tuple[str, ...]) -> StoppingCriteriaList:
        """Built once per stop-string set: construction scans the whole vocabulary (seconds for 150k)."""
        if stop not in self._stop_cache:
            criteria = [StopStringCriteria(self.tokenizer, list(stop))] if stop else []
            self._stop_cache[stop] = StoppingCriteriaList(criteria)
        return self._stop_cache[stop]

    # ---- preparation -----------------------------------------------------------------------

    def encode(self, request: GenerationRequest) -> dict[str, torch.Tensor]:
        """The processor's tensors for one request's prompt (batch of one), as ``generate`` sees it."""
        check_request(request)
        text = self.processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if request.images:
            kwargs["images"] = list(request.images)
        inputs = dict(self.processor(**kwargs))
        length = int(inputs["input_ids"].shape[1])
        if length >= self.max_model_len:
            raise ValueError(f"prompt has {length} tokens, engine max_model_len is {self.max_model_len}")
        return inputs

    def _distinct_prompts(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, results: list[GenerationResult | None]
    ) -> list[_Prompt]:
        """Process each request once; requests with equal messages and image ids share one prompt."""
        prompts: list[_Prompt] = []
        by_key: dict[tuple[str, str], _Prompt] = {}
        for r, req in enumerate(requests):
            key = (repr(req.messages), req.image_id) if req.image_id is not None else None
            prompt = by_key.get(key) if key is not None else None
            if prompt is None:
                try:
                    inputs = self.encode(req)
                except Exception as err:  # a bad request must not fail its batch
                    results[r] = GenerationResult(error=_describe(err))
                    continue
                prompt = _Prompt(inputs=inputs, length=int(inputs["input_ids"].shape[1]))
                prompts.append(prompt)
                if key is not None:
                    by_key[key] = prompt
            for i in range(req.n):
                prompt.rows.append((r, i))
                prompt.seeds.append(req.seed + i)
        return prompts

    # ---- generation ------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        prompts = self._distinct_prompts(requests, params, results)
        completions: dict[tuple[int, int], Completion] = {}
        errors: dict[int, str] = {}
        # Longest first keeps padding low and surfaces out-of-memory early.
        prompts.sort(key=lambda p: -p.length)
        for batch in self._batches(prompts):
            self._run(batch, params, completions, errors)
        for prompt in prompts:
            for r, _ in prompt.rows:
                if results[r] is not None:
                    continue
                if r in errors:
                    results[r] = GenerationResult(error=errors[r])
                else:
                    results[r] = GenerationResult(
                        completions=[completions[r, i] for i in range(requests[r].n)], prompt_tokens=prompt.length
                    )
        return results  # type: ignore[return-value]

    def _run(self, batch, params, completions, errors) -> None:
        """Generate one batch; when it fails, split it until the failing rows are isolated as errors."""
        try:
            with torch.inference_mode():
                completions.update(self._generate_batch(batch, params))
            return
        except Exception as err:
            rows = [(prompt, [i]) for prompt, idx in batch for i in idx]
            if len(rows) == 1:
                prompt, (i,) = rows[0]
                errors[prompt.rows[i][0]] = _describe(err)
                return
            log.warning("a batch of %d rows failed (%s); retrying row by row", len(rows), _describe(err))
        for row in rows:
            self._run([row], params, completions, errors)

    def _batches(self, prompts: list[_Prompt]):
        """Batches of (prompt, row indices) with at most ``batch_size`` rows each."""
        batch: list[tuple[_Prompt, list[int]]] = []
        size = 0
        for prompt in prompts:
            rows = list(range(len(prompt.rows)))
            while rows:
                take = rows[: self.batch_size - size]
                rows = rows[len(take):]
                batch.append((prompt, take))
                size += len(take)
                if size >= self.batch_size:
                    yield batch
                    batch, size = [], 0
        if batch:
            yield batch

    def collate(self, encoded: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Left-pad ``encode`` outputs into one batch on the model's device."""
        width = max(int(e["input_ids"].shape[1]) for e in encoded)
        keys = list(dict.fromkeys(k for e in encoded for k in e))
        batch: dict[str, torch.Tensor] = {}
        for key in keys:
            if key in _SEQUENCE_KEYS:
                fill = self.pad_token_id if key == "input_ids" else 0
                padded = []
                for e in encoded:
                    v = e.get(key)
                    if v is None:  # e.g. a text-only prompt without multimodal token types
                        v = torch.zeros_like(e["input_ids"])
                    padded.append(torch.nn.functional.pad(v, (width - v.shape[1], 0), value=fill))
                batch[key] = torch.cat(padded, dim=0)
            else:  # per-image tensors: concatenated in row order
                values = [e[key] for e in encoded if isinstance(e.get(key), torch.Tensor)]
                if values:
                    batch[key] = torch.cat(values, dim=0)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _generate_batch(
        self, batch: list[tuple[_Prompt, list[int]]], params: SamplingParams
    ) -> dict[tuple[int, int], Completion]:
        row_ids = [p.rows[i] for p, rows in batch for i in rows]
        seeds = [p.seeds[i] for p, rows in batch for i in rows]
        # Only prompts with images share a prefill: for an image-less batch, transformers' Qwen-VL forward
        # computes no multimodal positions (they start at 0 whatever the left padding) and keeps the
        # rope deltas of the previous image batch, which generate() itself would have reset.
        shared = (self.share_prefill and len(row_ids) > len(batch)
                  and all("image_grid_thw" in p.inputs for p, _ in batch))
        if shared:
            inputs = self.collate([p.inputs for p, _ in batch])
            # expand[j] = the distinct prompt that row j samples from
            expand = torch.tensor([k for k, (_, rows) in enumerate(batch) for _ in rows], device=self.device)
        else:
            inputs = self.collate([p.inputs for p, rows in batch for _ in rows])
        width = inputs["input_ids"].shape[1]
        shared = shared and width > 1
        gen_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=min(params.max_tokens, self.max_model_len - width),
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_logits=params.logprobs,
        )
        processors = LogitsProcessorList()
        if not params.greedy:
            processors.append(SeededSampler(seeds, params.temperature, params.top_p))
        gen_inputs = self._prefill_and_expand(inputs, expand) if shared else inputs
        out = self.model.generate(
            **gen_inputs,
            generation_config=gen_config,
            logits_processor=processors,
            stopping_criteria=self._stop_criteria(params.stop),
        )
        new_tokens = out.sequences[:, width:]
        step_logprobs = None
        if params.logprobs:
            logits = torch.stack(out.logits, dim=1).float()  # (rows, steps, vocab)
            step_logprobs = logits.log_softmax(-1).gather(-1, new_tokens[:, : logits.shape[1], None])[..., 0]
        return {
            row_ids[j]: self._completion(new_tokens[j], None if step_logprobs is None else step_logprobs[j], params)
            for j in range(len(row_ids))
        }

    def _prefill_and_expand(self, inputs: dict[str, torch.Tensor], expand: torch.Tensor) -> dict[str, Any]:
        """Run each distinct prompt once (all but its last token) and repeat the cache across rows."""
        from transformers import DynamicCache

        prefix = {k: (v[:, :-1] if k in _SEQUENCE_KEYS else v) for k, v in inputs.items()}
        cache = DynamicCache(config=self.model.config)
        self.model(**prefix, past_key_values=cache, use_cache=True)
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, expand)
            layer.values = layer.values.index_select(0, expand)
        rope_owner = getattr(self.model, "model", None)
        deltas = getattr(rope_owner, "rope_deltas", None)
        if deltas is not None:  # Qwen-VL multimodal RoPE: text after the image is offset per prompt
            rope_owner.rope_deltas = deltas.index_select(0, expand)
        rows = {k: v.index_select(0, expand) for k, v in inputs.items() if k in _SEQUENCE_KEYS}
        return {**rows, "past_key_values": cache}

    def _completion(self, tokens: torch.Tensor, logprobs: torch.Tensor | None, params: SamplingParams) -> Completion:
        ids = tokens.tolist()
        end, finish = len(ids), "length"
        for j, t in enumerate(ids):
            if t in self.eos_token_ids:
                end, finish = j + 1, "stop"
                break
        else:  # a row stopped by a stop string is padded up to the batch's longest row
            while end > 0 and ids[end - 1] == self.pad_token_id:
                end -= 1
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        for stop in params.stop:
            at = text.find(stop)
            if at != -1:
                text, finish = text[: at + len(stop)], "stop"
                end = self._tokens_to_cover(ids[:end], at + len(stop))
                break
        return Completion(
            text=text,
            num_tokens=end,
            finish_reason=finish,
            token_ids=ids[:end] if params.logprobs else None,
            logprobs=logprobs[:end].tolist() if logprobs is not None else None,
        )

    def _tokens_to_cover(self, ids: list[int], chars: int) -> int:
        """The number of leading tokens whose decoded text reaches ``chars`` characters."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
