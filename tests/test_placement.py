"""Checks that stop a GPU run before it starts: placement node by node, one GPU per actor, the probe
beside vLLM, and model paths a cluster can load."""

from __future__ import annotations

import json
import os

import pytest

from curate.config import ConfigError, load_config
from curate.placement import (
    NodeResources,
    actors_per_node,
    check_cluster,
    check_probe_memory,
    cluster_nodes,
    probe_memory_bytes,
)

GIB = 1 << 30
# Qwen2.5-VL-7B-Instruct's text config (config.json on the hub) and its bf16 checkpoint size.
QWEN25_VL_7B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
                     "num_key_value_heads": 4, "num_hidden_layers": 28, "torch_dtype": "bfloat16"}
QWEN25_VL_7B_BYTES = 16_584_333_312


@pytest.fixture
def model_7b(tmp_path):
    """A directory shaped like the 7B checkpoint (sparse weight files: sizes without the bytes)."""
    path = tmp_path / "Qwen2.5-VL-7B-Instruct"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "text_config": QWEN25_VL_7B_TEXT}))
    for i, size in enumerate((QWEN25_VL_7B_BYTES // 2, QWEN25_VL_7B_BYTES - QWEN25_VL_7B_BYTES // 2)):
        with open(path / f"model-{i:05d}.safetensors", "wb") as f:
            f.truncate(size)
    return str(path)


def cfg(*overrides: str):
    return load_config(overrides=["data.format=toy", *overrides])


def test_actors_are_counted_node_by_node_not_in_sums():
    nodes = [NodeResources("a", cpus=4, gpus=2), NodeResources("b", cpus=12, gpus=0)]
    assert actors_per_node(nodes, num_cpus=4, num_gpus=1) == {"a": 1, "b": 0}
    assert actors_per_node(nodes, num_cpus=1, num_gpus=0.5) == {"a": 4, "b": 0}
    # The cluster has 16 CPUs and 2 GPUs, enough in sums for two 4-CPU 1-GPU actors; no node holds both.
    with pytest.raises(ConfigError, match=r"ray.min_actors.*a: 4 CPU, 2 GPU → 1, b: 12 CPU, 0 GPU → 0"):
        check_cluster(cfg("ray.min_actors=2", "ray.max_actors=2", "ray.num_cpus=4", "ray.num_gpus=1",
                          "engine.model=org/m"), nodes)
    check_cluster(cfg("ray.num_cpus=4", "ray.num_gpus=1", "engine.model=org/m"), nodes)


def test_ray_nodes_become_resources():
    raw = [{"NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
           {"NodeManagerAddress": "10.0.0.2", "Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}},
           {"NodeManagerAddress": "10.0.0.3", "Alive": True, "Resources": {"CPU": 2.0}}]
    assert cluster_nodes(raw) == [NodeResources("10.0.0.1", 8, 1), NodeResources("10.0.0.3", 2, 0)]


def test_gpu_cluster_refuses_actors_without_a_gpu():
    gpu_node = [NodeResources("a", cpus=16, gpus=8)]
    with pytest.raises(ConfigError, match="ray.num_gpus.*cuda:0"):
        check_cluster(cfg(), gpu_node)
    check_cluster(cfg("engine.device=cpu"), gpu_node)
    check_cluster(cfg("engine.backend=openai"), gpu_node)
    check_cluster(cfg(), [NodeResources("cpu-only", cpus=16, gpus=0)])


def test_tensor_parallel_needs_that_many_gpus_per_actor():
    nodes = [NodeResources("a", cpus=32, gpus=8)]
    with pytest.raises(ConfigError, match="engine.vllm.tensor_parallel_size.*ray.num_gpus=2"):
        check_cluster(cfg("engine.backend=vllm", "engine.vllm.tensor_parallel_size=2", "ray.num_gpus=1",
                          "engine.model=org/m"), nodes)
    check_cluster(cfg("engine.backend=vllm", "engine.vllm.tensor_parallel_size=2", "ray.num_gpus=2",
                      "engine.model=org/m"), nodes)


def test_probe_memory_of_the_7b(model_7b):
    c = cfg("engine.backend=vllm", "cmab.enabled=true", f"engine.model={model_7b}", "engine.dtype=bfloat16",
            "engine.vllm.gpu_memory_utilization=0.6")
    need = probe_memory_bytes(c, model_7b, probe_batch=8)
    # weights 15.4 GiB + 8 × 4096 tokens of activations (4.3 GiB) + fp32 softmax chunk and keys + context
    assert 21 * GIB < need < 25 * GIB
    check_probe_memory(c, 141 * GIB, need)  # an H200 at the recipe's 0.6
    check_probe_memory(c, 80 * GIB, need)  # an A100/H100 80 GB at 0.6 leaves 32 GiB
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization.*<= 0\.4[05]"):
        check_probe_memory(c, 40 * GIB, need)  # A100 40 GB: 16 GiB left is too little
    with pytest.raises(ConfigError, match="cannot hold both"):
        check_probe_memory(c, 24 * GIB, need)
    # fp32 doubles the weights and the activations
    fp32 = cfg("cmab.enabled=true", f"engine.model={model_7b}", "engine.dtype=float32")
    assert probe_memory_bytes(fp32, model_7b, 8) > need + 19 * GIB
    # RAP's ACE adds its response×response block: 8 × (1024 + 1)² fp32 head means, 28× with heads=max
    ace = cfg("cmab.enabled=true", "rap.enabled=true", f"engine.model={model_7b}", "engine.dtype=bfloat16")
    assert probe_memory_bytes(ace, model_7b, 8) - need == 8 * 1025**2 * 4
    ace_max = cfg("cmab.enabled=true", "rap.enabled=true", "rap.ace.heads=max", f"engine.model={model_7b}",
                  "engine.dtype=bfloat16")
    assert probe_memory_bytes(ace_max, model_7b, 8) - need == 28 * 8 * 1025**2 * 4


def test_scorer_refuses_before_vllm_loads(model_7b, monkeypatch):
    """On a 40 GB GPU the check fails first; without it, vLLM (absent here) would be imported next."""
    import torch

    from curate.scoring.scorer import Scorer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (38 * GIB, 40 * GIB))
    c = cfg("engine.backend=vllm", "cmab.enabled=true", f"engine.model={model_7b}")
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        Scorer(c)


def test_the_toy_model_is_refused_on_gpus():
    with pytest.raises(ConfigError, match="engine.model.*'toy' is an offline CPU toy model"):
        cfg("ray.num_gpus=1")
    with pytest.raises(ConfigError, match="engine.model.*'toy'"):
        load_config("configs/curate/single_gpu.yaml", ["data.path=x"])


def test_cluster_recipes_need_a_local_model(model_7b):
    with pytest.raises(ConfigError, match=r"engine.model.*not a local model directory.*hf download "
                                          r"Qwen/Qwen2.5-VL-7B-Instruct --local-dir /shared/models/"):
        load_config("configs/curate/orsta_qwen25vl7b.yaml", ["data.path=x", "engine.model=Qwen/Qwen2.5-VL-7B-Instruct"])
    with pytest.raises(ConfigError, match="engine.model.*not a local model directory"):
        load_config("configs/curate/orsta_qwen25vl7b.yaml", ["data.path=x", "engine.model=/no/such/dir"])
    loaded = load_config("configs/curate/orsta_qwen25vl7b.yaml", ["data.path=x", f"engine.model={model_7b}"])
    assert loaded.engine.local_files_only and loaded.engine.model == model_7b


@pytest.mark.parametrize("override, key", [("ray.num_cpus=-1", "ray.num_cpus"), ("ray.num_gpus=1.5", "ray.num_gpus"),
                                           ("engine.max_pixels=-5", "engine.max_pixels"),
                                           ("ray.max_restarts=-2", "ray.max_restarts"),
                                           ("engine.vllm.tensor_parallel_size=0", "engine.vllm.tensor_parallel_size")])
def test_resource_keys_are_checked(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        cfg(override, "engine.model=org/m")


def test_a_missing_local_model_fails_at_load_not_in_the_actors():
    with pytest.raises(ConfigError, match="config key 'engine.model': '/no/such/model' does not exist"):
        cfg("engine.model=/no/such/model")
    assert cfg("engine.model=Qwen/Qwen2.5-VL-7B-Instruct").engine.model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_restarts_are_bounded_by_default():
    assert cfg().ray.max_restarts >= 0


def test_vllm_actors_keep_the_engine_in_their_process(monkeypatch):
    """A child engine process would outlive a killed actor and hold its GPU memory."""
    import curate.scoring.scorer
    from curate.pipeline import ScoringActor

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setattr(curate.scoring.scorer, "Scorer", lambda c: None)
    ScoringActor(cfg("engine.backend=vllm", "engine.model=org/m"))
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
