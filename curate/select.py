"""Select training subsets from a difficulty-annotated dataset and export them for the trainers.

    python -m curate select --config configs/select/mid_hard_pism.yaml input=RUN output=OUT [key=value ...]

A recipe names one or more subsets (``configs/select/*.yaml``; keys in ``curate.selection.config``):
the paper's proposal (medium + hard by PISM, by CMAB, or by either/both), its controls (a seeded
random subset of the same size, optionally with the same task mix or disjoint from the rule's rows;
the full set; the unsolved rows), a pass-rate pre-filter over the scorers' rollouts (drop the rows
always or never answered correctly, DAPO's filter done offline), per-task balancing, QuaDMix-style
resampling, and a seeded train/val split stratified by task. Error rows are never exported (they are
counted in the manifest).

``OUT`` gets ``manifest.json`` (input, run fingerprint, seed, resolved config, counts per task and
bucket before and after each subset, files) and one folder per subset::

    <subset>/canonical/<split>.parquet   the chosen rows, canonical annotated schema (for eval, re-use)
    <subset>/verl/<split>.parquet        verl RL parquet; extra_info carries the buckets, λ*, ρ̄
    <subset>/verl_sft/<split>.parquet    verl SFT parquet (messages + images)
    <subset>/swift_grpo/<split>.jsonl    ms-swift GRPO JSONL (+ images/)
    <subset>/sft_jsonl/<split>.jsonl     ms-swift / LLaMA-Factory SFT JSONL (+ images/)

The same dataset, config and seed give the same rows (shard order and names do not matter). The
output appears complete or not at all (written beside it, then renamed). ``--dry-run`` prints the
counts and writes nothing.

``input`` and ``output`` may be URIs (``s3://bucket/run``, ``s3://bucket/sel``; ``curate.storage``). An
object store has no rename: the selection is written in a local temporary directory, then copied,
``manifest.json`` last, so a selection without its manifest is an incomplete one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.config import ConfigError, load_structured
from curate.selection.config import SelectConfig, SubsetConfig
from curate.storage import Location

__all__ = ["add_arguments", "main", "plan", "select"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def _describe(sub: SubsetConfig) -> str:
    if sub.kind == "full":
        what = "every usable row"
    elif sub.kind == "quadmix":
        what = f"QuaDMix copies by {sub.quadmix.score}"
    elif sub.kind == "rap":
        what = sub.rap.describe()
    elif sub.kind == "random":
        size = f"{sub.random.size} rows" if sub.random.size is not None else "same size"
        mix = ", same task mix" if sub.random.stratify_by_task else ""
        pool = ", outside the rule" if sub.random.pool == "outside_rule" else ""
        what = f"random ({size}{mix}{pool}) vs {sub.rule.describe()}"
    else:
        what = sub.rule.describe()
    if sub.tasks is not None:
        what += f"; tasks {sub.tasks}"
    if sub.balance.mode != "none":
        what += f"; balance {sub.balance.mode}"
    if sub.disjoint_from:
        what += f"; disjoint from {sub.disjoint_from}"
    return what


def plan(cfg: SelectConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(dataset, scores, selections by subset name): every decision, nothing written."""
    from curate.selection.export import AnnotatedDataset
    from curate.selection.rules import ScoreTable, select_subset

    dataset = AnnotatedDataset(cfg.input)
    _refuse_buckets_of_one_level(cfg, dataset.run_metadata())
    scores = ScoreTable.from_table(dataset.read_scores())
    if cfg.exclude_ids is not None:
        wanted = excluded_ids(cfg.exclude_ids)
        copies = same_content_ids(cfg, dataset, wanted) if cfg.exclude_duplicates else set()
        found = scores.exclude(wanted | copies)
        scores.excluded_copies = len(copies)
        log.info("exclude_ids: %d of %d listed ids are rows of the dataset, %d more rows repeat their "
                 "content; no subset takes them", found - len(copies), len(wanted), len(copies))
    selections: dict[str, Any] = {}
    for name, sub in cfg.subsets.items():
        selections[name] = select_subset(
            scores, name, sub, cfg.seed, {k: s.rows for k, s in selections.items()}
        )
    return dataset, scores, selections


def _refuse_buckets_of_one_level(cfg: SelectConfig, metadata: dict[str, Any]) -> None:
    """A run that scored PISM at one masking level (configs/curate/prerollout.yaml) has pism_bucket
    columns that say only solved or not: no difficulty to select by."""
    ratios = ((metadata.get("config") or {}).get("pism") or {}).get("ratios")
    if ratios is None or len(ratios) > 1:
        return
    for name, sub in cfg.subsets.items():
        if sub.kind in ("rule", "random") and "pism" in sub.rule.scores():
            raise ConfigError(
                f"config key 'subsets.{name}.rule.by': the run scored PISM at one masking level "
                f"(pism.ratios={list(ratios)}, a pre-rollout run): its pism_bucket is no difficulty. Select "
                "from it with the pass-rate pre-filter alone (rule.by=none; configs/select/prefilter.yaml)"
            )


def excluded_ids(where: str) -> set[str]:
    """The ids listed by ``exclude_ids``: a Parquet file's ``id`` column, else one id per line."""
    import pyarrow.parquet as pq

    location = Location.parse(where, key="exclude_ids")
    if not location.is_file():
        raise ConfigError(f"config key 'exclude_ids': {where} is not a file")
    if location.name.endswith(".parquet"):
        with location.open_input() as handle:
            table = pq.read_table(handle, columns=[S.ID])
        return {str(i) for i in table.column(S.ID).to_pylist()}
    return {line.strip() for line in location.read_text().splitlines() if line.strip()}


def same_content_ids(cfg: SelectConfig, dataset: Any, wanted: set[str]) -> set[str]:
    """Rows not listed in ``wanted`` that show the model what a listed row does (same question, same
    image bytes): the listed rows of the dataset, and the rows of ``exclude_ids`` itself when it is a
    Parquet file with question and images (a held-out set from elsewhere)."""
    import pyarrow.parquet as pq

    keys = dataset.content_keys(cfg.batch_rows)
    listed = {keys[i] for i in wanted if i in keys}
    location = Location.parse(cfg.exclude_ids, key="exclude_ids")
    if location.name.endswith(".parquet"):
        with location.open_input() as handle:
            names = pq.read_schema(handle).names
        if S.QUESTION in names:
            with location.open_input() as handle:
                listed |= set(S.content_keys(pq.read_table(handle, columns=[c for c in (S.QUESTION, S.IMAGES)
                                                                                 if c in names])))
    return {i for i, key in keys.items() if key in listed and i not in wanted}


def _error_reasons(scores: Any) -> dict[str, int]:
    """Error rows per stage (the message prefix before the first colon: read, pism, cmab, ...)."""
    messages = scores.errors[~scores.usable].tolist()
    return dict(sorted(Counter((m or "error").split(":", 1)[0] for m in messages).items()))


def _subset_record(cfg: SubsetConfig, sel: Any, scores: Any) -> dict[str, Any]:
    rows = sel.rows
    record: dict[str, Any] = {
        "kind": cfg.kind,
        "what": _describe(cfg),
        "pool_rows": len(sel.pool),
        "excluded_by_disjointness": sel.excluded_by_disjointness,
        "rows": len(rows),
        "train_rows": sel.train_rows_written,
        "val_rows": len(sel.val),
        "pool_tasks": scores.counts(sel.pool),
        "tasks": scores.counts(rows),
    }
    if sel.reference is not None:
        record["reference_rows"] = len(sel.reference)
        record["reference_tasks"] = scores.counts(sel.reference)
    if sel.train_copies is not None:
        record["distinct_train_rows"] = len(sel.train)
    if sel.pass_rate is not None:
        record["pass_rate"] = sel.pass_rate
    if sel.rap is not None:
        record["rap"] = sel.rap
    for column in ("pism_bucket", "cmab_bucket"):
        if column in scores.columns:
            record[column] = scores.counts(rows, by=column)
    return record


def _manifest(
    cfg: SelectConfig,
    dataset: Any,
    scores: Any,
    selections: dict[str, Any],
    prompt_source: str,
    prompt: Any,
    annotations: list[str],
) -> dict[str, Any]:
    from omegaconf import OmegaConf

    run = dataset.run_metadata()
    run_summary = {k: run.get(k) for k in ("fingerprint", "model", "engine", "finished_at") if k in run}
    if dataset.cmab_calibration is not None:  # the thresholds cmab_bucket was recomputed with
        run_summary["cmab_calibration"] = dataset.cmab_calibration
    usable = scores.usable.nonzero()[0]
    before: dict[str, Any] = {"tasks": scores.counts(usable)}
    for column in ("pism_bucket", "cmab_bucket"):
        if column in scores.columns:
            before[column] = scores.counts(usable, by=column)
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "input": {
            "path": str(dataset.path),
            "rows": len(scores),
            "usable_rows": int(scores.usable.sum()),
            "error_rows": int((~scores.usable).sum()),
            "error_rows_by_stage": _error_reasons(scores),
            "excluded_rows": int(scores.excluded.sum()) if scores.excluded is not None else 0,
            "excluded_copies": scores.excluded_copies,
            "exclude_ids": cfg.exclude_ids,
            "run": run_summary or None,
        },
        "seed": cfg.seed,
        "prompt": {"source": prompt_source, **dataclasses.asdict(prompt)},
        "annotations_in_extra_info": annotations,
        "before": before,
        "subsets": {name: _subset_record(cfg.subsets[name], sel, scores) for name, sel in selections.items()},
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
    }


def _write_canonical(
    dataset: Any, scores: Any, selections: dict[str, Any], staging: Path, batch_rows: int
) -> dict[tuple[str, str], Path]:
    """One pass over the shards: each chosen row into its subset's canonical split file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from curate.selection.rules import union

    targets = {(name, split): getattr(sel, split) for name, sel in selections.items() for split in SPLITS}
    targets = {k: rows for k, rows in targets.items() if len(rows)}
    value_sets = {k: pa.array(scores.ids[rows].tolist(), type=pa.string()) for k, rows in targets.items()}
    paths = {k: staging / k[0] / "canonical" / f"{k[1]}.parquet" for k in targets}
    writers: dict[tuple[str, str], pq.ParquetWriter] = {}
    try:
        for table in dataset.iter_rows(scores.ids[union(selections.values())].tolist(), batch_rows):
            for key, values in value_sets.items():
                part = table.filter(pc.is_in(table.column(S.ID), value_set=values))
                if part.num_rows:
                    if key not in writers:
                        paths[key].parent.mkdir(parents=True, exist_ok=True)
                        writers[key] = pq.ParquetWriter(paths[key], dataset.schema)
                    writers[key].write_table(part)
    finally:
        for writer in writers.values():
            writer.close()
    written = {k: pq.ParquetFile(p).metadata.num_rows for k, p in paths.items() if p.exists()}
    wrong = {
        k: (written.get(k, 0), len(rows)) for k, rows in targets.items() if written.get(k, 0) != len(rows)
    }
    if wrong:
        raise RuntimeError(f"rows written vs chosen differ (the input changed while reading?): {wrong}")
    return paths


def _prompt(cfg: SelectConfig, dataset: Any) -> tuple[Any, str]:
    """(prompt written into the exports, where it came from)."""
    from curate.selection.export import prompt_of_run

    if cfg.prompt_source == "run":
        recorded = prompt_of_run(dataset.run_metadata())
        return (recorded, "run") if recorded is not None else (cfg.prompt, "config (no run record)")
    return cfg.prompt, "config"


def select(cfg: SelectConfig) -> dict[str, Any]:
    """Choose every subset of ``cfg``, write them and the manifest; returns the manifest."""
    import pyarrow.parquet as pq

    from curate.selection.export import FORMAT_FILES, repeat_rows, write_format

    where = Location.parse(cfg.output, key="output", output=True)
    if where.exists() and not cfg.overwrite:
        raise ConfigError(f"config key 'output': {where} exists; choose another path or set overwrite=true")
    dataset, scores, selections = plan(cfg)
    prompt, prompt_source = _prompt(cfg, dataset)
    annotations = [c for c in cfg.annotations if c in dataset.schema.names]
    manifest = _manifest(cfg, dataset, scores, selections, prompt_source, prompt, annotations)

    if where.is_local:
        out = where.local
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    else:
        staging = Path(tempfile.mkdtemp(prefix="hardmode-select-"))
    try:
        canonical = _write_canonical(dataset, scores, selections, staging, cfg.batch_rows)
        for name, sel in selections.items():
            files: dict[str, dict[str, str]] = {"canonical": {}}
            copies = (
                dict(zip(scores.ids[sel.train].tolist(), sel.train_copies.tolist()))
                if sel.train_copies is not None
                else {}
            )
            for split in SPLITS:
                if (name, split) not in canonical:
                    continue
                files["canonical"][split] = str(canonical[(name, split)].relative_to(staging))
                for fmt in cfg.subsets[name].formats:
                    path = staging / name / fmt / f"{split}.{FORMAT_FILES[fmt]}"
                    batches = pq.ParquetFile(canonical[(name, split)]).iter_batches(batch_size=cfg.batch_rows)
                    tables = map(_as_table, batches)
                    if split == "train" and copies:
                        tables = repeat_rows(tables, copies)
                    summary = write_format(
                        fmt, tables, path, split=split, annotations=annotations, prompt=prompt
                    )
                    expected = sel.train_rows_written if split == "train" else len(sel.val)
                    if summary.rows != expected:
                        raise RuntimeError(f"{path}: wrote {summary.rows} rows, expected {expected}")
                    files.setdefault(fmt, {})[split] = str(path.relative_to(staging))
            manifest["subsets"][name]["files"] = files
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        if where.is_local:
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        else:
            _publish(staging, where)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not where.is_local:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", where)
    return manifest


def _publish(staging: Path, where: Location) -> None:
    """Copy a finished selection to a remote ``where``, replacing what is there; ``manifest.json`` goes
    last, so that its presence means the selection is complete."""
    where.delete_dir()
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != "manifest.json"):
        (where / path.relative_to(staging).as_posix()).upload(path)
    (where / "manifest.json").upload(staging / "manifest.json")


def _as_table(batch: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def summary_table(manifest: dict[str, Any]) -> str:
    """A short text summary: subsets, then rows per task before and in each subset."""
    inp = manifest["input"]
    lines = [
        f"input: {inp['path']}: {inp['rows']} rows, {inp['usable_rows']} usable, "
        f"{inp['error_rows']} errors (never exported) {inp['error_rows_by_stage'] or ''}".rstrip()
    ]
    subsets = manifest["subsets"]
    width = max([6, *map(len, subsets)])
    lines.append(f"{'subset':<{width}}  {'kind':<7} {'rows':>6} {'train':>6} {'val':>5}  selection")
    for name, rec in subsets.items():
        lines.append(
            f"{name:<{width}}  {rec['kind']:<7} {rec['rows']:>6} {rec['train_rows']:>6} "
            f"{rec['val_rows']:>5}  {rec['what']}"
        )
    for name, rec in subsets.items():
        pr = rec.get("pass_rate")
        if pr:
            dropped = ", ".join(f"{c.replace('_', '-')} {n}" for c, n in pr["dropped"].items())
            unknown_kept = pr["classes"]["unknown"] - pr["dropped"]["unknown"]
            lines.append(
                f"{name} pass-rate pre-filter ({' + '.join(pr['sources'])} rollouts): of {pr['rows_in']} "
                f"rows dropped {dropped}; kept {pr['rows_out']} ({unknown_kept} of unknown pass rate)"
            )
    for name, rec in subsets.items():
        rap = rec.get("rap")
        if rap:
            steps = [f"CDE kept {rap['cde_rows']} of {rap['scored_rows']}",
                     f"ACE dropped {rap['ace_dropped']}"]
            if "trivial_removed" in rap:
                steps.append(f"DRM removed {rap['trivial_removed']} trivial, refilled {rap['refilled']}")
            if "drm_added" in rap:
                steps.append(f"DRM added {rap['drm_new']} new of {rap['drm_added']} drawn")
            lines.append(f"{name} RAP {rap['rule']} ({rap['variant']}): " + ", ".join(steps)
                         + f"; {rap['rows_out']} rows")
    calibration = (inp.get("run") or {}).get("cmab_calibration")
    if calibration:
        cuts = ", ".join(f"{k} {v:.4g}" for k, v in calibration["thresholds"].items())
        how = (f"calibrated on the run's {calibration['values']} ρ̄ values, quantiles {calibration['levels']}"
               if calibration["mode"] == "calibrated" else f"fixed ({calibration.get('warning')})")
        lines.append(f"cmab_bucket thresholds: {how}: {cuts}")
    tasks = sorted(manifest["before"]["tasks"])
    tw = max([4, *map(len, tasks)])
    lines.append(f"{'task':<{tw}}  {'usable':>6}  " + "  ".join(f"{n:>{max(6, len(n))}}" for n in subsets))
    for task in tasks:
        row = "  ".join(f"{rec['tasks'].get(task, 0):>{max(6, len(n))}}" for n, rec in subsets.items())
        lines.append(f"{task:<{tw}}  {manifest['before']['tasks'][task]:>6}  {row}")
    for column in ("pism_bucket", "cmab_bucket"):
        for name, rec in subsets.items():
            if column in rec:
                per_bucket: Counter = Counter()
                for counts in rec[column].values():
                    per_bucket.update(counts)
                lines.append(
                    f"{name} by {column}: " + ", ".join(f"{b} {n}" for b, n in sorted(per_bucket.items()))
                )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="a selection recipe (configs/select/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be selected; write nothing")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. input=runs/x output=data/x seed=1 subsets.grpo.rule.by=cmab",
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_structured(SelectConfig, args.config, args.overrides)
        if args.dry_run:
            dataset, scores, selections = plan(cfg)
            prompt, source = _prompt(cfg, dataset)
            manifest = _manifest(cfg, dataset, scores, selections, source, prompt, [])
        else:
            manifest = select(cfg)
    except ConfigError as err:
        print(f"python -m curate select: {err}", file=sys.stderr)
        return 2
    print(summary_table(manifest))
    if not args.dry_run:
        print(f"wrote {Location.parse(cfg.output)} (manifest.json)")
    return 0
