"""Plots and a summary of an annotated dataset: what researchers look at instead of reading numbers.

``python -m curate report RUN_DIR`` reads the annotated Parquet shards of a run (``RUN_DIR/annotated``,
score columns only, never the image bytes) and writes, under ``RUN_DIR/report/``:

- ``buckets_pism.png`` / ``buckets_cmab.png``: bucket counts per task type;
- ``lambda_star.png``: histogram of PISM's failure ratio λ* (and how many samples never fail);
- ``pc_curves.png``: mean Pc(λ) per bucket over fully evaluated levels, and the share of samples still
  answering correctly at each λ (known for every sample, in either PISM mode);
- ``rho.png``: histogram of CMAB's ρ̄ with the bucket thresholds the buckets use (the variant's fixed
  ones, or those calibrated on the run's ρ̄ and recorded in ``run.json``: ``curate.scoring.cmab_calibration``);
- ``rap.png``: histograms of RAP's D = acc_img − acc_txt (CDE) and of ACE's max log ψ (raw and
  length-normalised) with the flag threshold;
- ``report.md``: counts in/scored/errored (errors grouped by reason), buckets per task, PISM vs CMAB
  agreement (confusion table), RAP's estimators per task and against the PISM/CMAB buckets,
  generations and tokens used, and the figures above.

``RUN_DIR`` may be a URI (``s3://bucket/run``, see ``curate.storage``): the report is drawn in a local
temporary directory and copied there.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from curate import run_record, schema
from curate.scores import error_reason, read_scores
from curate.scoring import cmab_calibration
from curate.storage import Location, is_uri, location

log = logging.getLogger(__name__)

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


# RAP's D in three classes: the image does not help, helps some, or is needed (the paper's λ_c = 0.5).
_CDE_CLASSES = (
    ("D <= 0", lambda d: d <= 0),
    ("0 < D < 0.5", lambda d: 0 < d < 0.5),
    ("D >= 0.5", lambda d: d >= 0.5),
)


def _rap_figure(rows: list[dict], threshold: float | None, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    values = sorted(round(r["rap_cde"], 6) for r in rows if r.get("rap_cde") is not None)
    levels = sorted(set(values))
    left.bar([f"{v:+.2f}" for v in levels], [values.count(v) for v in levels], color="#8172b2")
    left.set_xlabel("D = acc with image − acc without")
    left.set_ylabel("samples")
    left.set_title("RAP CDE")
    left.tick_params(axis="x", labelrotation=60, labelsize="small")
    for column, label in (("rap_ace_log_psi", "raw"), ("rap_ace_log_psi_norm", "length-normalised")):
        scores = [r[column] for r in rows if r.get(column) is not None and math.isfinite(r[column])]
        if scores:
            right.hist(scores, bins=30, alpha=0.6, label=label)
    if threshold is not None:
        right.axvline(math.log(threshold), color="black", linestyle="--", linewidth=0.8)
    right.set_xlabel("max_j log ψ_j (dashed: log λ_a)")
    right.set_ylabel("samples")
    right.set_title("RAP ACE")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rap_section(ok: list[dict], tasks: list[str], rap: dict[str, Any], has: dict[str, bool]) -> list[str]:
    scored = [r for r in ok if r.get("rap_cde") is not None]

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.3f}" if values else "–"

    body = []
    for t in tasks:
        mine = [r for r in scored if r[schema.TASK] == t]
        body.append([t, len(mine), mean([r["rap_img_correct"] / r["rap_img_attempts"] for r in mine]),
                     mean([r["rap_txt_correct"] / r["rap_txt_attempts"] for r in mine]),
                     mean([r["rap_cde"] for r in mine]), sum(1 for r in mine if r["rap_cde"] >= 0.5),
                     sum(1 for r in mine if r.get("rap_ace_flag"))])
    made = sum(r["rap_generations"] or 0 for r in scored)
    reused = sum(r["rap_img_reused"] or 0 for r in scored)
    header = ["task", "rows", "acc with image", "acc without", "mean D", "D >= 0.5", "ACE flagged"]
    md = ["## RAP (CDE, ACE)", "", _table(header, body), "",
          f"Generations made by RAP: {made}; image rollouts reused from PISM's λ = 0 attempts: {reused} "
          f"(M = {rap.get('m', '?')}).", ""]
    if any(r.get("rap_ace_flag") is not None for r in scored):
        ace = rap.get("ace", {})
        md += [f"ACE: σ = {ace.get('sigma')}, λ_a = {ace.get('threshold')}, form `{ace.get('form')}`, heads "
               f"`{ace.get('heads')}`, response `{ace.get('response')}`.", ""]
    for method in ("pism", "cmab"):
        if not has[method]:
            continue
        column = f"{method}_bucket"
        rows = [[name] + [sum(1 for r in scored if test(r["rap_cde"]) and r[column] == b)
                          for b in schema.BUCKETS] for name, test in _CDE_CLASSES]
        md += [f"### RAP's D against {method.upper()} buckets", "",
               _table(["", *(f"{method.upper()} {b}" for b in schema.BUCKETS)], rows), ""]
    return md


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
    if "rap_cde" in table.column_names:
        rap = config.get("rap", {})
        _rap_figure(ok, rap.get("ace", {}).get("threshold"), out / "rap.png")
        figures.append(("RAP", "rap.png"))
        md += _rap_section(ok, tasks, rap, {"pism": has_pism, "cmab": has_cmab})
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
