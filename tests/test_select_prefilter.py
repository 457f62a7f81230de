"""The pass-rate pre-filter of ``curate select`` (``rule.pass_rate``; method.md §5, DAPO offline) on the
hand-built annotated dataset of ``support.annotated``, whose rows carry the rollouts of pattern
``ROLLOUTS[i % 8]``.

Expected classes are worked out by hand from that table (below, per source, with min_attempts = 4)
and every expected row set is a filter over the table's rows, never the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support.annotated import SCHEMA, annotated_rows, write_annotated
from test_select import REPO, _args, _by_hand, _cfg, _ids

from curate import schema as S
from curate.config import ConfigError, PismConfig, PromptConfig, load_config
from curate.engines.base import Completion, GenerationEngine, GenerationResult, SamplingParams
from curate.scoring.pism import PismScorer, Sample
from curate.select import main as select_main
from curate.select import plan, select
from curate.selection.config import PassRateConfig
from curate.selection.rules import ScoreTable, pass_classes

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

# Class of each rollout pattern (support.annotated.ROLLOUTS) with min_attempts = 4:
#   pattern  PISM λ=0  CMAB   pism         cmab         pooled
#   0        1/1       4/4    unknown      all_correct  all_correct (5/5)
#   1        1/2       4/4    mixed        all_correct  mixed (5/6)
#   2        1/3       2/4    mixed        mixed        mixed
#   3        0/10      0/4    all_wrong    all_wrong    all_wrong (0/14)
#   4        1/1       3/4    unknown      mixed        mixed
#   5        10/10     1/4    all_correct  mixed        mixed
#   6        2/2       1/4    unknown      mixed        mixed
#   7        0/2       0/1    unknown      unknown      unknown (0/3)
AC, AW, MX, UN = "all_correct", "all_wrong", "mixed", "unknown"
CLASSES = {
    "pism": [UN, MX, MX, AW, UN, AC, UN, UN],
    "cmab": [AC, AC, MX, AW, MX, MX, MX, UN],
    "pooled": [AC, MX, MX, AW, MX, MX, MX, UN],
}
PER_PATTERN = 9  # 3 tasks x 3 rows of each pattern (24 rows per task, patterns i % 8)
PREFILTER_ONLY = ("subsets.grpo.kind=rule", "subsets.grpo.rule.by=none")
MID_HARD = ("medium", "hard")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_annotated(tmp_path_factory.mktemp("run"))


def _pattern(row: dict) -> int:
    return int(row[S.ID].rsplit("-", 1)[1]) % 8


def _kept(classes: list[str], keep=(MX, UN), pred=lambda r: True) -> set[str]:
    return _by_hand(lambda r: classes[_pattern(r)] in keep and pred(r))


def _class_counts(classes: list[str], patterns=range(8)) -> dict[str, int]:
    return {c: PER_PATTERN * sum(classes[p] == c for p in patterns) for c in (AC, AW, MX, UN)}


@pytest.mark.parametrize("source, table", [("pism", "pism"), ("cmab", "cmab"), ("pooled", "pooled"),
                                           ("auto", "pooled")])
def test_the_prefilter_alone_keeps_mixed_and_unknown_rows(run_dir, source, table):
    _, scores, sel = plan(
        _cfg(run_dir, None, None, *PREFILTER_ONLY, f"subsets.grpo.rule.pass_rate.source={source}")
    )
    g = sel["grpo"]
    assert _ids(scores, g.rows) == _kept(CLASSES[table])
    counts = _class_counts(CLASSES[table])
    assert g.pass_rate == {
        "sources": ["pism"] if source == "pism" else ["cmab"] if source == "cmab" else ["pism", "cmab"],
        "rows_in": 72,
        "classes": counts,
        "dropped": {"all_correct": counts["all_correct"], "all_wrong": counts["all_wrong"], "unknown": 0},
        "rows_out": counts["mixed"] + counts["unknown"],
    }


def test_hand_counts_of_the_pooled_prefilter():
    assert _class_counts(CLASSES["pooled"]) == {"all_correct": 9, "all_wrong": 9, "mixed": 45, "unknown": 9}
    assert len(_kept(CLASSES["pooled"])) == 54


@pytest.mark.parametrize(
    "overrides, classes, keep",
    [
        # 3 pooled rollouts suffice: pattern 7 (0 of 3) is now all-wrong, not unknown
        (["source=pooled", "min_attempts=3"], [AC, MX, MX, AW, MX, MX, MX, AW], (MX,)),
        # one rollout suffices: PISM's early-exit 1/1 and 2/2 are all-correct, 0/2 all-wrong
        (["source=pism", "min_attempts=1"], [AC, MX, MX, AW, AC, AC, AC, AW], (MX,)),
        # CMAB's 4 of 4 no longer suffice: patterns 0, 1 (4/4) and 3 (0/4) become unknown
        (["source=cmab", "min_attempts=5"], [UN, UN, MX, UN, MX, MX, MX, UN], (MX, UN)),
        # unknown rows dropped: only the rows shown to be mixed stay
        (["source=pism", "unknown=drop"], CLASSES["pism"], (MX,)),
        (["source=pooled", "drop_all_wrong=false"], CLASSES["pooled"], (MX, UN, AW)),
        (["source=pooled", "drop_all_correct=false"], CLASSES["pooled"], (MX, UN, AC)),
    ],
)
def test_min_attempts_unknown_rows_and_drop_switches(run_dir, overrides, classes, keep):
    cfg = _cfg(run_dir, None, None, *PREFILTER_ONLY, *(f"subsets.grpo.rule.pass_rate.{o}" for o in overrides))
    _, scores, sel = plan(cfg)
    assert _ids(scores, sel["grpo"].rows) == _kept(classes, keep)
    record = sel["grpo"].pass_rate
    assert record["classes"] == _class_counts(classes)
    assert record["dropped"] == {c: (0 if c in keep else _class_counts(classes)[c])
                                 for c in ("all_correct", "all_wrong", "unknown")}
    assert record["rows_in"] == sum(record["dropped"].values()) + record["rows_out"]


def test_the_prefilter_is_anded_with_the_bucket_rule(run_dir):
    # PISM easy + medium + hard = patterns 0, 1, 2, 4, 5, 6 (54 rows); PISM's rollouts drop pattern 5
    cfg = _cfg(run_dir, None, None, "subsets.grpo.kind=rule", "subsets.grpo.rule.buckets=[easy,medium,hard]",
               "subsets.grpo.rule.pass_rate.source=pism")
    _, scores, sel = plan(cfg)
    g = sel["grpo"]
    assert _ids(scores, g.rows) == _kept(CLASSES["pism"], pred=lambda r: r["pism_bucket"] != "unsolved")
    assert len(g.rows) == 45
    assert g.pass_rate["rows_in"] == 54 and g.pass_rate["rows_out"] == 45
    assert g.pass_rate["classes"] == _class_counts(CLASSES["pism"], (0, 1, 2, 4, 5, 6))
    assert g.pass_rate["dropped"] == {"all_correct": 9, "all_wrong": 0, "unknown": 0}
    # either: PISM OR CMAB medium + hard, then the pooled pre-filter
    cfg = _cfg(run_dir, None, None, "subsets.grpo.kind=rule", "subsets.grpo.rule.by=either",
               "subsets.grpo.rule.pass_rate={}")
    _, scores, sel = plan(cfg)
    expected = _kept(
        CLASSES["pooled"], pred=lambda r: r["pism_bucket"] in MID_HARD or r["cmab_bucket"] in MID_HARD
    )
    assert _ids(scores, sel["grpo"].rows) == expected
    assert cfg.subsets["grpo"].rule.describe() == (
        "(pism_bucket in ['medium', 'hard'] OR cmab_bucket in ['medium', 'hard']) "
        "AND pass rate (auto rollouts, >= 4 alike) not all_correct / all_wrong"
    )


def test_a_random_control_matches_the_prefiltered_rule(run_dir):
    # the rule: PISM medium + hard (patterns 1, 2, 5, 6) without PISM's all-correct pattern 5: 27 rows
    cfg = _cfg(run_dir, None, "random_same_size.yaml", "subsets.grpo.rule.pass_rate.source=pism",
               "subsets.grpo.split.val_fraction=0")
    _, scores, sel = plan(cfg)
    g = sel["grpo"]
    assert len(g.reference) == len(g.rows) == 27
    assert _ids(scores, g.reference) == _kept(CLASSES["pism"], pred=lambda r: r["pism_bucket"] in MID_HARD)
    assert g.pass_rate["dropped"] == {"all_correct": 9, "all_wrong": 0, "unknown": 0}


@pytest.mark.parametrize("ran, auto, refused", [("pism", "pism", ("cmab", "pooled")),
                                                ("cmab", "cmab", ("pism", "pooled"))])
def test_a_run_with_one_scorer(tmp_path, ran, auto, refused):
    """The rollouts of a scorer the run record says did not run are no rollouts: auto uses the other;
    asking for them fails naming the key."""
    record = {"fingerprint": "x", "config": {m: {"enabled": m == ran} for m in ("pism", "cmab")}}
    run = write_annotated(tmp_path / "run", run_record=record)
    _, scores, sel = plan(_cfg(run, None, None, *PREFILTER_ONLY, "subsets.grpo.rule.pass_rate.source=auto"))
    assert sel["grpo"].pass_rate["sources"] == [auto]
    assert _ids(scores, sel["grpo"].rows) == _kept(CLASSES[auto])
    for source in refused:
        with pytest.raises(ConfigError, match=r"'subsets\.grpo\.rule\.pass_rate\.source'.*dataset does not"):
            plan(_cfg(run, None, None, *PREFILTER_ONLY, f"subsets.grpo.rule.pass_rate.source={source}"))


def test_buckets_of_a_one_level_pism_run_are_refused(tmp_path):
    """A pre-rollout run (PISM at λ = 0 only) has no difficulty buckets; its pass rates are fine."""
    pism = {"enabled": True, "ratios": [0.0]}
    record = {"fingerprint": "x", "config": {"pism": pism, "cmab": {"enabled": False}}}
    run = write_annotated(tmp_path / "run", run_record=record)
    with pytest.raises(ConfigError, match=r"'subsets\.grpo\.rule\.by'.*one masking level"):
        plan(_cfg(run, None, "mid_hard_pism.yaml"))
    _, _, sel = plan(_cfg(run, None, None, *PREFILTER_ONLY, "subsets.grpo.rule.pass_rate.source=auto"))
    assert sel["grpo"].pass_rate["sources"] == ["pism"]


def test_a_dataset_without_rollouts_is_refused_naming_the_key(tmp_path):
    rollout_columns = ("pism_attempts", "pism_correct", "cmab_correct", "cmab_generations")
    schema = pa.schema([f for f in SCHEMA if f.name not in rollout_columns])
    annotated = tmp_path / "run" / "annotated"
    annotated.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(annotated_rows(), schema=schema), annotated / "part-0.parquet")
    with pytest.raises(ConfigError, match=r"'subsets\.grpo\.rule\.pass_rate\.source': 'auto' needs .* or "):
        plan(_cfg(tmp_path / "run", None, "prefilter.yaml"))
    _, _, sel = plan(_cfg(tmp_path / "run", None, "mid_hard_pism.yaml"))  # without the pre-filter: fine
    assert sel["grpo"].pass_rate is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("subsets.grpo.rule.pass_rate.drop_all_corect=false", "subsets.grpo.rule.pass_rate.drop_all_corect"),
        ("subsets.grpo.rule.pass_rate.source=rollouts", "subsets.grpo.rule.pass_rate.source"),
        ("subsets.grpo.rule.pass_rate.unknown=maybe", "subsets.grpo.rule.pass_rate.unknown"),
        ("subsets.grpo.rule.pass_rate.min_attempts=0", "subsets.grpo.rule.pass_rate.min_attempts"),
        ("subsets.grpo.rule.pass_rate.min_attempts=many", "subsets.grpo.rule.pass_rate.min_attempts"),
        ("subsets.grpo.kind=full", "subsets.grpo.rule.pass_rate"),
        ("subsets.grpo.rule.pass_rate=null", "subsets.grpo.rule.by"),
    ],
)
def test_config_mistakes_fail_naming_the_key(run_dir, override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        _cfg(run_dir, None, "prefilter.yaml", override)


def test_a_prefilter_that_drops_nothing_is_refused(run_dir):
    with pytest.raises(ConfigError, match="'subsets.grpo.rule.pass_rate': drops nothing"):
        _cfg(run_dir, None, "prefilter.yaml", "subsets.grpo.rule.pass_rate.drop_all_correct=false",
             "subsets.grpo.rule.pass_rate.drop_all_wrong=false")


def test_a_typo_on_the_command_line_exits_2_naming_the_key(run_dir, tmp_path, capsys):
    recipe = str(REPO / "configs" / "select" / "prefilter.yaml")
    argv = ["--config", recipe, f"input={run_dir}", f"output={tmp_path / 'x'}",
            "subsets.grpo.rule.pass_rate.sorce=cmab"]
    assert select_main(_args(argv)) == 2
    assert "config key 'subsets.grpo.rule.pass_rate.sorce'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_python_m_curate_select_exports_the_prefiltered_rows_to_verl(run_dir, tmp_path):
    out = tmp_path / "prefiltered"
    done = subprocess.run(
        [sys.executable, "-m", "curate", "select", "--config", "configs/select/prefilter.yaml",
         f"input={run_dir}", f"output={out}", "subsets.grpo.split.val_fraction=0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert ("grpo pass-rate pre-filter (pism + cmab rollouts): of 72 rows dropped all-correct 9, "
            "all-wrong 9, unknown 0; kept 54 (9 of unknown pass rate)") in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    g = manifest["subsets"]["grpo"]
    assert g["pass_rate"]["dropped"] == {"all_correct": 9, "all_wrong": 9, "unknown": 0}
    assert g["pass_rate"]["classes"] == {"all_correct": 9, "all_wrong": 9, "mixed": 45, "unknown": 9}
    assert g["what"].startswith("pass rate (auto rollouts, >= 4 alike) not all_correct / all_wrong")
    assert manifest["config"]["subsets"]["grpo"]["rule"]["pass_rate"]["min_attempts"] == 4
    exported = []
    for split in ("train", "val"):
        rows = pq.read_table(out / g["files"]["verl"][split]).to_pylist()
        exported += [r["extra_info"]["id"] for r in rows]
        assert {r["extra_info"]["split"] for r in rows} == {split}
    assert len(exported) == len(set(exported)) == 54
    assert set(exported) == _kept(CLASSES["pooled"])


# ---- where the rollouts come from: PISM's λ = 0 level ----------------------------------------------------


class ScriptedEngine(GenerationEngine):
    """Answers each question's successive rollouts from a script (True = right): what early exit
    reads of the unmasked level then depends only on the order of right and wrong answers."""

    def __init__(self, scripts: dict[str, list[bool]]):
        self.scripts = scripts
        self.served = {q: 0 for q in scripts}

    def generate(self, requests, params):
        results = []
        for request in requests:
            question = request.messages[-1]["content"][-1]["text"]
            script = self.scripts[question]
            done = []
            for _ in range(request.n):
                right = script[self.served[question]]
                self.served[question] += 1
                done.append(Completion(f"<answer>{3 if right else 4}</answer>", 4, "stop"))
            results.append(GenerationResult(done))
        return results


SCRIPTS = {
    "right-always": [True] * 8,
    "wrong-then-right": [False, False, True, True, True, True, True, True],
    "never-right": [False] * 8,
}


@pytest.mark.parametrize(
    "mode, wave, expected",
    [
        # early exit stops the unmasked level at the first right answer: a row answered right at once
        # shows 1 of 1 (unknown, not all-correct); the others are classed as the full level classes them
        ("early_exit", 1, {"right-always": ("unknown", 1, 1), "wrong-then-right": ("mixed", 1, 3),
                           "never-right": ("all_wrong", 0, 8)}),
        # a first wave of 4 all right reaches min_attempts = 4
        ("early_exit", 4, {"right-always": ("all_correct", 4, 4), "wrong-then-right": ("mixed", 2, 4),
                           "never-right": ("all_wrong", 0, 8)}),
        ("full", 1, {"right-always": ("all_correct", 8, 8), "wrong-then-right": ("mixed", 6, 8),
                     "never-right": ("all_wrong", 0, 8)}),
    ],
)
def test_pism_level_zero_rollouts_under_early_exit_and_the_full_level(mode, wave, expected):
    cfg = PismConfig(mode=mode, ratios=[0.0], k=8, wave_attempts=wave)
    image = Image.new("RGB", (28, 28), (9, 9, 9))
    samples = [Sample(q, [image], q, "counting", "3") for q in SCRIPTS]
    prompt = PromptConfig(system_prompt="", image_position="first")
    scorer = PismScorer(ScriptedEngine(SCRIPTS), cfg, SamplingParams(), prompt)
    results = dict(zip(SCRIPTS, scorer.score(samples)))
    table = pa.table({
        S.ID: list(results), S.TASK: ["counting"] * 3, S.STATUS: ["ok"] * 3,
        "pism_attempts": [r.attempts for r in results.values()],
        "pism_correct": [r.correct for r in results.values()],
    })
    scores = ScoreTable.from_table(table)
    classes, sources = pass_classes(scores, PassRateConfig(source="pism"), "k")
    assert sources == ("pism",)
    got = {q: (c, results[q].correct[0], results[q].attempts[0]) for q, c in zip(scores.ids, classes)}
    assert got == expected


def test_prerollout_recipe_scores_the_toy_corpus_and_feeds_the_prefilter(tmp_path):
    """configs/curate/prerollout.yaml on 12 toy samples (``curate score``: the same scoring as ``run``,
    without Ray): K = 8 unstopped rollouts each at λ = 0, then the pre-filter over them."""
    from curate.score import score_corpus

    run = tmp_path / "run"
    cfg = load_config(REPO / "configs" / "curate" / "prerollout.yaml",
                      ["data.format=toy", "data.toy.num_samples=12", "engine.model=toy",
                       "engine.max_model_len=512", "sampling.max_tokens=48", f"output.path={run}"])
    assert (cfg.pism.ratios, cfg.pism.mode, cfg.pism.k, cfg.cmab.enabled) == ([0.0], "full", 8, False)
    assert score_corpus(cfg)["scored"] == 12
    columns = [S.ID, "pism_attempts", "pism_correct"]
    rows = pq.ParquetDataset(str(run / "annotated")).read(columns=columns).to_pylist()
    assert all(r["pism_attempts"] == [8] for r in rows)
    mixed = {r[S.ID] for r in rows if 0 < r["pism_correct"][0] < 8}
    uniform = {r[S.ID]: r["pism_correct"][0] for r in rows if r[S.ID] not in mixed}
    manifest = select(_cfg(run, tmp_path / "sel", "prefilter.yaml", "subsets.grpo.split.val_fraction=0"))
    g = manifest["subsets"]["grpo"]
    assert g["pass_rate"]["sources"] == ["pism"]
    assert g["pass_rate"]["dropped"] == {"all_correct": sum(c == 8 for c in uniform.values()),
                                         "all_wrong": sum(c == 0 for c in uniform.values()), "unknown": 0}
    assert mixed and uniform  # the toy model (seeded) answers some samples both ways, some one way
    chosen = pq.read_table(tmp_path / "sel" / g["files"]["canonical"]["train"], columns=[S.ID])
    assert set(chosen.column(S.ID).to_pylist()) == mixed
