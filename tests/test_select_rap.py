"""RAP's selection rules (curate.selection.rap) on the hand-built dataset of tests/support/annotated.py.

Every expected set below is worked out by hand from RAP_PATTERNS (M = 5; per task 4 rows of each of
the six patterns): acc_img = 1.0, 0.8, 0.6, 0.2, 0.4, 0.0 and D = 1.0, 0.6, 0.6, 0.2, 0.0, 0.0 for
patterns 0..5, pattern 2 flagged by ACE, pattern 5 without an ACE score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.annotated import RAP_COLUMNS, RAP_PATTERNS, SCHEMA, annotated_rows, write_annotated

from curate import schema as S
from curate.config import ConfigError, load_structured
from curate.select import plan, select, summary_table
from curate.selection.config import SelectConfig
from curate.selection.rap import limr_similarity

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_annotated(tmp_path_factory.mktemp("run"))


def _cfg(run: Path, recipe: str, *overrides: str, out: Path | None = None) -> SelectConfig:
    return load_structured(
        SelectConfig,
        REPO / "configs" / "select" / recipe,
        [f"input={run}", f"output={out or run / 'unused'}", *overrides],
    )


def _chosen(run: Path, recipe: str, *overrides: str) -> tuple[set[str], dict]:
    _, scores, selections = plan(_cfg(run, recipe, "subsets.grpo.split.val_fraction=0", *overrides))
    sel = selections["grpo"]
    return set(scores.ids[sel.rows].tolist()), sel.rap


def _patterns(*wanted: int) -> set[str]:
    """The ids of the usable rows whose RAP pattern is one of ``wanted``."""
    return {
        r[S.ID]
        for r in annotated_rows()
        if r[S.STATUS] == S.STATUS_OK and int(r[S.ID].split("-")[1]) % 6 in wanted
    }


def test_hand_dataset_patterns_are_what_the_docstring_says():
    assert [(img - txt) / 5 for img, txt, _ in RAP_PATTERNS] == pytest.approx([1.0, 0.6, 0.6, 0.2, 0.0, 0.0])
    assert len(_patterns(0)) == 12 and len(_patterns(0, 1, 2, 3, 4, 5)) == 72


def test_paper_cde_keeps_d_at_least_lambda_c_and_drops_ace_flagged(run_dir):
    chosen, record = _chosen(run_dir, "rap_cde.yaml")
    assert chosen == _patterns(0, 1)  # D >= 0.5: patterns 0, 1, 2; pattern 2 is flagged
    assert record["cde_rows"] == 36 and record["ace_dropped"] == 12 and record["rows_out"] == 24
    assert record["scored_rows"] == 72 and record["m"] == 5 and record["ace_flagged"] == 12
    kept_flagged, _ = _chosen(run_dir, "rap_cde.yaml", "subsets.grpo.rap.drop_ace_flagged=false")
    assert kept_flagged == _patterns(0, 1, 2)


def test_code_cde_is_the_released_rule_with_its_limr_similarity(run_dir):
    # mu = mean acc_img = (1 + .8 + .6 + .2 + .4 + 0) / 6 = 0.5; similarity 1 - (acc - .5)^2 / .25 =
    # 0, .64, .96, .64, .96, 0. Kept: D > 0.2 (patterns 0, 1, 2), similarity >= 0.6 (1, 2, 3, 4), not
    # 5/5 (all but 0): patterns 1 and 2; the released code has no ACE, so 2 stays.
    chosen, record = _chosen(run_dir, "rap_cde.yaml", "subsets.grpo.rap.variant=code")
    assert chosen == _patterns(1, 2)
    assert record["mean_acc_img"] == pytest.approx(0.5) and record["ace_dropped"] == 0
    assert limr_similarity(np.array([1.0, 0.8, 0.6, 0.2, 0.4, 0.0]), 0.5) == pytest.approx(
        [0, 0.64, 0.96, 0.64, 0.96, 0]
    )
    stricter, _ = _chosen(
        run_dir, "rap_cde.yaml", "subsets.grpo.rap.variant=code", "subsets.grpo.rap.similarity=0.9"
    )
    assert stricter == _patterns(2)


def test_paper_drm_replaces_trivial_rows_by_the_hardest_keeping_the_size(run_dir):
    # CDE set (not flagged): patterns 0 + 1 = 24 rows; pattern 0 is trivial (5/5): 12 out. Candidates
    # outside it, 1..4 correct of 5, not flagged: patterns 3 (1 right) and 4 (2 right); the 12 hardest
    # are exactly pattern 3.
    chosen, record = _chosen(run_dir, "rap_drm.yaml")
    assert chosen == _patterns(1, 3)
    assert (record["trivial_removed"], record["refilled"], record["refill_shortfall"]) == (12, 12, 0)
    assert record["rows_out"] == record["cde_rows"] - record["ace_dropped"] == 24


def test_paper_drm_breaks_ties_by_seed_and_reports_a_shortfall(run_dir):
    # lambda_c = 0.2: CDE keeps patterns 0, 1, 3 (2 flagged), 0 is trivial; the only candidates left
    # are pattern 4's 12 rows (2 right), all taken. lambda_c = 0: every pattern is in the CDE set, so
    # no candidate is left outside it: the 12 trivial rows are removed and the shortfall reported.
    chosen, record = _chosen(run_dir, "rap_drm.yaml", "subsets.grpo.rap.lambda_c=0.2")
    assert chosen == _patterns(1, 3, 4) and record["refilled"] == 12
    chosen, record = _chosen(run_dir, "rap_drm.yaml", "subsets.grpo.rap.lambda_c=0.0")
    assert chosen == _patterns(1, 3, 4, 5)
    assert (record["trivial_removed"], record["refilled"], record["refill_shortfall"]) == (12, 0, 12)


def test_paper_drm_takes_the_hardest_among_unequal_candidates_in_seeded_order(tmp_path):
    rows = annotated_rows()
    for r in rows:  # pattern 4 becomes 1 right of 5 like pattern 3: 24 equally hard candidates
        if r[S.STATUS] == S.STATUS_OK and int(r[S.ID].split("-")[1]) % 6 == 4:
            r.update(rap_img_correct=1, rap_txt_correct=1, rap_cde=0.0)
    run = write_annotated(tmp_path / "run", rows)
    picks = [_chosen(run, "rap_drm.yaml", f"seed={seed}")[0] - _patterns(1) for seed in (0, 0, 1)]
    assert picks[0] == picks[1] and picks[0] != picks[2]
    assert all(len(p) == 12 and p <= _patterns(3, 4) for p in picks)


def test_code_drm_adds_a_seeded_fraction_of_one_right_rows_passing_the_loose_rule(run_dir):
    # One right of 5: pattern 3 (D = 0.2 >= loose_margin, similarity 0.64). At the released 0.85 no
    # row passes; at 0.6 all 12 do, and drm_fraction 0.5 adds 6 of them to the code CDE set (1, 2).
    base, record = _chosen(run_dir, "rap_drm.yaml", "subsets.grpo.rap.variant=code")
    assert base == _patterns(1, 2) and record["loose_one_correct_rows"] == 0 and record["drm_added"] == 0
    assert record["mean_cde"] == pytest.approx(0.4)
    overrides = (
        "subsets.grpo.rap.variant=code",
        "subsets.grpo.rap.loose_similarity=0.6",
        "subsets.grpo.rap.drm_fraction=0.5",
    )
    chosen, record = _chosen(run_dir, "rap_drm.yaml", *overrides)
    added = chosen - _patterns(1, 2)
    assert len(added) == 6 and added <= _patterns(3) and record["loose_one_correct_rows"] == 12
    assert _chosen(run_dir, "rap_drm.yaml", *overrides)[0] == chosen
    assert _chosen(run_dir, "rap_drm.yaml", *overrides, "seed=3")[0] != chosen


def test_error_rows_and_rows_without_rap_scores_are_never_taken(tmp_path):
    rows = annotated_rows()
    for r in rows[:6]:  # usable rows a run scored without RAP (e.g. RAP added in a later pass)
        r.update({name: None for name in RAP_COLUMNS})
    run = write_annotated(tmp_path / "run", rows)
    chosen, record = _chosen(
        run, "rap_cde.yaml", "subsets.grpo.rap.lambda_c=-1", "subsets.grpo.rap.drop_ace_flagged=false"
    )
    assert chosen == _patterns(0, 1, 2, 3, 4, 5) - {r[S.ID] for r in rows[:6]}
    assert record["scored_rows"] == 66
    assert not any(i.startswith("bad-") for i in chosen)


def test_select_exports_a_rap_subset_with_its_counts_in_the_manifest(tmp_path, run_dir):
    out = tmp_path / "out"
    manifest = select(_cfg(run_dir, "rap_drm.yaml", out=out))
    rec = manifest["subsets"]["grpo"]
    assert rec["kind"] == "rap" and rec["rows"] == 24 and rec["rap"]["trivial_removed"] == 12
    assert "RAP CDE D >= 0.5" in rec["what"]
    train = pq.read_table(out / "grpo" / "verl" / "train.parquet")
    val = pq.read_table(out / "grpo" / "verl" / "val.parquet")
    assert train.num_rows + val.num_rows == 24
    assert json.loads((out / "manifest.json").read_text())["subsets"]["grpo"]["rap"] == rec["rap"]
    assert (
        "grpo RAP drm (paper): CDE kept 36 of 72, ACE dropped 12, DRM removed 12 trivial, refilled 12; "
        "24 rows"
        in summary_table(manifest)
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["subsets.grpo.rap.variant=both"], "subsets.grpo.rap.variant"),
        (["subsets.grpo.rap.rule=ace"], "subsets.grpo.rap.rule"),
        (["subsets.grpo.rap.lambda_c=1.5"], "subsets.grpo.rap.lambda_c"),
        (["subsets.grpo.rap.drm_fraction=2"], "subsets.grpo.rap.drm_fraction"),
    ],
)
def test_config_mistakes_name_the_key(run_dir, overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        _cfg(run_dir, "rap_drm.yaml", *overrides)


def test_a_run_without_rap_or_ace_columns_fails_naming_the_key(tmp_path):
    keep = [f for f in SCHEMA if not f.name.startswith("rap_")]
    rows = [{k: v for k, v in r.items() if not k.startswith("rap_")} for r in annotated_rows()]
    run = tmp_path / "norap"
    (run / "annotated").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pa.schema(keep)), run / "annotated" / "part-00000.parquet"
    )
    with pytest.raises(ConfigError, match="config key 'subsets.grpo.kind': rap needs the columns"):
        plan(_cfg(run, "rap_drm.yaml"))
    no_ace = [{k: v for k, v in r.items() if k != "rap_ace_flag"} for r in annotated_rows()]
    run2 = tmp_path / "noace"
    (run2 / "annotated").mkdir(parents=True)
    schema = pa.schema([f for f in SCHEMA if f.name != "rap_ace_flag"])
    pq.write_table(pa.Table.from_pylist(no_ace, schema=schema), run2 / "annotated" / "part-00000.parquet")
    chosen, record = _chosen(run2, "rap_cde.yaml")  # paper's default: drops flagged only when ACE ran
    assert chosen == _patterns(0, 1, 2) and record["ace_flagged"] is None
    with pytest.raises(ConfigError, match="config key 'subsets.grpo.rap.drop_ace_flagged'"):
        plan(_cfg(run2, "rap_cde.yaml", "subsets.grpo.rap.drop_ace_flagged=true"))
