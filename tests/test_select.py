"""Selection of training subsets (curate.select / curate.selection) on a hand-built annotated dataset.

Expected values are counted by hand from the table below (or by a direct, independent filter over
its rows), never read back from the code under test.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.annotated import SCHEMA, annotated_rows, write_annotated

from curate import schema as S
from curate.config import ConfigError, PromptConfig, load_structured
from curate.select import main as select_main
from curate.select import plan, select
from curate.selection.config import SelectConfig
from curate.selection.rules import ScoreTable, largest_remainder, rng_for

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_annotated(tmp_path_factory.mktemp("run"))


def _cfg(run: Path, out: Path | None = None, recipe: str | None = None, *overrides: str) -> SelectConfig:
    path = REPO / "configs" / "select" / recipe if recipe else None
    return load_structured(
        SelectConfig, path, [f"input={run}", f"output={out or run / 'unused'}", *overrides]
    )


def _ids(scores: ScoreTable, rows) -> set[str]:
    return set(scores.ids[rows].tolist())


def _by_hand(pred) -> set[str]:
    return {r[S.ID] for r in annotated_rows() if r[S.STATUS] == S.STATUS_OK and pred(r)}


# ---- rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, pred",
    [
        ([], lambda r: r["pism_bucket"] in ("medium", "hard")),
        (["subsets.grpo.rule.by=cmab"], lambda r: r["cmab_bucket"] in ("medium", "hard")),
        (
            ["subsets.grpo.rule.by=either"],
            lambda r: r["pism_bucket"] in ("medium", "hard") or r["cmab_bucket"] in ("medium", "hard"),
        ),
        (
            ["subsets.grpo.rule.by=both"],
            lambda r: r["pism_bucket"] in ("medium", "hard") and r["cmab_bucket"] in ("medium", "hard"),
        ),
        (
            [
                "subsets.grpo.rule.by=either",
                "subsets.grpo.rule.pism_buckets=[hard]",
                "subsets.grpo.rule.cmab_buckets=[easy]",
            ],
            lambda r: r["pism_bucket"] == "hard" or r["cmab_bucket"] == "easy",
        ),
        (["subsets.grpo.rule.buckets=[unsolved]"], lambda r: r["pism_bucket"] == "unsolved"),
        (["subsets.grpo.kind=full"], lambda r: True),
        (
            ["subsets.grpo.tasks=[ocr]", "subsets.grpo.rule.buckets=[hard]"],
            lambda r: r[S.TASK] == "ocr" and r["pism_bucket"] == "hard",
        ),
    ],
)
def test_bucket_rules_and_combinations(run_dir, overrides, pred):
    cfg = _cfg(run_dir, None, None, "subsets.grpo.kind=rule", *overrides)
    _, scores, sel = plan(cfg)
    assert _ids(scores, sel["grpo"].rows) == _by_hand(pred)


def test_hand_counts_of_the_proposal():
    # 6 medium + 6 hard per task; CMAB medium/hard: 16 per task, of which the PISM-unsolved rows
    # (i % 4 == 3) are CMAB-unsolved: i in 0..23 with i % 3 in (1, 2) and i % 4 != 3 -> 12 per task.
    assert len(_by_hand(lambda r: r["pism_bucket"] in ("medium", "hard"))) == 36
    assert len(_by_hand(lambda r: r["cmab_bucket"] in ("medium", "hard"))) == 36
    # both: i % 4 in (1, 2) and i % 3 in (1, 2): 2 x 2 of every 12 residues (CRT) -> 8 per task
    assert (
        len(
            _by_hand(
                lambda r: r["pism_bucket"] in ("medium", "hard") and r["cmab_bucket"] in ("medium", "hard")
            )
        )
        == 24
    )


def test_order_of_shards_and_rows_does_not_change_the_selection(tmp_path, run_dir):
    other = write_annotated(tmp_path / "reshuffled", shards=5, order_seed=99)
    for recipe in ("random_same_size.yaml", "mid_hard_pism.yaml"):
        _, s1, a = plan(_cfg(run_dir, None, recipe))
        _, s2, b = plan(_cfg(other, None, recipe))
        for name in a:
            assert _ids(s1, a[name].train) == _ids(s2, b[name].train)
            assert _ids(s1, a[name].val) == _ids(s2, b[name].val)


# ---- random controls -----------------------------------------------------------------------------------


def test_random_same_size_draws_from_all_scored_rows_seeded(run_dir):
    rule_rows = _by_hand(lambda r: r["pism_bucket"] in ("medium", "hard"))
    picks = []
    for seed in (0, 0, 1):
        _, scores, sel = plan(_cfg(run_dir, None, "random_same_size.yaml", f"seed={seed}"))
        ids = _ids(scores, sel["grpo"].rows)
        assert len(ids) == len(rule_rows) == 36
        assert ids <= _by_hand(lambda r: True)  # usable rows only
        picks.append(ids)
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]
    # drawn from everything: with 72 usable rows some picks come from outside the rule's buckets
    assert picks[0] - rule_rows and picks[0] & rule_rows


def test_random_control_outside_the_rule_is_disjoint(run_dir):
    rule_rows = _by_hand(lambda r: r["pism_bucket"] in ("medium", "hard"))
    _, scores, sel = plan(
        _cfg(run_dir, None, "random_same_size.yaml", "subsets.grpo.random.pool=outside_rule")
    )
    ids = _ids(scores, sel["grpo"].rows)
    assert len(ids) == 36 and not ids & rule_rows


def test_random_control_stratified_matches_the_rule_task_mix(run_dir):
    # the rule: PISM hard on counting and ocr only -> 6 + 6 rows
    cfg = _cfg(
        run_dir,
        None,
        "random_same_size.yaml",
        "subsets.grpo.rule.buckets=[hard]",
        "subsets.grpo.random.stratify_by_task=true",
        "subsets.grpo.tasks=[counting,ocr]",
    )
    _, scores, sel = plan(cfg)
    assert Counter(scores.tasks[sel["grpo"].rows].tolist()) == {"counting": 6, "ocr": 6}
    too_many = _cfg(
        run_dir,
        None,
        "random_same_size.yaml",
        "subsets.grpo.random.stratify_by_task=true",
        "subsets.grpo.random.pool=outside_rule",
        "subsets.grpo.rule.buckets=[easy,medium,hard]",
    )
    with pytest.raises(ConfigError, match="subsets.grpo.random.stratify_by_task"):
        plan(too_many)  # 18 per task wanted, 6 per task outside the rule


def test_random_control_of_explicit_size_and_too_big(run_dir):
    _, scores, sel = plan(_cfg(run_dir, None, "random_same_size.yaml", "subsets.grpo.random.size=10"))
    assert len(sel["grpo"].rows) == 10
    with pytest.raises(ConfigError, match="subsets.grpo.random"):
        plan(_cfg(run_dir, None, "random_same_size.yaml", "subsets.grpo.random.size=73"))


# ---- balancing -------------------------------------------------------------------------------------------


def test_balance_cap_per_task(run_dir):
    _, scores, sel = plan(
        _cfg(
            run_dir,
            None,
            "mid_hard_pism.yaml",
            "subsets.grpo.balance.mode=cap",
            "subsets.grpo.balance.cap_per_task=4",
            "subsets.grpo.split.val_fraction=0",
        )
    )
    rows = sel["grpo"].rows
    assert Counter(scores.tasks[rows].tolist()) == {"counting": 4, "ocr": 4, "math": 4}
    assert _ids(scores, rows) <= _by_hand(lambda r: r["pism_bucket"] in ("medium", "hard"))


def test_balance_proportional_quotas(run_dir):
    # weights 2:1:1 over 12 mid+hard rows per task: the largest subset is 24 = 12 + 6 + 6
    _, scores, sel = plan(
        _cfg(
            run_dir,
            None,
            "mid_hard_pism.yaml",
            "subsets.grpo.balance.mode=proportional",
            "subsets.grpo.balance.quotas={counting: 2, ocr: 1, math: 1}",
            "subsets.grpo.split.val_fraction=0",
        )
    )
    assert Counter(scores.tasks[sel["grpo"].rows].tolist()) == {"counting": 12, "ocr": 6, "math": 6}
    _, scores, sel = plan(
        _cfg(
            run_dir,
            None,
            "mid_hard_pism.yaml",
            "subsets.grpo.balance.mode=proportional",
            "subsets.grpo.balance.quotas={counting: 1, ocr: 1}",
            "subsets.grpo.balance.size=10",
            "subsets.grpo.split.val_fraction=0",
        )
    )
    assert Counter(scores.tasks[sel["grpo"].rows].tolist()) == {"counting": 5, "ocr": 5}
    with pytest.raises(ConfigError, match="subsets.grpo.balance.size"):
        plan(
            _cfg(
                run_dir,
                None,
                "mid_hard_pism.yaml",
                "subsets.grpo.balance.mode=proportional",
                "subsets.grpo.balance.size=40",
            )
        )


def test_largest_remainder_is_exact_and_proportional():
    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder({"a": 2, "b": 1}, 7) == {"a": 5, "b": 2}  # 4.67 + 2.33
    assert sum(largest_remainder({"x": 0.3, "y": 0.3, "z": 0.4}, 11).values()) == 11


def test_rng_is_stable_across_processes():
    # independent of PYTHONHASHSEED: the generator is seeded from blake2b of the labels
    assert (
        rng_for(3, "grpo", "split").integers(0, 1 << 30, 3).tolist()
        == rng_for(3, "grpo", "split").integers(0, 1 << 30, 3).tolist()
    )
    assert rng_for(3, "grpo", "split").random() != rng_for(3, "sft", "split").random()


# ---- split -----------------------------------------------------------------------------------------------


def test_split_is_stratified_by_task_and_seeded(run_dir):
    cfg = _cfg(run_dir, None, "mid_hard_pism.yaml", "subsets.grpo.split.val_fraction=0.25")
    _, scores, sel = plan(cfg)
    grpo = sel["grpo"]
    assert len(grpo.val) == 9 and len(grpo.train) == 27  # 36 rows, a quarter in val
    assert Counter(scores.tasks[grpo.val].tolist()) == {"counting": 3, "ocr": 3, "math": 3}
    assert not _ids(scores, grpo.val) & _ids(scores, grpo.train)
    _, s2, again = plan(cfg)
    assert _ids(s2, again["grpo"].val) == _ids(scores, grpo.val)


# ---- SFT(X) + GRPO(Y): disjoint subsets --------------------------------------------------------------------


def test_sft_then_grpo_subsets_are_disjoint(run_dir):
    cfg = _cfg(run_dir, None, "sft_random_grpo_mid_hard.yaml")
    _, scores, sel = plan(cfg)
    grpo, sft = _ids(scores, sel["grpo"].rows), _ids(scores, sel["sft"].rows)
    assert grpo == _by_hand(lambda r: r["pism_bucket"] in ("medium", "hard"))
    assert len(sft) == len(grpo) and not grpo & sft
    assert sel["sft"].excluded_by_disjointness == 36


# ---- QuaDMix -----------------------------------------------------------------------------------------------


def test_quadmix_expected_copies_follow_the_percentile(run_dir):
    # omega = 1, eta = 1, lam = 0, epsilon = 0: S = (2 / 2)^1 = 1 copy for every ranked row
    cfg = _cfg(
        run_dir,
        None,
        None,
        "subsets.grpo.kind=quadmix",
        "subsets.grpo.quadmix.default.lam=0",
        "subsets.grpo.quadmix.default.omega=1",
        "subsets.grpo.quadmix.default.epsilon=0",
    )
    _, scores, sel = plan(cfg)
    assert _ids(scores, sel["grpo"].train) == _by_hand(lambda r: r["pism_bucket"] != "unsolved")
    assert set(sel["grpo"].train_copies.tolist()) == {1}
    # omega = 0, epsilon = 2: no row has percentile <= 0 (the 6 hard rows of a type tie at the
    # mean rank 2.5 of 17 -> 0.15), so every row gets exactly epsilon = 2 copies
    cfg = _cfg(
        run_dir,
        None,
        None,
        "subsets.grpo.kind=quadmix",
        "subsets.grpo.quadmix.default.omega=0",
        "subsets.grpo.quadmix.default.epsilon=2",
    )
    _, scores, sel = plan(cfg)
    assert set(sel["grpo"].train_copies.tolist()) == {2}


def test_quadmix_prefers_harder_rows(run_dir):
    # default recipe: hard rows (smallest λ*) rank first and get the most copies on average
    _, scores, sel = plan(_cfg(run_dir, None, "quadmix_pism.yaml", "subsets.grpo.split.val_fraction=0"))
    g = sel["grpo"]
    by_bucket: dict[str, list[int]] = {}
    for row, c in zip(g.train.tolist(), g.train_copies.tolist()):
        by_bucket.setdefault(scores.columns["pism_bucket"][row], []).append(c)
    assert "unsolved" not in by_bucket
    mean = {b: sum(v) / 18 for b, v in by_bucket.items()}  # 18 rows of each bucket were ranked
    assert mean["hard"] > mean.get("medium", 0) >= mean.get("easy", 0)


# ---- export ------------------------------------------------------------------------------------------------


def test_export_manifest_counts_and_errors(tmp_path, run_dir):
    out = tmp_path / "out"
    manifest = select(_cfg(run_dir, out, "mid_hard_pism.yaml"))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["subsets"] == manifest["subsets"]
    inp = on_disk["input"]
    assert (inp["rows"], inp["usable_rows"], inp["error_rows"]) == (78, 72, 6)
    assert inp["error_rows_by_stage"] == {"cmab": 2, "pism": 2, "read": 2}
    assert inp["run"]["fingerprint"] == "abc123"
    assert (
        on_disk["prompt"]["source"] == "run" and on_disk["prompt"]["system_prompt"] == "Think, then answer."
    )
    assert on_disk["before"]["pism_bucket"]["ocr"] == {"easy": 6, "hard": 6, "medium": 6, "unsolved": 6}
    g = on_disk["subsets"]["grpo"]
    assert g["rows"] == 36 and g["train_rows"] + g["val_rows"] == 36
    assert g["pism_bucket"] == {t: {"hard": 6, "medium": 6} for t in ("counting", "math", "ocr")}
    assert on_disk["config"]["seed"] == 0 and on_disk["seed"] == 0
    # the canonical rows are the chosen ones, complete, and never error rows
    train = pq.read_table(out / g["files"]["canonical"]["train"])
    val = pq.read_table(out / g["files"]["canonical"]["val"])
    ids = set(train.column(S.ID).to_pylist()) | set(val.column(S.ID).to_pylist())
    assert ids == _by_hand(lambda r: r["pism_bucket"] in ("medium", "hard"))
    assert set(train.column(S.STATUS).to_pylist()) == {"ok"}
    by_id = {r[S.ID]: r for r in annotated_rows()}
    for r in train.to_pylist():
        assert r[S.IMAGES] == by_id[r[S.ID]][S.IMAGES] and r["orig_note"] == by_id[r[S.ID]]["orig_note"]


def test_export_is_refused_over_an_existing_output_and_leaves_nothing(tmp_path, run_dir):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match="'output'"):
        select(_cfg(run_dir, out, "mid_hard_pism.yaml"))
    with pytest.raises(ConfigError, match="subsets.grpo"):
        select(_cfg(run_dir, tmp_path / "empty", "mid_hard_pism.yaml", "subsets.grpo.tasks=[nothing]"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_verl_export_carries_difficulty_in_extra_info(tmp_path, run_dir):
    out = tmp_path / "out"
    select(_cfg(run_dir, out, "mid_hard_pism.yaml", "subsets.grpo.split.val_fraction=0"))
    rows = pq.read_table(out / "grpo" / "verl" / "train.parquet").to_pylist()
    by_id = {r[S.ID]: r for r in annotated_rows()}
    assert len(rows) == 36
    for r in rows:
        info = r["extra_info"]
        src = by_id[info["id"]]
        assert info["pism_bucket"] == src["pism_bucket"] and info["cmab_bucket"] == src["cmab_bucket"]
        assert info["pism_lambda_star"] == src["pism_lambda_star"]
        assert (
            info["cmab_rho"] == pytest.approx(src["cmab_rho"])
            if src["cmab_rho"] is not None
            else info["cmab_rho"] is None
        )
        assert r["prompt"][0] == {"role": "system", "content": "Think, then answer."}  # the run's prompt
        assert r["prompt"][1]["content"] == src[S.QUESTION]
        assert r["reward_model"]["ground_truth"] == src[S.GROUND_TRUTH]
        assert r["images"][0]["bytes"] == src[S.IMAGES][0]


def test_quadmix_copies_are_written_and_val_has_one_of_each(tmp_path, run_dir):
    out = tmp_path / "out"
    manifest = select(
        _cfg(
            run_dir,
            out,
            "quadmix_pism.yaml",
            "subsets.grpo.split.val_fraction=0.2",
            "subsets.grpo.formats=[verl,sft_jsonl]",
        )
    )
    g = manifest["subsets"]["grpo"]
    train_ids = [
        r["id"]
        for r in pq.read_table(out / "grpo" / "verl" / "train.parquet").column("extra_info").to_pylist()
    ]
    val_ids = [
        r["id"] for r in pq.read_table(out / "grpo" / "verl" / "val.parquet").column("extra_info").to_pylist()
    ]
    assert len(train_ids) == g["train_rows"] > g["distinct_train_rows"] == len(set(train_ids))
    assert len(val_ids) == len(set(val_ids)) == g["val_rows"]
    assert not set(train_ids) & set(val_ids)
    jsonl = [
        json.loads(line) for line in (out / "grpo" / "sft_jsonl" / "train.jsonl").read_text().splitlines()
    ]
    assert Counter(r["id"] for r in jsonl) == Counter(train_ids)


def test_cli_dry_run_and_run(tmp_path, run_dir, capsys):
    out = tmp_path / "cli"
    recipe = str(REPO / "configs" / "select" / "mid_hard_either.yaml")
    assert select_main(_args(["--config", recipe, "--dry-run", f"input={run_dir}", f"output={out}"])) == 0
    printed = capsys.readouterr().out
    assert "grpo" in printed and "counting" in printed and not out.exists()
    assert select_main(_args(["--config", recipe, f"input={run_dir}", f"output={out}"])) == 0
    assert (out / "manifest.json").exists()
    assert (
        select_main(
            _args(["--config", recipe, f"input={run_dir}", f"output={out}", "subsets.grpo.rule.by=x"])
        )
        == 2
    )
    assert "subsets.grpo.rule.by" in capsys.readouterr().err


def _args(argv):
    from curate.__main__ import COMMANDS, DESCRIPTION
    from curate.cli import build_parser

    return build_parser("python -m curate", DESCRIPTION, COMMANDS).parse_args(["select", *argv])


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs" / "select").glob("*.yaml")))
def test_every_recipe_loads_and_selects(run_dir, recipe):
    _, scores, sel = plan(_cfg(run_dir, None, recipe))
    assert sel and all(len(s.rows) for s in sel.values())


def test_prompt_from_config_when_the_run_has_no_record(tmp_path):
    run = write_annotated(tmp_path / "bare", run_record={})
    (run / "run.json").unlink()
    out = tmp_path / "out"
    manifest = select(_cfg(run, out, "mid_hard_pism.yaml", "prompt.system_prompt=Be brief."))
    assert manifest["prompt"]["source"] == "config (no run record)"
    rows = pq.read_table(out / "grpo" / "verl" / "train.parquet").column("prompt").to_pylist()
    assert rows[0][0] == {"role": "system", "content": "Be brief."}
    assert PromptConfig().system_prompt != "Be brief."
    assert not math.isnan(manifest["seed"])


def test_quadmix_copies_match_the_formula_on_distinct_ranks():
    from curate.selection.config import QuadMixConfig
    from curate.selection.rules import quadmix_copies

    # one type, five distinct λ*: percentiles 0, .25, .5, .75, 1 (None = never fails = last)
    lambdas = [0.1, 0.2, 0.3, 0.5, None]
    table = pa.table(
        {
            S.ID: [f"r{i}" for i in range(5)],
            S.TASK: ["math"] * 5,
            S.STATUS: ["ok"] * 5,
            "pism_bucket": ["hard", "hard", "hard", "medium", "easy"],
            "pism_lambda_star": lambdas,
        }
    )
    scores = ScoreTable.from_table(table)
    expected = [2 / (1 + math.exp(-10 * (0.5 - r))) for r in (0.0, 0.25, 0.5)] + [0.0, 0.0]
    assert expected[2] == 1.0
    runs = 400
    totals = np.zeros(5)
    for seed in range(runs):
        rows, copies = quadmix_copies(scores, np.arange(5), QuadMixConfig(), rng_for(seed, "t"), "k")
        totals[rows] += copies
    assert totals[2] == runs and totals[3] == totals[4] == 0  # exact where S is an integer
    for i in (0, 1):  # S = 1.987, 1.848: one copy plus a second with probability 0.987 / 0.848
        assert abs(totals[i] / runs - expected[i]) < 0.06, (i, totals[i] / runs, expected[i])


def test_a_score_the_dataset_lacks_is_named(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("cmab_")} for r in annotated_rows()]
    run = tmp_path / "pism_only"
    annotated = run / "annotated"
    annotated.mkdir(parents=True)
    schema = pa.schema([f for f in SCHEMA if not f.name.startswith("cmab_")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), annotated / "part-0.parquet")
    with pytest.raises(ConfigError, match="subsets.grpo.rule.by.*cmab_bucket"):
        plan(_cfg(run, None, "mid_hard_either.yaml"))
    _, scores, sel = plan(_cfg(run, None, "mid_hard_pism.yaml"))  # no run.json: fine
    assert len(sel["grpo"].rows) == 36
    with pytest.raises(ConfigError, match="subsets.grpo.balance.mode"):
        plan(
            _cfg(
                run,
                None,
                "quadmix_pism.yaml",
                "subsets.grpo.balance.mode=cap",
                "subsets.grpo.balance.cap_per_task=3",
            )
        )


def test_a_score_column_of_a_method_that_did_not_run_is_no_score(tmp_path):
    """A run with CMAB off whose shards carry a ``cmab_bucket`` column (a source column of that name,
    or a hand-made file): selecting by CMAB is refused, not decided on that column."""
    record = {"fingerprint": "x", "config": {"pism": {"enabled": True}, "cmab": {"enabled": False}}}
    run = write_annotated(tmp_path / "run", run_record=record)
    _, scores, _ = plan(_cfg(run, None, "mid_hard_pism.yaml"))
    assert "pism_bucket" in scores.columns and "cmab_bucket" not in scores.columns
    with pytest.raises(ConfigError, match="no column 'cmab_bucket'"):
        plan(_cfg(run, None, "mid_hard_pism.yaml", "subsets.grpo.rule.by=cmab"))


def test_copies_of_excluded_rows_are_never_selected(tmp_path):
    """A held-out row repeated under another id (same question, same image bytes) is held out too; a
    row with the same image and another question, or the same question and another image, is not.
    An exclude_ids Parquet file with contents (a held-out set from elsewhere) excludes the dataset's
    rows that show the same sample, whatever their ids."""
    rows = annotated_rows()
    by_id = {r[S.ID]: r for r in rows}
    rows += [
        {**by_id["counting-00"], S.ID: "copy-of-counting-00"},
        {**by_id["ocr-05"], S.ID: "copy-of-ocr-05", "pism_bucket": "hard"},  # scores may differ
        {**by_id["counting-00"], S.ID: "other-question", S.QUESTION: "<image>Something else?"},
        {**by_id["counting-00"], S.ID: "other-image", S.IMAGES: [by_id["math-13"][S.IMAGES][0]]},
    ]
    run = write_annotated(tmp_path / "run", rows=rows)
    listed = tmp_path / "held.txt"
    listed.write_text("counting-00\nocr-05\n")
    manifest = select(_cfg(run, tmp_path / "full", "full.yaml", f"exclude_ids={listed}"))
    assert manifest["input"]["excluded_rows"] == 4 and manifest["input"]["excluded_copies"] == 2
    chosen = set()
    for rel in manifest["subsets"]["grpo"]["files"]["canonical"].values():
        chosen |= set(pq.read_table(tmp_path / "full" / rel, columns=[S.ID]).column(S.ID).to_pylist())
    assert not chosen & {"counting-00", "ocr-05", "copy-of-counting-00", "copy-of-ocr-05"}
    assert {"other-question", "other-image"} <= chosen
    # turned off: only the listed ids
    _, scores, _ = plan(_cfg(run, None, "full.yaml", f"exclude_ids={listed}", "exclude_duplicates=false"))
    assert int(scores.excluded.sum()) == 2
    # a held-out file of other ids: the dataset's rows with its contents are excluded
    external = pa.Table.from_pylist([{**by_id["math-07"], S.ID: "elsewhere-1"}], schema=SCHEMA)
    pq.write_table(external, tmp_path / "external.parquet")
    _, scores, _ = plan(_cfg(run, None, "full.yaml", f"exclude_ids={tmp_path / 'external.parquet'}"))
    assert scores.ids[scores.excluded].tolist() == ["math-07"] and scores.excluded_copies == 1


def test_excluded_ids_are_never_selected(tmp_path, run_dir):
    """exclude_ids (a held-out split): a text list or a Parquet id column; unknown ids are ignored."""
    held = {"counting-00", "ocr-05", "math-13", "not-in-the-dataset"}
    listed = tmp_path / "held.txt"
    listed.write_text("\n".join(sorted(held)) + "\n")
    manifest = select(_cfg(run_dir, tmp_path / "full", "full.yaml", f"exclude_ids={listed}"))
    assert manifest["input"]["excluded_rows"] == 3
    assert manifest["subsets"]["grpo"]["rows"] == 72 - 3
    chosen = set()
    for rel in manifest["subsets"]["grpo"]["files"]["canonical"].values():
        chosen |= set(pq.read_table(tmp_path / "full" / rel, columns=[S.ID]).column(S.ID).to_pylist())
    assert len(chosen) == 69 and not chosen & held
    # the same ids from a Parquet file's id column, with a random control (its size rule too)
    pq.write_table(pa.table({S.ID: sorted(held)}), tmp_path / "held.parquet")
    cfg = _cfg(run_dir, None, "random_same_size.yaml", f"exclude_ids={tmp_path / 'held.parquet'}")
    _, scores, selections = plan(cfg)
    rows = selections["grpo"].rows
    assert not set(scores.ids[rows].tolist()) & held
    # the rule the control matches is counted without the excluded rows: 36 - 2 medium/hard held out
    assert len(rows) == len(_by_hand(lambda r: r["pism_bucket"] in ("medium", "hard") and r[S.ID] not in held))
    with pytest.raises(ConfigError, match="config key 'exclude_ids'"):
        plan(_cfg(run_dir, None, "full.yaml", f"exclude_ids={tmp_path / 'missing.txt'}"))
