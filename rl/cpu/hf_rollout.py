"""An "hf" rollout for verl 0.9.1: token-in/token-out generation with transformers, for machines where
vLLM/SGLang cannot run (CPU CI, laptops).

verl 0.9.1 generates through rollout *servers*: the agent loop sends ``generate(prompt_ids,
sampling_params, image_data)`` to a Ray actor started by a ``RolloutReplica``, and the FSDP worker
pushes new weights to that actor through a ``BaseRollout`` "server adapter" after each step. Only
vllm/sglang/trtllm are registered (the old in-process ``HFRollout`` no longer fits this interface), so
on CPU there is no rollout at all. This module provides the three pieces for ``rollout.name=hf``:

- :class:`HFRolloutServer`, the Ray actor: a transformers model answering ``generate`` with sampled
  token ids and their log-probabilities (what vLLM's ``processed_logprobs`` returns), images included;
- :class:`HFReplica`, the ``RolloutReplica`` that starts one server next to its FSDP workers;
- :class:`HFServerAdapter`, the ``BaseRollout`` in the FSDP worker whose ``update_weights`` streams the
  actor's full tensors to the server in buckets (verl's weight sync, ``checkpoint_engine.backend=naive``).

Requests for the same prompt and images with the same sampling settings (a GRPO group: verl sends
``rollout.n`` of them at once) are served as one batched ``model.generate``, each row trimmed at its
own end of sequence; different prompts wait their turn (an asyncio lock), so no padding ever enters a
batch. Rollouts of 32 prompts × 8 for the toy study: 22 s a step one request at a time, 10 s batched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from rl.cpu import ROLLOUT_NAME

SERVER_NAME_PREFIX = f"{ROLLOUT_NAME}_server"


def server_actor_name(replica_rank: int) -> str:
    """The Ray actor name under which a replica's server is found by the workers' adapters."""
    return f"{SERVER_NAME_PREFIX}_{replica_rank}"


def _torch_dtype(name: str) -> torch.dtype:
    from verl.utils.torch_dtypes import PrecisionType

    return PrecisionType.to_dtype(name)


def _batch_key(
    prompt_ids: list[int],
    sampling_params: dict[str, Any],
    max_tokens: int,
    images: list[Any] | None,
    mm_processor_kwargs: dict[str, Any] | None,
) -> tuple:
    """What requests must share to be answered by one batch: prompt, images (by content), settings."""
    digest = hashlib.sha1()
    for image in images or []:
        shape = (type(image).__name__, getattr(image, "mode", None), getattr(image, "size", None),
                 getattr(image, "shape", None))
        digest.update(repr(shape).encode())
        # PIL images and arrays by their pixels; anything else only batches with itself
        digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(id(image)).encode())
    settings = {k: v for k, v in sampling_params.items() if k != "logprobs"}  # logprobs: per request
    return (
        tuple(prompt_ids),
        digest.hexdigest(),
        max_tokens,
        repr(sorted(settings.items())),
        repr(sorted((mm_processor_kwargs or {}).items())),
    )


class HFRolloutServer:
    """One transformers model serving verl's token-in/token-out ``generate`` calls."""

    def __init__(self, config: RolloutConfig, model_config: Any, replica_rank: int) -> None:
        from verl.utils.model import get_hf_auto_model_class

        self.config: RolloutConfig = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        self.global_steps: int | None = None
        torch.manual_seed(self.config.seed + replica_rank)

        hf_config = self.model_config.hf_config
        auto_class = get_hf_auto_model_class(hf_config=hf_config)
        dtype = _torch_dtype(self.config.dtype)
        if self.config.load_format == "dummy":
            # verl's contract for "dummy": random weights until the first sync from the actor.
            self.model = auto_class.from_config(hf_config, dtype=dtype)
        else:
            self.model = auto_class.from_pretrained(
                self.model_config.local_path,
                config=hf_config,
                dtype=dtype,
                trust_remote_code=self.model_config.trust_remote_code,
            )
        self.model.eval()
        self._params = dict(self.model.state_dict())
        self._lock = asyncio.Lock()
        # Requests whose batch waits for the lock, by what they share (_batch_key); the batches' tasks.
        self._waiting: dict[tuple, list[asyncio.Future]] = {}
        self._serving: set[asyncio.Task] = set()

        tokenizer = self.model_config.tokenizer
        generation_config = self.model_config.generation_config
        eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )

    # ---- generation -------------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        if video_data is not None or audio_data is not None:
            raise NotImplementedError("the hf rollout serves text and images only")
        max_tokens = self._max_new_tokens(len(prompt_ids), sampling_params)
        key = _batch_key(prompt_ids, sampling_params, max_tokens, image_data, mm_processor_kwargs)
        answer = asyncio.get_running_loop().create_future()
        batch = self._waiting.get(key)
        if batch is None:  # the first of its group: one task will answer every request that joins it
            batch = self._waiting[key] = []
            task = asyncio.create_task(self._serve_batch(
                key, list(prompt_ids), dict(sampling_params), max_tokens, image_data, mm_processor_kwargs))
            self._serving.add(task)  # the loop only holds tasks weakly
            task.add_done_callback(self._serving.discard)
        batch.append(answer)
        token_ids, log_probs = await answer
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _serve_batch(self, key: tuple, prompt_ids: list[int], sampling_params: dict[str, Any],
                           max_tokens: int, image_data: list[Any] | None,
                           mm_processor_kwargs: dict[str, Any] | None) -> None:
        """Once the lock is free, answer every request that joined ``key``'s batch with one generate.

        A task of its own, not the first request's: a request that is cancelled leaves the others
        their batch, and none of them waits for the lock after its answer is there.
        """
        async with self._lock:
            batch = self._waiting.pop(key)
            try:
                rows = await asyncio.to_thread(self._generate, prompt_ids, sampling_params, max_tokens,
                                               image_data, mm_processor_kwargs, len(batch))
            except Exception as err:
                for answer in batch:
                    if not answer.done():
                        answer.set_exception(err)
            else:
                for answer, row in zip(batch, rows, strict=True):
                    if not answer.done():  # a cancelled request's row is dropped
                        answer.set_result(row)

    def _max_new_tokens(self, prompt_len: int, sampling_params: dict[str, Any]) -> int:
        # Same budget as verl's vLLM server: the response length, capped by what is left of
        # prompt_length + response_length after this prompt.
        budget = self.config.prompt_length + self.config.response_length - prompt_len
        requested = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
        max_tokens = min(self.config.response_length, budget) if requested is None else min(requested, budget)
        if max_tokens < 1:
            total = self.config.prompt_length + self.config.response_length
            raise ValueError(
                f"prompt of {prompt_len} tokens leaves no room to generate (prompt + response length {total})"
            )
        return max_tokens

    @torch.no_grad()
    def _generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        max_tokens: int,
        images: list[Any] | None,
        mm_processor_kwargs: dict[str, Any] | None,
        rows: int,
    ) -> list[tuple[list[int], list[float]]]:
        """``rows`` responses to one prompt: token ids and their log-probs, each cut at its first EOS."""
        from transformers import GenerationConfig

        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if images:
            inputs.update(self._image_inputs(input_ids, images, mm_processor_kwargs))
        if rows > 1:
            # One prompt, so no padding: every tensor is the single prompt's, repeated along its first dim.
            inputs = {name: value.repeat(rows, *([1] * (value.dim() - 1))) for name, value in inputs.items()}

        temperature = float(sampling_params.get("temperature", self.config.temperature))
        top_k = int(sampling_params.get("top_k", self.config.top_k))
        do_sample = temperature > 0 and self.config.do_sample
        # Every sampling knob is set explicitly: the model's own generation_config (top_k=50 …)
        # would otherwise change the distribution the actor's log-probs are compared against.
        generation_config = GenerationConfig(
            do_sample=do_sample,
            temperature=temperature if do_sample else 1.0,
            top_p=float(sampling_params.get("top_p", self.config.top_p)) if do_sample else 1.0,
            top_k=top_k if do_sample and top_k > 0 else 0,
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            max_new_tokens=max_tokens,
            eos_token_id=None if self.config.ignore_eos else self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        out = self.model.generate(**inputs, generation_config=generation_config)
        # Log-probs of the sampled tokens under the temperature-scaled distribution: what the actor
        # recomputes (logits / temperature) and vLLM's processed_logprobs report.
        logits = torch.stack(out.logits, dim=1).float()
        if do_sample:
            logits = logits / temperature
        sequences = out.sequences[:, len(prompt_ids) :]
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, sequences[:, :, None])[:, :, 0]
        stops = set() if self.config.ignore_eos else set(self.eos_token_ids)
        answers = []
        for token_ids, token_log_probs in zip(sequences.tolist(), log_probs.tolist(), strict=True):
            # A row that ended before the longest one is padded after its EOS: cut there.
            end = next((i + 1 for i, token in enumerate(token_ids) if token in stops), len(token_ids))
            answers.append((token_ids[:end], token_log_probs[:end]))
        return answers

    def _image_inputs(
        self, input_ids: torch.Tensor, images: list[Any], mm_processor_kwargs: dict[str, Any] | None
    ) -> dict[str, torch.Tensor]:
        """Pixel values for the images whose placeholder tokens are already expanded in the prompt."""
        processor = self.model_config.processor
        if processor is None:
            raise ValueError(
                f"{self.model_config.local_path} has no multimodal processor; cannot take images"
            )
        image_inputs = dict(
            processor.image_processor(images=images, return_tensors="pt", **(mm_processor_kwargs or {}))
        )
        # Qwen2/2.5-VL place vision tokens on the 3D rope grid only where mm_token_type_ids says so.
        if hasattr(processor, "create_mm_token_type_ids"):
            image_inputs["mm_token_type_ids"] = torch.as_tensor(
                processor.create_mm_token_type_ids(input_ids.tolist())
            )
        return image_inputs

    # ---- weights ----------------------------------------------------------------------------------

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Copy one bucket of the actor's full tensors into the model (names are HF state-dict names)."""
        unknown = [name for name, _ in named_tensors if name not in self._params]
        if unknown:
            raise KeyError(
                f"weights the rollout model does not have: {unknown[:5]} "
                f"(model has e.g. {list(self._params)[:3]})"
            )
        async with self._lock:
            for name, tensor in named_tensors:
                self._params[name].copy_(tensor)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # ---- lifecycle calls verl makes on every rollout server ---------------------------------------
    # There is no device memory to hand back on CPU: weights stay resident between steps and are
    # overwritten in place by each sync; transformers keeps no KV cache between requests.

    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        async with self._lock:
            return None

    async def abort_all_requests(
        self, reset_prefix_cache: bool = True, reject_request: bool = False
    ) -> dict[str, Any]:
        # Each batch is one blocking generate call: nothing can be cut short, the lock drains them.
        await self.wait_for_requests_to_drain()
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict[str, Any]:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """Starts one :class:`HFRolloutServer` per replica, on the node of the replica's FSDP workers."""

    async def launch_servers(self) -> None:
        if self.nnodes != 1:
            raise ValueError(
                f"the hf rollout serves a replica from one node; got {self.nnodes} nodes "
                f"(tensor_model_parallel_size={self.config.tensor_model_parallel_size})"
            )
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(
                lambda self: ray.get_runtime_context().get_node_id()
            )
            placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}
        else:
            placement = {}
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_actor_name(self.replica_rank), max_concurrency=self.max_concurrency, **placement
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        self.servers = [server]
        self._server_handle = server
        # Token-in/token-out only: there is no HTTP endpoint. The load balancer keys servers by this.
        self._server_address = server_actor_name(self.replica_rank)
        await server.wait_for_requests_to_drain.remote()  # returns once the model is loaded


class HFServerAdapter(BaseRollout):
    """The FSDP worker's side of the hf rollout: finds its replica's server and syncs weights to it."""

    def __init__(
        self, config: RolloutConfig, model_config: HFModelConfig, device_mesh: Any, replica_rank: int = -1
    ):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        # One rank per replica talks to the server; every rank still walks the weight generator,
        # because gathering a sharded parameter is a collective.
        self.is_leader = rank % rollout_world_size == 0
        self._server: ray.actor.ActorHandle | None = None

    @property
    def server(self) -> ray.actor.ActorHandle:
        # Looked up lazily: verl builds the workers (and this adapter) before the replica's server.
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        if self.is_leader:
            await self.server.wake_up.remote(tags=tags)

    async def release(self) -> None:
        if self.is_leader:
            await self.server.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor]],
        global_steps: int | None = None,
        wire_format: str = "named_tensors",
        **kwargs: Any,
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"the hf rollout takes full tensors (wire_format='named_tensors'), got {wire_format!r}"
            )
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError(
                "the hf rollout takes merged weights; set actor_rollout_ref.model.lora.merge=True"
            )
        bucket_bytes = self.config.checkpoint_engine.update_weights_bucket_megabytes << 20
        async for bucket in _buckets(weights, bucket_bytes):
            if self.is_leader:
                await self.server.load_weights.remote(bucket)
        if self.is_leader and global_steps is not None:
            await self.server.set_global_steps.remote(global_steps)


async def _buckets(
    weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> AsyncIterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of about ``bucket_bytes``, detached CPU copies."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        tensor = tensor.detach().to("cpu").contiguous()
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket
