"""Annotate canonical tables with difficulty columns: the one scoring path for the local CLI and Ray.

``Scorer.score_table`` takes a batch of canonical rows (``curate.schema``) and returns the same rows,
in the same order, with the enabled methods' columns added (``curate.scoring.registry``, in registry
order) and ``status``/``error`` updated. Rows that arrive with ``status=error`` pass through untouched
(null scores); a row that fails here (an image that does not decode, a task no grader knows, an engine
error, a prompt over the engine's limit) gets ``status=error`` and a message naming the stage. Nothing
is dropped, nothing is duplicated.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pyarrow as pa

from curate import schema
from curate.config import CurateConfig
from curate.engines import GenerationEngine
from curate.grading import describe_grader, warm_up
from curate.scoring import registry
from curate.scoring.sample import Sample, row_sample
from curate.scoring.stage import PROBE_BATCH, BatchContext, Resources

log = logging.getLogger(__name__)


class Scorer:
    """Holds the engines (loaded once) and the enabled stages, and scores table batches with them."""

    def __init__(self, cfg: CurateConfig, engine: GenerationEngine | None = None):
        self.cfg = cfg
        if engine is None and cfg.engine.backend == "vllm" and _probes(cfg):
            _check_probe_fits(cfg)
        self.resources = Resources(cfg, engine)
        warm_up()  # sympy's imports now, not inside the first grade's time limit
        self.stages = [(spec, spec.build(self.resources)) for spec in registry.enabled(cfg)]

    @property
    def engine(self) -> GenerationEngine:
        return self.resources.engine

    def close(self) -> None:
        self.resources.close()

    def score_table(self, table: pa.Table, progress: Callable[[int], None] | None = None) -> pa.Table:
        rows = table.select(
            [
                schema.ID,
                schema.TASK,
                schema.QUESTION,
                schema.IMAGES,
                schema.GROUND_TRUTH,
                schema.VERIFIER,
                schema.STATUS,
                schema.ERROR,
            ]
        ).to_pylist()
        errors: list[str | None] = [
            r[schema.ERROR] if r[schema.STATUS] != schema.STATUS_OK else None for r in rows
        ]
        samples: list[tuple[int, Sample]] = []
        for i, row in enumerate(rows):
            if row[schema.STATUS] != schema.STATUS_OK:
                continue
            try:
                samples.append((i, row_sample(row, self.cfg.data.images)))
            except Exception as err:
                errors[i] = f"score: {err}"
        if progress and len(rows) > len(samples):
            progress(len(rows) - len(samples))
        fields = registry.output_schema(self.cfg)
        columns: dict[str, list[Any]] = {f.name: [None] * len(rows) for f in fields}
        for i, s in samples:
            columns["grader"][i] = describe_grader(s.task, s.ground_truth, s.verifier)
        context = BatchContext()
        reported = False
        if samples:
            for spec, stage in self.stages:
                report = progress if stage.reports_progress and not reported else None
                reported |= report is not None
                for (i, _), result in zip(samples, stage.columns([s for _, s in samples], context, report)):
                    if isinstance(result, str):
                        errors[i] = "; ".join(filter(None, [errors[i], f"{spec.name}: {result}"]))
                    else:
                        for name, value in result.items():
                            columns[name][i] = value
        if progress and samples and not reported:
            progress(len(samples))
        out = table
        for f in fields:
            values = [v if errors[i] is None else None for i, v in enumerate(columns[f.name])]
            out = _set(out, f, pa.array(values, type=f.type))
        status = [schema.STATUS_OK if e is None else schema.STATUS_ERROR for e in errors]
        out = _set(out, pa.field(schema.STATUS, pa.string()), pa.array(status, pa.string()))
        return _set(out, pa.field(schema.ERROR, pa.string()), pa.array(errors, pa.string()))


def _probes(cfg: CurateConfig) -> bool:
    """Whether a stage of this run loads the transformers probe model beside the engine."""
    return cfg.cmab.enabled or (cfg.rap.enabled and cfg.rap.ace.enabled)


def _check_probe_fits(cfg: CurateConfig) -> None:
    """Before vLLM takes its share of the GPU: refuse a share that leaves the probe too little."""
    import torch

    from curate.modeling import resolve_model_path
    from curate.placement import check_probe_memory, probe_memory_bytes

    if not torch.cuda.is_available() or cfg.engine.device == "cpu":
        return
    path = resolve_model_path(cfg.engine.model)
    try:
        need = probe_memory_bytes(cfg, path, PROBE_BATCH)
    except (OSError, KeyError, ValueError) as err:  # a hub id, or a config without the sizes
        log.warning("cannot size the attention probe's GPU memory for %s (%s); not checked", path, err)
        return
    _, total = torch.cuda.mem_get_info()
    check_probe_memory(cfg, total, need)


def _set(table: pa.Table, field: pa.Field, values: pa.Array) -> pa.Table:
    """Replace the column ``field.name`` if present, else append it."""
    at = table.schema.get_field_index(field.name)
    return table.set_column(at, field, values) if at >= 0 else table.append_column(field, values)
