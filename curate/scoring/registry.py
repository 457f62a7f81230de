"""The scoring methods a curation run can apply, in the order they run.

Adding a method is a module with a stage (``curate.scoring.stage.ScoreStage``), a config section on
``CurateConfig`` with an ``enabled`` flag, its columns in ``curate.schema`` and one entry here: the
scorer, the pipeline's progress counts, ``run.json``'s summary, ``curate report`` and the output schema
all read this table. It imports no model code (stages are imported by name when a run enables them),
so report and select use it without torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pyarrow as pa

from curate import schema

if TYPE_CHECKING:
    from curate.config import CurateConfig
    from curate.scoring.stage import Resources, ScoreStage


@dataclass(frozen=True)
class ScorerSpec:
    name: str  # its config section (``cfg.<name>``) and error prefix
    schema: pa.Schema  # the columns it adds, in order
    stage: str  # "module:Class" with a ``from_resources(resources)`` constructor
    generations: Optional[str] = None  # its column of generations made per row
    tokens: Optional[str] = None  # its column of generated tokens per row
    bucket: Optional[str] = None  # its difficulty bucket column, if it has one

    def enabled(self, cfg: "CurateConfig") -> bool:
        return bool(getattr(cfg, self.name).enabled)

    def build(self, resources: "Resources") -> "ScoreStage":
        module, name = self.stage.split(":")
        return getattr(importlib.import_module(module), name).from_resources(resources)


# Order matters: a stage may reuse what an earlier one left in the batch context (RAP takes PISM's
# λ = 0 rollouts).
SCORERS: tuple[ScorerSpec, ...] = (
    ScorerSpec(
        "pism",
        schema.PISM_SCHEMA,
        "curate.scoring.pism:PismScorer",
        generations="pism_generations",
        tokens="pism_tokens",
        bucket="pism_bucket",
    ),
    ScorerSpec(
        "cmab",
        schema.CMAB_SCHEMA,
        "curate.scoring.cmab:CmabScorer",
        generations="cmab_generations",
        bucket="cmab_bucket",
    ),
    ScorerSpec(
        "rap",
        schema.RAP_SCHEMA,
        "curate.scoring.rap:RapScorer",
        generations="rap_generations",
        tokens="rap_tokens",
    ),
)


def enabled(cfg: "CurateConfig") -> list[ScorerSpec]:
    return [spec for spec in SCORERS if spec.enabled(cfg)]


def output_schema(cfg: "CurateConfig") -> list[pa.Field]:
    """The score columns a run with ``cfg`` adds, in order."""
    fields: list[pa.Field] = list(schema.GRADING_SCHEMA)
    for spec in enabled(cfg):
        fields += list(spec.schema)
    return fields


def generation_columns() -> list[str]:
    return [spec.generations for spec in SCORERS if spec.generations]


def token_columns() -> list[str]:
    return [spec.tokens for spec in SCORERS if spec.tokens]
