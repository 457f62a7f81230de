"""How ``engine.*`` config keys become ``vllm.LLM`` arguments (no vLLM needed: runs in .venv)."""

from __future__ import annotations

from curate.config import EngineConfig, load_structured
from curate.engines.vllm_engine import CPU_KV_CACHE_BYTES, llm_kwargs


def engine_cfg(*overrides: str) -> EngineConfig:
    """An engine config as the CLI builds it from ``engine.*`` overrides."""
    return load_structured(
        EngineConfig, None, ["backend=vllm", *(o.replace("engine.", "", 1) for o in overrides)]
    )


def test_cluster_settings_pass_through():
    cfg = engine_cfg(
        "engine.dtype=bfloat16",
        "engine.max_model_len=8192",
        "engine.vllm.tensor_parallel_size=4",
        "engine.vllm.gpu_memory_utilization=0.6",
        "engine.vllm.max_num_seqs=512",
        "engine.vllm.enforce_eager=true",
        "engine.vllm.enable_prefix_caching=false",
    )
    kwargs = llm_kwargs(cfg, "/models/qwen", on_cpu=False)
    assert kwargs == {
        "model": "/models/qwen",
        "dtype": "bfloat16",
        "max_model_len": 8192,
        "tensor_parallel_size": 4,
        "gpu_memory_utilization": 0.6,
        "enable_prefix_caching": False,
        "max_num_seqs": 512,
        "enforce_eager": True,
        "limit_mm_per_prompt": {"video": 0},
    }


def test_pixel_budget_goes_to_the_multimodal_processor():
    kwargs = llm_kwargs(engine_cfg("engine.max_pixels=1254400", "engine.min_pixels=3136"), "m", on_cpu=False)
    assert kwargs["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 1254400}
    assert "mm_processor_kwargs" not in llm_kwargs(engine_cfg(), "m", on_cpu=False)


def test_a_single_pixel_bound_is_sent_with_the_checkpoints_other_one(tmp_path):
    """vLLM hands these to the processor at call time, where transformers ignores a bound alone."""
    (tmp_path / "preprocessor_config.json").write_text('{"min_pixels": 3136, "max_pixels": 12845056}')
    kwargs = llm_kwargs(engine_cfg("engine.max_pixels=1254400"), str(tmp_path), on_cpu=False)
    assert kwargs["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 1254400}


def test_extra_keys_win_over_derived_ones():
    cfg = engine_cfg("engine.vllm.extra.limit_mm_per_prompt={image: 2, video: 1}", "engine.vllm.extra.seed=3")
    kwargs = llm_kwargs(cfg, "m", on_cpu=False)
    assert kwargs["limit_mm_per_prompt"] == {"image": 2, "video": 1} and kwargs["seed"] == 3


def test_cpu_bounds_the_kv_cache_and_prefills_whole_prompts(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cpu = llm_kwargs(engine_cfg(), "m", on_cpu=True)
    assert cpu["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES and cpu["enable_chunked_prefill"] is False
    assert "kv_cache_memory_bytes" not in llm_kwargs(engine_cfg(), "m", on_cpu=False)
    cfg = engine_cfg(f"engine.vllm.extra.kv_cache_memory_bytes={4 << 30}")
    assert llm_kwargs(cfg, "m", on_cpu=True)["kv_cache_memory_bytes"] == 4 << 30
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM's own variable: vLLM applies it
    assert "kv_cache_memory_bytes" not in llm_kwargs(engine_cfg(), "m", on_cpu=True)
