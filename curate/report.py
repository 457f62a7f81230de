"""Plots and a summary of an annotated dataset: what researchers look at instead of reading numbers.

``python -m curate report RUN_DIR`` reads the annotated Parquet shards of a run (``RUN_DIR/annotated``,
score columns only, never the image bytes) and writes, under ``RUN_DIR/report/``:

- ``buckets_pism.png`` / ``buckets_cmab.png``: bucket counts per task type;
- ``lambda_star.png``: histogram of PISM's failure ratio λ* (and how many samples never fail);
- ``pc_curves.png``: mean Pc(λ) per bucket over fully evaluated levels, and the share of samples still
  answering correctly at each λ (known for every sample, in either PISM mode);
- ``rho.png``: histogram of CMAB's ρ̄ with the bucket thresholds the buckets use (the variant's fixed
  ones, or those calibrated on the run's ρ̄ and recorded in ``run.json``: ``curate.cmab_calibration``);
- ``report.md``: counts in/scored/errored (errors grouped by reason), buckets per task, PISM vs CMAB
  agreement (confusion table), generations and tokens used, and the figures above.

``RUN_DIR`` may be a URI (``s3://bucket/run``, see ``curate.storage``): the report is drawn in a local
temporary directory and copied there.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate import cmab_calibration, run_record, schema
from curate.storage import Location, is_uri, location

log = logging.getLogger(__name__)

_SCORE_COLUMNS = [
    schema.ID, schema.TASK, schema.STATUS, schema.ERROR,
    "pism_pc", "pism_lambda_star", "pism_bucket", "pism_generations", "pism_tokens",
    "cmab_rho", "cmab_bucket", "cmab_variant",
]


def read_scores(output: str | Path | Location) -> pa.Table:
    """The score columns of every shard under ``output``."""
    where = location(output)
    dataset = pq.ParquetDataset(where.path, filesystem=where.filesystem)
    present = set(dataset.schema.names)
    return dataset.read(columns=[c for c in _SCORE_COLUMNS if c in present])


def error_reason(message: str) -> str:
    """Group error messages: stage plus the message with numbers and quoted names blurred."""
    head = message.split(":", 1)[0] if ":" in message else "error"
    rest = message.split(":", 1)[1] if ":" in message else message
    rest = re.sub(r"'[^']*'|\"[^\"]*\"", "…", rest)
    rest = re.sub(r"\d+", "N", rest).strip()
    return f"{head}: {rest[:80]}"


def _bar_by_task(rows: list[dict], column: str, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    tasks = sorted({r[schema.TASK] or "?" for r in rows})
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks), 3.6))
    width = 0.8 / len(schema.BUCKETS)
    for b, bucket in enumerate(schema.BUCKETS):
        counts = [sum(1 for r in rows if (r[schema.TASK] or "?") == t and r[column] == bucket) for t in tasks]
        ax.bar([i + b * width for i in range(len(tasks))], counts, width, label=bucket)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lambda_star(rows: list[dict], ratios: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    values = [r["pism_lambda_star"] for r in rows if r.get("pism_bucket")]
    labels = [f"{x:.1f}" for x in ratios] + ["never"]
    counts = [sum(1 for v in values if v is not None and abs(v - x) < 1e-9) for x in ratios]
    counts.append(sum(1 for v in values if v is None))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(labels, counts, color="#4c72b0")
    ax.set_xlabel("λ* (first mask ratio with Pc < τ; 0.0 = unsolved)")
    ax.set_ylabel("samples")
    ax.set_title("PISM failure ratio λ*")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pc_curves(rows: list[dict], ratios: list[float], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for bucket in schema.BUCKETS:
        mine = [r for r in rows if r.get("pism_bucket") == bucket and r.get("pism_pc")]
        xs, ys = [], []
        for j, x in enumerate(ratios):
            known = [r["pism_pc"][j] for r in mine if r["pism_pc"][j] is not None]
            if known:
                xs.append(x)
                ys.append(sum(known) / len(known))
        if xs:
            left.plot(xs, ys, marker="o", label=f"{bucket} ({len(mine)})")
    left.set_xlabel("mask ratio λ")
    left.set_ylabel("mean Pc(λ) over fully evaluated levels")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Pc(λ) by bucket")
    left.legend(fontsize="small")
    scored = [r for r in rows if r.get("pism_bucket")]
    surviving = [
        sum(1 for r in scored if r["pism_lambda_star"] is None or r["pism_lambda_star"] > x) / max(1, len(scored))
        for x in ratios
    ]
    right.plot(ratios, surviving, marker="o", color="#55a868")
    right.set_xlabel("mask ratio λ")
    right.set_ylabel("share of samples with Pc(λ) ≥ τ")
    right.set_ylim(-0.02, 1.02)
    right.set_title("Samples still solved as the mask grows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rho(rows: list[dict], thresholds: dict[str, float] | None, path: Path) -> None:
    import matplotlib.pyplot as plt

    values = [r["cmab_rho"] for r in rows if r.get("cmab_rho") is not None]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.hist(values, bins=40, color="#c44e52")
    for name, x in (thresholds or {}).items():
        ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
        ax.text(x, ax.get_ylim()[1] * 0.95, name, rotation=90, fontsize="x-small", va="top")
    ax.set_xlabel("ρ̄ (image / text attention)")
    ax.set_ylabel("samples")
    ax.set_title("CMAB attention balance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmab_thresholds(cmab: dict[str, Any], variant: str,
                     calibration: dict[str, Any] | None) -> tuple[dict[str, float] | None, str]:
    """(the thresholds the CMAB buckets use, a sentence saying which and where they come from)."""
    if calibration is None:
        thresholds = cmab.get("thresholds", {}).get(variant)
        return thresholds, f"Fixed thresholds (`cmab.thresholds.{variant}`): {_cuts(thresholds)}."
    thresholds = calibration["thresholds"]
    if calibration.get("mode") != "calibrated":
        return thresholds, (f"Calibration requested, not applied: {calibration.get('warning')}. "
                            f"Fixed thresholds: {_cuts(thresholds)}.")
    return thresholds, (f"Thresholds calibrated on this run: quantiles {calibration['levels']} of "
                        f"{calibration['values']} ρ̄ values (correctly answered rows): {_cuts(thresholds)} "
                        f"(fixed: {_cuts(calibration.get('fixed_thresholds'))}).")


def _cuts(thresholds: dict[str, float] | None) -> str:
    if not thresholds:
        return "unknown"
    return ", ".join(f"{k} {thresholds[k]:.4g}" for k in cmab_calibration.THRESHOLD_NAMES if k in thresholds)


def _table(header: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _default_report_dir(shards: Location, run_dir: Location) -> Location:
    """``<run>/report``; beside a bare shard directory, not inside it (readers would take it for shards)."""
    return run_dir / "report" if run_dir != shards else shards.parent / (shards.name + "-report")


def write_report(output: str | Path | Location, report_dir: str | Path | Location | None = None) -> Path | Location:
    """Write the plots and ``report.md`` for a run directory, its ``annotated/`` or any directory of
    annotated shards; returns the report directory (default: the run's ``report/``): a ``Path`` when
    it is local, else its :class:`~curate.storage.Location`."""
    shards, run_dir = run_record.locate(output)
    target = location(report_dir) if report_dir else _default_report_dir(shards, run_dir)
    if target.is_local:
        return _write_report(output, shards, target.local)
    with tempfile.TemporaryDirectory(prefix="hardmode-report-") as tmp:
        _write_report(output, shards, Path(tmp))
        target.upload(Path(tmp))
    log.info("report copied to %s", target)
    return target


def _write_report(output: str | Path | Location, shards: Location, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    table = read_scores(shards)
    meta = run_record.read(output)
    # A calibrated-CMAB run's buckets are recomputed from ρ̄ with its recorded thresholds.
    calibration = cmab_calibration.of_run(meta, table)
    table = cmab_calibration.apply(table, calibration)
    rows = table.to_pylist()
    out.mkdir(parents=True, exist_ok=True)
    config = meta.get("config", {})
    ratios = config.get("pism", {}).get("ratios") or [round(0.1 * i, 1) for i in range(10)]
    has_pism = "pism_bucket" in table.column_names
    has_cmab = "cmab_bucket" in table.column_names

    ok = [r for r in rows if r[schema.STATUS] == schema.STATUS_OK]
    errors = Counter(error_reason(r[schema.ERROR] or "") for r in rows if r[schema.STATUS] != schema.STATUS_OK)
    shown = location(output) if isinstance(output, Location) or is_uri(output) else output  # no URI query
    md = [f"# hardmode curation report: `{shown}`", ""]
    if meta:
        md += [f"Model `{meta.get('model', '?')}`, engine `{meta.get('engine', '?')}`, "
               f"hardmode {meta.get('hardmode_version', '?')}, written {meta.get('finished_at', '?')}.", ""]
    md += [_table(["rows", "scored", "errors"], [[len(rows), len(ok), len(rows) - len(ok)]]), ""]
    if errors:
        md += ["## Errors by reason", "", _table(["reason", "rows"], errors.most_common()), ""]
    tasks = sorted({r[schema.TASK] or "?" for r in ok})
    figures: list[tuple[str, str]] = []
    if has_pism:
        _bar_by_task(ok, "pism_bucket", "PISM buckets per task", out / "buckets_pism.png")
        _lambda_star(ok, ratios, out / "lambda_star.png")
        _pc_curves(ok, ratios, out / "pc_curves.png")
        figures += [("PISM buckets", "buckets_pism.png"), ("λ*", "lambda_star.png"), ("Pc(λ)", "pc_curves.png")]
        body = [[t] + [sum(1 for r in ok if r[schema.TASK] == t and r["pism_bucket"] == b) for b in schema.BUCKETS]
                for t in tasks]
        gens = sum(r["pism_generations"] or 0 for r in ok)
        tokens = sum(r["pism_tokens"] or 0 for r in ok)
        md += ["## PISM", "", _table(["task", *schema.BUCKETS], body), "",
               f"Generations: {gens} ({gens / max(1, len(ok)):.1f} per scored sample), "
               f"generated tokens: {tokens}.", ""]
    if has_cmab:
        variant = config.get("cmab", {}).get("variant", "code")
        thresholds, said = _cmab_thresholds(config.get("cmab", {}), variant, calibration)
        _bar_by_task(ok, "cmab_bucket", "CMAB buckets per task", out / "buckets_cmab.png")
        _rho(ok, thresholds, out / "rho.png")
        figures += [("CMAB buckets", "buckets_cmab.png"), ("ρ̄", "rho.png")]
        body = [[t] + [sum(1 for r in ok if r[schema.TASK] == t and r["cmab_bucket"] == b) for b in schema.BUCKETS]
                for t in tasks]
        md += [f"## CMAB (variant `{variant}`)", "", said, "", _table(["task", *schema.BUCKETS], body), ""]
    if has_pism and has_cmab:
        body = [[f"PISM {a}"] + [sum(1 for r in ok if r["pism_bucket"] == a and r["cmab_bucket"] == b)
                                 for b in schema.BUCKETS] for a in schema.BUCKETS]
        agree = sum(1 for r in ok if r["pism_bucket"] == r["cmab_bucket"])
        md += ["## PISM vs CMAB", "", _table(["", *(f"CMAB {b}" for b in schema.BUCKETS)], body), "",
               f"Same bucket for {agree} of {len(ok)} scored samples.", ""]
    md += ["## Figures", ""] + [f"![{name}]({file})" for name, file in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")
    log.info("report written to %s", out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="a curate run's output.path (or its annotated/, or any directory of annotated shards)")
    parser.add_argument("--out", default=None, help="report directory (default: RUN_DIR/report, or SHARDS-report beside bare shards)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = write_report(args.output, args.out)
    print(out / "report.md")
    return 0
