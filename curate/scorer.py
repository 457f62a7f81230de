"""Annotate canonical tables with difficulty columns: the one scoring path for the local CLI and Ray.

``Scorer.score_table`` takes a batch of canonical rows (``curate.schema``) and returns the same rows,
in the same order, with the PISM and/or CMAB columns added and ``status``/``error`` updated. Rows that
arrive with ``status=error`` pass through untouched (null scores); a row that fails here (an image
that does not decode, a task no grader knows, an engine error, a prompt over the engine's limit) gets
``status=error`` and a message naming the stage. Nothing is dropped, nothing is duplicated.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import pyarrow as pa

from curate import schema
from curate.config import CurateConfig
from curate.engines import GenerationEngine, SamplingParams, create_engine
from curate.grading import GradingOptions, check_ground_truth, describe_grader, warm_up
from curate.grading.boxes import box_format_for_model
from curate.images import ImageOptions, decode_image
from curate.pism import PismResult, PismScorer, Sample

log = logging.getLogger(__name__)

PROBE_BATCH = 8  # responses per teacher-forced probe forward


def sampling_params(cfg: CurateConfig) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, stop=tuple(s.stop))


def grading_options(cfg: CurateConfig) -> GradingOptions:
    """The run's grading options; an ``auto`` answer box format follows the model family (Qwen2.5-VL
    writes pixels, Qwen2-VL and InternVL 0-1000)."""
    if cfg.grading.answer_box_format != "auto":
        return cfg.grading
    fmt = box_format_for_model(cfg.engine.model)
    if fmt != "auto":
        log.info("grading: %s writes boxes as %s (grading.answer_box_format=auto)", cfg.engine.model, fmt)
    return dataclasses.replace(cfg.grading, answer_box_format=fmt)


def output_schema(cfg: CurateConfig) -> list[pa.Field]:
    """The score columns a run with ``cfg`` adds, in order."""
    fields: list[pa.Field] = list(schema.GRADING_SCHEMA)
    if cfg.pism.enabled:
        fields += list(schema.PISM_SCHEMA)
    if cfg.cmab.enabled:
        fields += list(schema.CMAB_SCHEMA)
    return fields


class Scorer:
    """Holds the engine (loaded once) and scores table batches with it."""

    def __init__(self, cfg: CurateConfig, engine: GenerationEngine | None = None):
        self.cfg = cfg
        if engine is None and cfg.cmab.enabled and cfg.engine.backend == "vllm":
            _check_probe_fits(cfg)
        self.engine = engine if engine is not None else create_engine(cfg.engine)
        warm_up()  # sympy's imports now, not inside the first grade's time limit
        self.pism = (PismScorer(self.engine, cfg.pism, sampling_params(cfg), cfg.prompt, grading_options(cfg))
                     if cfg.pism.enabled else None)
        self.cmab = None
        if cfg.cmab.enabled:
            from curate.cmab import CmabScorer
            from curate.engines.transformers_engine import TransformersEngine

            # The probe runs in transformers; reuse the generation model when it already is one.
            probe = self.engine if isinstance(self.engine, TransformersEngine) else TransformersEngine.from_config(
                dataclasses.replace(cfg.engine, backend="transformers"))
            self.cmab = CmabScorer(self.engine, probe, cfg.cmab, sampling_params(cfg), cfg.prompt,
                                   probe_batch=PROBE_BATCH, grading=grading_options(cfg))

    def close(self) -> None:
        if self.cmab is not None and self.cmab.probe_engine is not self.engine:
            self.cmab.probe_engine.close()
        self.engine.close()

    def score_table(self, table: pa.Table, progress: Callable[[int], None] | None = None) -> pa.Table:
        rows = table.select([schema.ID, schema.TASK, schema.QUESTION, schema.IMAGES, schema.GROUND_TRUTH,
                             schema.VERIFIER, schema.STATUS, schema.ERROR]).to_pylist()
        errors: list[str | None] = [r[schema.ERROR] if r[schema.STATUS] != schema.STATUS_OK else None for r in rows]
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
        columns: dict[str, list[Any]] = {f.name: [None] * len(rows) for f in output_schema(self.cfg)}
        for i, s in samples:
            columns["grader"][i] = describe_grader(s.task, s.ground_truth, s.verifier)
        if self.pism is not None and samples:
            results = self.pism.score([s for _, s in samples], progress=progress)
            for (i, _), result in zip(samples, results):
                if isinstance(result, PismResult):
                    _put_pism(columns, i, result)
                else:
                    errors[i] = f"pism: {result}"
        if self.cmab is not None and samples:
            from curate.cmab import CmabResult

            for (i, _), result in zip(samples, self.cmab.score([s for _, s in samples])):
                if isinstance(result, CmabResult):
                    _put_cmab(columns, i, result)
                else:
                    errors[i] = "; ".join(filter(None, [errors[i], f"cmab: {result}"]))
        out = table
        for f in output_schema(self.cfg):
            values = [v if errors[i] is None else None for i, v in enumerate(columns[f.name])]
            out = _set(out, f, pa.array(values, type=f.type))
        status = [schema.STATUS_OK if e is None else schema.STATUS_ERROR for e in errors]
        out = _set(out, pa.field(schema.STATUS, pa.string()), pa.array(status, pa.string()))
        return _set(out, pa.field(schema.ERROR, pa.string()), pa.array(errors, pa.string()))


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
        log.warning("cannot size the CMAB probe's GPU memory for %s (%s); not checked", path, err)
        return
    _, total = torch.cuda.mem_get_info()
    check_probe_memory(cfg, total, need)


def row_sample(row: dict[str, Any], image_options: ImageOptions) -> Sample:
    """The scoring sample of a canonical row; ``ValueError`` names what makes the row unusable."""
    images = row[schema.IMAGES] or []
    decoded = []
    for j, data in enumerate(images):
        try:
            decoded.append(decode_image(data, image_options))
        except ValueError as err:
            raise ValueError(f"image {j}: {err}") from None
    if not decoded:
        raise ValueError("the sample has no image")
    if not (row[schema.QUESTION] or "").strip():
        raise ValueError("empty question")
    if row[schema.GROUND_TRUTH] is None:
        raise ValueError("no ground truth")
    problem = check_ground_truth(row[schema.TASK] or "", row[schema.GROUND_TRUTH], row[schema.VERIFIER])
    if problem:
        raise ValueError(f"ground truth unusable by the {row[schema.TASK]!r} grader: {problem}")
    return Sample(
        id=row[schema.ID],
        images=decoded,
        question=row[schema.QUESTION],
        task=row[schema.TASK],
        ground_truth=row[schema.GROUND_TRUTH],
        verifier=row[schema.VERIFIER],
    )


def _put_pism(columns: dict[str, list[Any]], i: int, r: PismResult) -> None:
    columns["pism_pc"][i] = r.pc
    columns["pism_attempts"][i] = r.attempts
    columns["pism_correct"][i] = r.correct
    columns["pism_generations"][i] = r.generations
    columns["pism_tokens"][i] = r.tokens
    columns["pism_lambda_star"][i] = r.lambda_star
    columns["pism_bucket"][i] = r.bucket
    columns["pism_answers"][i] = r.answers


def _put_cmab(columns: dict[str, list[Any]], i: int, r: Any) -> None:
    columns["cmab_rho"][i] = r.rho
    columns["cmab_bucket"][i] = r.bucket
    columns["cmab_variant"][i] = r.variant
    columns["cmab_layers"][i] = r.layers
    columns["cmab_correct"][i] = r.correct
    columns["cmab_generations"][i] = r.generations


def _set(table: pa.Table, field: pa.Field, values: pa.Array) -> pa.Table:
    """Replace the column ``field.name`` if present, else append it."""
    at = table.schema.get_field_index(field.name)
    return table.set_column(at, field, values) if at >= 0 else table.append_column(field, values)
