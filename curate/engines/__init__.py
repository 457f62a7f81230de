"""Generation engines behind one interface (``curate.engines.base``), chosen by ``engine.backend``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.engines.base import (
    Completion,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)

if TYPE_CHECKING:
    from curate.config import EngineConfig

__all__ = [
    "Completion",
    "GenerationEngine",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "create_engine",
]


def create_engine(cfg: "EngineConfig") -> GenerationEngine:
    """Build the configured backend; heavy imports (torch, vllm) happen only for the chosen one."""
    if cfg.backend == "transformers":
        from curate.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_config(cfg)
    if cfg.backend == "vllm":
        from curate.engines.vllm_engine import VllmEngine

        return VllmEngine.from_config(cfg)
    if cfg.backend == "openai":
        from curate.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(cfg)
    raise ValueError(f"config key 'engine.backend': unknown backend {cfg.backend!r}")
