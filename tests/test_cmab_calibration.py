"""CMAB's calibrated thresholds (curate.scoring.cmab_calibration): quantiles of the run's own ρ̄, recorded in
run.json, applied by the run summary, ``curate report`` and ``curate select``; fixed mode unchanged.

Expected values are computed by hand in the comments, never read back from the code under test.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import run_record
from curate import schema as S
from curate.config import CmabThresholds, ConfigError, load_config, load_structured
from curate.report import write_report
from curate.scoring import cmab_calibration as cal
from curate.select import plan, select
from curate.selection.config import SelectConfig

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

FIXED = {"easy_low": 0.1, "hard_low": 0.4, "hard_high": 1.6, "easy_high": 1.9}
LEVELS = [0.1, 0.3, 0.7, 0.9]

# Ten correctly answered rows with ρ̄ = 1, 2, ..., 10 (shuffled), two unsolved, one error row.
# Quantiles at LEVELS of 1..10 (linear, position q·(n-1) = 0.9, 2.7, 6.3, 8.1 in the sorted values):
# easy_low 1.9, hard_low 3.7, hard_high 7.3, easy_high 9.1, so
#   hard [3.7, 7.3]: 4 5 6 7; medium [1.9, 3.7) ∪ (7.3, 9.1]: 2 3 8 9; easy: 1 10.
# The fixed bands store: 1 → hard (0.4 <= 1 <= 1.6), 2..10 → easy (> 1.9).
RHOS = [7.0, 2.0, 10.0, 4.0, 1.0, 9.0, 5.0, 3.0, 8.0, 6.0]
CALIBRATED = {1: "easy", 2: "medium", 3: "medium", 4: "hard", 5: "hard", 6: "hard", 7: "hard", 8: "medium",
              9: "medium", 10: "easy"}
FIXED_BUCKET = {r: ("hard" if r == 1 else "easy") for r in range(1, 11)}


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (value * 20 % 256, 7, 11)).save(buf, format="PNG")
    return buf.getvalue()


def _rows() -> list[dict]:
    rows = []
    for rho in RHOS:
        rows.append({S.ID: f"r{int(rho):02d}", S.STATUS: S.STATUS_OK, S.ERROR: None, "cmab_rho": rho,
                     "cmab_bucket": FIXED_BUCKET[int(rho)]})
    for i in range(2):
        rows.append({S.ID: f"unsolved{i}", S.STATUS: S.STATUS_OK, S.ERROR: None, "cmab_rho": None,
                     "cmab_bucket": "unsolved"})
    rows.append({S.ID: "bad", S.STATUS: S.STATUS_ERROR, S.ERROR: "cmab: the probe failed", "cmab_rho": None,
                 "cmab_bucket": None})
    for n, row in enumerate(rows):
        row.update({S.DATA_SOURCE: "hand", S.TASK: "counting", S.QUESTION: f"<image>How many in {n}?",
                    S.IMAGES: [_png(n)], S.IMAGE_PATHS: [None], S.GROUND_TRUTH: str(n), S.VERIFIER: None,
                    "cmab_variant": "code"})
    return rows


SCHEMA = pa.schema([*S.CANONICAL_SCHEMA, S.CMAB_SCHEMA.field("cmab_rho"), S.CMAB_SCHEMA.field("cmab_bucket"),
                    S.CMAB_SCHEMA.field("cmab_variant")])


def _table() -> pa.Table:
    return pa.Table.from_pylist(_rows(), schema=SCHEMA)


def _cmab_config(mode: str = "calibrated", min_values: int = 4) -> dict:
    return {"enabled": True, "variant": "code", "thresholds": {"code": FIXED, "paper": FIXED},
            "calibration": {"mode": mode, "quantiles": LEVELS, "min_values": min_values}}


def _record(mode: str = "calibrated", calibration: dict | None = None) -> dict:
    record: dict = {"fingerprint": "f", "model": "toy", "engine": "transformers",
                    "config": {"pism": {"enabled": False}, "cmab": _cmab_config(mode),
                               "prompt": {"system_prompt": "", "template": "{question}", "image_position": "first"}},
                    "cmab": {"variant": "code", "image_position": "last"}}
    if calibration is not None:
        record["cmab"]["calibration"] = calibration
    return record


def _write_run(run: Path, record: dict) -> Path:
    annotated = run / run_record.ANNOTATED_DIR
    annotated.mkdir(parents=True)
    table = _table()
    pq.write_table(table.slice(0, 7), annotated / "part-00000.parquet")
    pq.write_table(table.slice(7), annotated / "part-00001.parquet")
    (run / run_record.RUN_FILE).write_text(json.dumps(record))
    return run


def _by_rho(table: pa.Table) -> dict:
    return {(int(r) if r is not None else i): b for r, b, i in
            zip(table["cmab_rho"].to_pylist(), table["cmab_bucket"].to_pylist(), table[S.ID].to_pylist())}


# ---- thresholds from values ------------------------------------------------------------------------


def test_quantile_thresholds_by_hand():
    t = cal.quantile_thresholds(RHOS, LEVELS)
    assert (t.easy_low, t.hard_low, t.hard_high, t.easy_high) == pytest.approx((1.9, 3.7, 7.3, 9.1))
    # 1..5 at the default levels: positions 0.6, 1.4, 2.6, 3.4 → 1.6, 2.4, 3.6, 4.4.
    t = cal.quantile_thresholds([5, 3, 1, 4, 2], [0.15, 0.35, 0.65, 0.85])
    assert (t.easy_low, t.hard_low, t.hard_high, t.easy_high) == pytest.approx((1.6, 2.4, 3.6, 4.4))


def test_calibrate_reads_only_correctly_answered_rows_and_records_what_it_did():
    table = _table()
    # An ok row whose ρ̄ is NaN counts for nothing (it cannot be ranked).
    extra = pa.Table.from_pylist([{**_rows()[0], S.ID: "nan", "cmab_rho": math.nan}], schema=SCHEMA)
    record = cal.calibrate(pa.concat_tables([table, extra]), _cmab_config())
    assert record["mode"] == "calibrated" and record["variant"] == "code"
    assert record["levels"] == LEVELS and record["values"] == 10
    assert record["thresholds"] == pytest.approx({"easy_low": 1.9, "hard_low": 3.7, "hard_high": 7.3,
                                                  "easy_high": 9.1})
    assert record["fixed_thresholds"] == FIXED
    json.dumps(record)  # goes into run.json as it is


def test_apply_recomputes_solved_rows_only():
    table = _table()
    out = cal.apply(table, cal.calibrate(table, _cmab_config()))
    assert out.schema == table.schema
    got = _by_rho(out)
    assert {r: got[r] for r in range(1, 11)} == CALIBRATED
    assert got["unsolved0"] == got["unsolved1"] == "unsolved" and got["bad"] is None
    assert Counter(out["cmab_bucket"].to_pylist()) == {"hard": 4, "medium": 4, "easy": 2, "unsolved": 2, None: 1}
    # The same rule as the scorer's: cmab_bucket with the calibrated band.
    t = CmabThresholds(1.9, 3.7, 7.3, 9.1)
    assert [cal.cmab_bucket(float(r), True, t) for r in range(1, 11)] == [CALIBRATED[r] for r in range(1, 11)]


def test_too_few_values_fall_back_to_the_fixed_thresholds_with_a_warning(caplog):
    table = _table()
    with caplog.at_level(logging.WARNING, logger="curate.scoring.cmab_calibration"):
        record = cal.calibrate(table, _cmab_config(min_values=11))
    assert record["mode"] == "fixed" and record["requested"] == "calibrated" and record["values"] == 10
    assert record["thresholds"] == FIXED
    assert "only 10 ρ̄ values (cmab.calibration.min_values=11)" in record["warning"]
    assert record["warning"] in caplog.text
    assert cal.apply(table, record) is table  # the stored (fixed) buckets stand
    # No correct row at all: the same fallback, never a crash.
    none = table.filter(pa.compute.equal(table[S.STATUS], S.STATUS_ERROR))
    assert cal.calibrate(none, _cmab_config())["mode"] == "fixed"


def test_fixed_mode_changes_nothing():
    table = _table()
    assert cal.of_run(_record("fixed"), table) is None
    assert cal.of_run({"config": {"cmab": {"enabled": True}}}, table) is None  # a run from before calibration
    assert cal.apply(table, None) is table
    cfg = load_config(None, ["data.format=toy", "cmab.enabled=true"])
    assert cfg.cmab.calibration.mode == "fixed"
    # Calibration decides no row's annotation: not in the fingerprint (a resume may switch it).
    calibrated = load_config(None, ["data.format=toy", "cmab.enabled=true", "cmab.calibration.mode=calibrated",
                                    "cmab.calibration.quantiles=[0.2,0.4,0.6,0.8]"])
    assert run_record.scoring_fingerprint(cfg) == run_record.scoring_fingerprint(calibrated)


def test_of_run_prefers_the_recorded_calibration_else_computes_it():
    recorded = {"mode": "calibrated", "levels": LEVELS, "values": 10,
                "thresholds": {"easy_low": 0, "hard_low": 1, "hard_high": 2, "easy_high": 3}}
    assert cal.of_run(_record(calibration=recorded), _table()) == recorded
    computed = cal.of_run(_record(), lambda: _table())  # no recorded calibration (unfinished run)
    assert computed["thresholds"]["hard_low"] == pytest.approx(3.7)


# ---- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("cmab.calibration.mode=quantile", "cmab.calibration.mode"),
    ("cmab.calibration.quantiles=[0.1,0.5,0.9]", "cmab.calibration.quantiles"),
    ("cmab.calibration.quantiles=[0.0,0.3,0.7,0.9]", "cmab.calibration.quantiles"),
    ("cmab.calibration.quantiles=[0.1,0.3,0.7,1.0]", "cmab.calibration.quantiles"),
    ("cmab.calibration.quantiles=[0.1,0.7,0.3,0.9]", "cmab.calibration.quantiles"),
    ("cmab.calibration.quantiles=[0.1,0.3,0.3,0.9]", "cmab.calibration.quantiles"),
    ("cmab.calibration.min_values=3", "cmab.calibration.min_values"),
    ("cmab.calibration.levels=[0.1]", "cmab.calibration.levels"),
])
def test_config_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^config key '{key}'"):
        load_config(None, ["data.format=toy", override])


def test_the_demo_recipe_calibrates():
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "curate" / "toy.yaml")
    assert cfg.cmab.enabled and cfg.cmab.calibration.mode == "calibrated"


# ---- consumers: summary, report, select -----------------------------------------------------------------


def test_summary_records_the_calibration_and_counts_by_it(tmp_path):
    run = _write_run(tmp_path, _record())
    record = _record()
    summary = run_record.summarize(run / run_record.ANNOTATED_DIR, 13, 1.0, record)
    assert summary["cmab_buckets"] == {"easy": 2, "medium": 4, "hard": 4, "unsolved": 2}
    assert record["cmab"]["calibration"]["thresholds"]["easy_high"] == pytest.approx(9.1)
    fixed = _record("fixed")
    summary = run_record.summarize(run / run_record.ANNOTATED_DIR, 13, 1.0, fixed)
    assert summary["cmab_buckets"] == {"easy": 9, "medium": 0, "hard": 1, "unsolved": 2}
    assert "calibration" not in fixed["cmab"]


def _recorded() -> dict:
    # Hand-set thresholds, unlike the table's quantiles, so that the recorded ones are seen to be used:
    # hard [2.5, 5.5]: 3 4 5; medium [1.5, 2.5) ∪ (5.5, 8.5]: 2 6 7 8; easy: 1 9 10.
    return {"mode": "calibrated", "variant": "code", "levels": LEVELS, "values": 10,
            "thresholds": {"easy_low": 1.5, "hard_low": 2.5, "hard_high": 5.5, "easy_high": 8.5},
            "fixed_thresholds": FIXED}


RECORDED = {1: "easy", 2: "medium", 3: "hard", 4: "hard", 5: "hard", 6: "medium", 7: "medium", 8: "medium",
            9: "easy", 10: "easy"}


def _report_counts(text: str) -> list[str]:
    section = text.split("## CMAB", 1)[1].split("##", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| counting")]


def test_report_uses_the_recorded_thresholds_and_prints_them(tmp_path):
    run = _write_run(tmp_path / "run", _record(calibration=_recorded()))
    text = (write_report(run) / "report.md").read_text()
    # counting: easy 1 9 10, medium 2 6 7 8, hard 3 4 5, unsolved 2.
    assert _report_counts(text) == ["| counting | 3 | 4 | 3 | 2 |"]
    assert ("Thresholds calibrated on this run: quantiles [0.1, 0.3, 0.7, 0.9] of 10 ρ̄ values (correctly "
            "answered rows): easy_low 1.5, hard_low 2.5, hard_high 5.5, easy_high 8.5") in text
    # Without a recorded calibration (run.json of an unfinished run) it is computed from the shards.
    fresh = _write_run(tmp_path / "fresh", _record())
    assert _report_counts((write_report(fresh) / "report.md").read_text()) == ["| counting | 2 | 4 | 4 | 2 |"]
    # Fixed mode: the stored buckets and the fixed thresholds.
    fixed = _write_run(tmp_path / "fixed", _record("fixed"))
    text = (write_report(fixed) / "report.md").read_text()
    assert _report_counts(text) == ["| counting | 9 | 0 | 1 | 2 |"]
    assert "Fixed thresholds (`cmab.thresholds.code`): easy_low 0.1, hard_low 0.4, hard_high 1.6, easy_high 1.9" in text


def _select_cfg(run: Path, out: Path, *overrides: str) -> SelectConfig:
    return load_structured(SelectConfig, None, [f"input={run}", f"output={out}", "subsets.grpo.kind=rule",
                                                "subsets.grpo.split.val_fraction=0", *overrides])


def _selected(run: Path, tmp_path: Path, *overrides: str) -> set[int]:
    _, scores, selections = plan(_select_cfg(run, tmp_path / "unused", *overrides))
    return {int(i[1:]) for i in scores.ids[selections["grpo"].rows].tolist()}


def test_select_rules_see_the_calibrated_buckets(tmp_path):
    run = _write_run(tmp_path / "run", _record(calibration=_recorded()))
    assert _selected(run, tmp_path, "subsets.grpo.rule.by=cmab") == {2, 3, 4, 5, 6, 7, 8}
    assert _selected(run, tmp_path, "subsets.grpo.rule.by=cmab", "subsets.grpo.rule.buckets=[easy]") == {1, 9, 10}
    # either / both combine with PISM; with PISM off its column is absent, so by=cmab is the case that matters,
    # and quadmix's exclude_unsolved reads the same (unchanged) unsolved rows.
    fixed = _write_run(tmp_path / "fixed", _record("fixed"))
    assert _selected(fixed, tmp_path, "subsets.grpo.rule.by=cmab") == {1}


def test_select_exports_carry_the_bucket_they_were_chosen_by(tmp_path):
    run = _write_run(tmp_path / "run", _record(calibration=_recorded()))
    out = tmp_path / "sel"
    manifest = select(_select_cfg(run, out, "subsets.grpo.rule.by=cmab", "subsets.grpo.formats=[verl]"))
    assert manifest["input"]["run"]["cmab_calibration"]["thresholds"]["hard_low"] == 2.5
    assert manifest["subsets"]["grpo"]["cmab_bucket"] == {"counting": {"hard": 3, "medium": 4}}
    assert manifest["before"]["cmab_bucket"] == {"counting": {"easy": 3, "hard": 3, "medium": 4, "unsolved": 2}}
    canonical = pq.read_table(out / "grpo" / "canonical" / "train.parquet")
    assert {int(r): b for r, b in zip(canonical["cmab_rho"].to_pylist(), canonical["cmab_bucket"].to_pylist())} \
        == {r: RECORDED[r] for r in (2, 3, 4, 5, 6, 7, 8)}
    extra = pq.read_table(out / "grpo" / "verl" / "train.parquet")["extra_info"].to_pylist()
    assert Counter(e["cmab_bucket"] for e in extra) == {"hard": 3, "medium": 4}
    # Fixed mode: the manifest says nothing new.
    fixed = _write_run(tmp_path / "fixed", _record("fixed"))
    manifest = select(_select_cfg(fixed, tmp_path / "sel-fixed", "subsets.grpo.rule.by=cmab"))
    assert "cmab_calibration" not in manifest["input"]["run"]


# ---- end to end on the toy model ------------------------------------------------------------------


def test_curate_score_records_the_calibration_and_a_resume_recalibrates_over_the_whole_output(tmp_path):
    from curate.score import score_corpus

    small = ["data.format=toy", "data.toy.num_samples=20", "engine.model=toy", "engine.max_model_len=512",
             "sampling.max_tokens=64", "pism.enabled=false", "cmab.enabled=true", "cmab.k=2",
             "cmab.calibration.min_values=4", f"output.path={tmp_path}"]
    # Fixed mode: nothing recorded, the summary counts the stored buckets.
    assert score_corpus(load_config(None, small))["scored"] == 20
    record = json.loads((tmp_path / run_record.RUN_FILE).read_text())
    assert "calibration" not in record["cmab"]
    table = pq.ParquetDataset(str(tmp_path / run_record.ANNOTATED_DIR)).read(columns=["cmab_rho", "cmab_bucket"])
    assert record["summary"]["cmab_buckets"] == {b: table["cmab_bucket"].to_pylist().count(b) for b in S.BUCKETS}

    # The same run resumed in calibrated mode (calibration is not in the fingerprint): no row is scored
    # again, and the calibration covers every row already written.
    counts = score_corpus(load_config(None, [*small, "cmab.calibration.mode=calibrated"]))
    assert counts["skipped"] == 20 and counts["rows"] == 0
    record = json.loads((tmp_path / run_record.RUN_FILE).read_text())
    calibration = record["cmab"]["calibration"]
    assert calibration["mode"] == "calibrated" and calibration["levels"] == [0.15, 0.35, 0.65, 0.85]
    rhos = [r for r, b in zip(table["cmab_rho"].to_pylist(), table["cmab_bucket"].to_pylist()) if b != "unsolved"]
    assert calibration["values"] == len(rhos) >= 4
    t = cal.quantile_thresholds(rhos, calibration["levels"])
    assert calibration["thresholds"] == pytest.approx(
        {"easy_low": t.easy_low, "hard_low": t.hard_low, "hard_high": t.hard_high, "easy_high": t.easy_high})
    buckets = record["summary"]["cmab_buckets"]
    # 30 / 40 / 30 % of the solved rows, give or take ties and rounding: every band holds some.
    assert buckets["easy"] > 0 and buckets["medium"] > 0 and buckets["hard"] > 0
    assert buckets["easy"] + buckets["medium"] + buckets["hard"] == len(rhos)
    assert buckets["unsolved"] == table["cmab_bucket"].to_pylist().count("unsolved")
