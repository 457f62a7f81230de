"""A scoring actor that kills its own process on one row: a real crash for the pipeline to survive."""

from __future__ import annotations

import os

import pyarrow as pa

from curate.pipeline import ScoringActor

POISON_ID = "toy-2-000005"


class PoisonedActor(ScoringActor):
    def __call__(self, batch: pa.Table) -> pa.Table:
        if POISON_ID in batch["id"].to_pylist():
            os._exit(1)
        return super().__call__(batch)
