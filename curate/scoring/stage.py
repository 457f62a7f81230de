"""The interface between ``Scorer`` and one difficulty method, and what the methods of a run share.

A scoring method (PISM, CMAB, RAP, ...) is a ``ScoreStage``: given a batch of samples, ``columns``
returns per sample its columns or an error message. Stages run in registry order (``curate.scoring.registry``)
on one ``Resources`` (the generation engine, the attention-probe model loaded once for every stage
that probes, the run's sampling and grading options) and one ``BatchContext`` per batch, through which
a later stage reuses an earlier one's work instead of paying for it again.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from curate.config import CurateConfig
from curate.engines import GenerationEngine, SamplingParams, create_engine
from curate.grading import GradingOptions
from curate.grading.boxes import box_format_for_model
from curate.scoring.sample import Sample

if TYPE_CHECKING:
    from curate.engines.transformers_engine import TransformersEngine

log = logging.getLogger(__name__)

PROBE_BATCH = 8  # responses per teacher-forced probe forward


@dataclass(frozen=True)
class Rollout:
    """One graded response to a sample's unmasked image(s)."""

    text: str
    num_tokens: int
    correct: bool
    token_ids: tuple[int, ...] | None = None  # the generated ids, when the engine returned them


@dataclass
class BatchContext:
    """What the stages of one batch leave for the stages after them."""

    # Sample id -> PISM's λ = 0 rollouts in attempt order k = 0, 1, ... (seeds ``pism.attempt_seed``):
    # plain rollouts on the unmasked image, which RAP's CDE counts instead of generating them again.
    unmasked_rollouts: dict[str, list[Rollout]] = field(default_factory=dict)


Columns = dict[str, Any]


class ScoreStage(Protocol):
    # True when ``columns`` calls ``progress`` as samples finish; else ``Scorer`` reports the batch at
    # its end.
    reports_progress: bool

    def columns(
        self, samples: Sequence[Sample], context: BatchContext, progress: Callable[[int], None] | None
    ) -> list[Columns | str]:
        """Per sample, its columns (names of this stage's schema) or an error message."""
        ...


def sampling_params(cfg: CurateConfig) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(
        temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, stop=tuple(s.stop)
    )


def grading_options(cfg: CurateConfig) -> GradingOptions:
    """The run's grading options; an ``auto`` answer box format follows the model family (Qwen2.5-VL
    writes pixels, Qwen2-VL and InternVL 0-1000)."""
    if cfg.grading.answer_box_format != "auto":
        return cfg.grading
    fmt = box_format_for_model(cfg.engine.model)
    if fmt != "auto":
        log.info("grading: %s writes boxes as %s (grading.answer_box_format=auto)", cfg.engine.model, fmt)
    return dataclasses.replace(cfg.grading, answer_box_format=fmt)


class Resources:
    """The engines and options every stage of a run shares.

    The probe model (transformers; vLLM exposes no attention) is the generation engine itself when
    that already is a transformers engine, else one copy loaded on first use and shared by CMAB and
    RAP's ACE.
    """

    def __init__(self, cfg: CurateConfig, engine: GenerationEngine | None = None):
        self.cfg = cfg
        self.engine = engine if engine is not None else create_engine(cfg.engine)
        self.sampling = sampling_params(cfg)
        self.grading = grading_options(cfg)
        self._probe: TransformersEngine | None = None

    @property
    def probe_engine(self) -> "TransformersEngine":
        from curate.engines.transformers_engine import TransformersEngine

        if self._probe is None:
            if isinstance(self.engine, TransformersEngine):
                self._probe = self.engine
            else:
                self._probe = TransformersEngine.from_config(
                    dataclasses.replace(self.cfg.engine, backend="transformers")
                )
        return self._probe

    def close(self) -> None:
        if self._probe is not None and self._probe is not self.engine:
            self._probe.close()
        self.engine.close()
