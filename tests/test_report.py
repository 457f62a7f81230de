"""The report reads annotated shards and draws every figure it promises."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.report import write_report
from curate.run_record import RUN_METADATA_KEY


def _annotated(n: int) -> pa.Table:
    buckets = ["easy", "medium", "hard", "unsolved"]
    rows = []
    for i in range(n):
        bucket = buckets[i % 4]
        lam = {"easy": None, "medium": 0.5, "hard": 0.2, "unsolved": 0.0}[bucket]
        failed = i % 7 == 6
        rows.append({
            schema.ID: f"s{i}", schema.TASK: ["counting", "ocr"][i % 2],
            schema.STATUS: "error" if failed else "ok",
            schema.ERROR: f"score: image {i % 2}: cannot decode image (12 bytes)" if failed else None,
            "pism_pc": None if failed else [1.0 if (lam is None or x < lam) else 0.0 for x in
                                            [0.1 * j for j in range(10)]],
            "pism_lambda_star": None if failed else lam,
            "pism_bucket": None if failed else bucket,
            "pism_generations": None if failed else 12,
            "pism_tokens": None if failed else 100,
            "cmab_rho": None if failed or bucket == "unsolved" else 0.05 * (i % 40),
            "cmab_bucket": None if failed else buckets[(i + 1) % 4],
            "cmab_variant": None if failed else "code",
        })
    return pa.Table.from_pylist(rows)


def test_report_writes_figures_and_counts(tmp_path):
    table = _annotated(40)
    meta = {"config": {"pism": {"ratios": [round(0.1 * j, 1) for j in range(10)]},
                       "cmab": {"variant": "code", "thresholds": {"code": {"easy_low": 0.1, "hard_low": 0.4,
                                                                           "hard_high": 1.6, "easy_high": 1.9}}}}}
    table = table.replace_schema_metadata({RUN_METADATA_KEY: json.dumps(meta)})
    pq.write_table(table.slice(0, 25), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(25), tmp_path / "part-1.parquet")
    out = write_report(tmp_path, tmp_path / "rep")
    for name in ["buckets_pism.png", "lambda_star.png", "pc_curves.png", "buckets_cmab.png", "rho.png"]:
        assert (out / name).stat().st_size > 1000, name
    text = (out / "report.md").read_text()
    errors = sum(1 for i in range(40) if i % 7 == 6)
    assert f"| 40 | {40 - errors} | {errors} |" in text
    assert "score: image N: cannot decode image (N bytes) | " in text
    assert "## PISM vs CMAB" in text
