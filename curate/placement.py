"""Where scoring actors go and whether their models fit: checked before any work starts.

Ray places an actor only on a node that has all of its resources, so a pool of ``ray.min_actors``
actors needs that many slots node by node, not in cluster sums (16 GPUs on 2 nodes of 8 CPUs each do
not hold 16 actors of 8 CPUs). An actor that asks Ray for no GPU is still free to load its model on
``cuda:0``; on a GPU cluster every such actor would pile onto the same device. And a vLLM engine
that takes ``gpu_memory_utilization`` of the GPU must leave room for the CMAB probe's transformers copy
of the model. Each check raises ``ConfigError`` naming the key to change.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from curate.config import ConfigError, CurateConfig

__all__ = [
    "NodeResources",
    "actors_per_node",
    "check_cluster",
    "check_probe_memory",
    "probe_memory_bytes",
]

_GIB = 1 << 30
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# CUDA context, cuBLAS workspaces and allocator slack of the probe's process share of the GPU.
_CONTEXT_BYTES = 2 * _GIB


@dataclass(frozen=True)
class NodeResources:
    name: str
    cpus: float
    gpus: float


def _fits(available: float, per_actor: float) -> int:
    return math.floor(available / per_actor + 1e-9) if per_actor > 0 else 1 << 30


def actors_per_node(nodes: Sequence[NodeResources], num_cpus: float, num_gpus: float) -> dict[str, int]:
    """How many actors of (``num_cpus``, ``num_gpus``) each node can hold."""
    return {n.name: min(_fits(n.cpus, num_cpus), _fits(n.gpus, num_gpus)) for n in nodes}


def cluster_nodes(ray_nodes: Sequence[Mapping[str, Any]]) -> list[NodeResources]:
    """Alive nodes of ``ray.nodes()`` with their total CPU/GPU resources."""
    return [
        NodeResources(str(n.get("NodeManagerAddress") or n.get("NodeID")), float(n["Resources"].get("CPU", 0)),
                      float(n["Resources"].get("GPU", 0)))
        for n in ray_nodes if n.get("Alive")
    ]


def check_cluster(cfg: CurateConfig, nodes: Sequence[NodeResources]) -> None:
    """Refuse a scoring pool the cluster cannot place, or that would share one GPU by accident."""
    r, e = cfg.ray, cfg.engine
    gpus = sum(n.gpus for n in nodes)
    if gpus > 0 and r.num_gpus == 0 and e.backend != "openai" and e.device != "cpu":
        raise ConfigError(
            f"config key 'ray.num_gpus': 0 on a cluster with {gpus:g} GPUs and engine.device={e.device}: Ray "
            "would give the scoring actors no GPU and each would load its model onto cuda:0 of its node; "
            "set ray.num_gpus (e.g. 1: one GPU per actor) or engine.device=cpu")
    tp = e.vllm.tensor_parallel_size
    if e.backend == "vllm" and tp > max(r.num_gpus, 1):
        raise ConfigError(
            f"config key 'engine.vllm.tensor_parallel_size': {tp} GPUs per vLLM engine, but each scoring actor "
            f"gets ray.num_gpus={r.num_gpus:g}; set ray.num_gpus={tp}")
    fit = actors_per_node(nodes, r.num_cpus, r.num_gpus)
    if sum(fit.values()) < r.min_actors:
        per_node = ", ".join(f"{n.name}: {n.cpus:g} CPU, {n.gpus:g} GPU → {fit[n.name]}" for n in nodes)
        raise ConfigError(
            f"config key 'ray.min_actors': {r.min_actors} actor(s) of {r.num_cpus:g} CPU and {r.num_gpus:g} GPU "
            f"do not fit node by node ({per_node}; {sum(fit.values())} in all); lower ray.min_actors, "
            "ray.num_cpus or ray.num_gpus")


def _model_config(path: str) -> dict[str, Any]:
    config = json.loads((Path(path) / "config.json").read_text())
    return config.get("text_config") or config


def _checkpoint_bytes(path: str) -> int:
    files = list(Path(path).glob("*.safetensors")) or list(Path(path).glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def probe_memory_bytes(cfg: CurateConfig, model_path: str, probe_batch: int) -> int:
    """GPU bytes the attention probe (CMAB, RAP's ACE) needs beside vLLM: its copy of the weights, the
    activations of one teacher-forced forward over ``probe_batch`` sequences of up to
    ``engine.max_model_len`` tokens (hidden states and the MLP's three intermediates of one layer at a
    time, the probe's fp32 softmax chunk and keys, ACE's response×response block), and a CUDA context.
    An estimate with the largest terms, not a bound."""
    text = _model_config(model_path)
    stored = str(text.get("torch_dtype") or text.get("dtype") or "bfloat16")
    loaded = stored if cfg.engine.dtype == "auto" else cfg.engine.dtype
    weights = _checkpoint_bytes(model_path) * _DTYPE_BYTES.get(loaded, 2) // _DTYPE_BYTES.get(stored, 2)
    hidden, inter = int(text["hidden_size"]), int(text["intermediate_size"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads", heads))
    head_dim = int(text.get("head_dim") or hidden // heads)
    tokens = probe_batch * cfg.engine.max_model_len
    element = _DTYPE_BYTES.get(loaded, 2)
    activations = tokens * (4 * hidden + 3 * inter) * element
    ace = cfg.rap.enabled and cfg.rap.ace.enabled
    rows = max([cfg.cmab.probe_chunk] * cfg.cmab.enabled + [cfg.rap.ace.probe_chunk] * ace, default=0)
    chunk = probe_batch * heads * min(rows, cfg.engine.max_model_len) * cfg.engine.max_model_len * 4
    ace_heads = heads if cfg.rap.ace.heads == "max" else 1
    ace_block = probe_batch * ace_heads * (cfg.sampling.max_tokens + 1) ** 2 * 4 if ace else 0
    keys = 2 * tokens * kv_heads * head_dim * 4
    return weights + activations + chunk + ace_block + keys + _CONTEXT_BYTES


def check_probe_memory(cfg: CurateConfig, total_bytes: int, probe_bytes: int) -> None:
    """vLLM takes ``gpu_memory_utilization`` of the GPU; the probe must fit in what is left."""
    utilization = cfg.engine.vllm.gpu_memory_utilization
    left = total_bytes * (1 - utilization)
    if probe_bytes > left:
        most = math.floor((total_bytes - probe_bytes) / total_bytes * 20) / 20
        hint = (f"set engine.vllm.gpu_memory_utilization <= {most:.2f}" if most >= 0.1 else
                "this GPU cannot hold both: give vLLM and the probe a GPU each, or lower engine.max_model_len")
        raise ConfigError(
            f"config key 'engine.vllm.gpu_memory_utilization': {utilization} of a {total_bytes / _GIB:.0f} GiB GPU "
            f"leaves {left / _GIB:.1f} GiB, and the attention probe's copy of the model with its activations needs "
            f"about {probe_bytes / _GIB:.1f} GiB; {hint}")
