"""PISM on the trained toy model: early exit certifies exactly what the full grid measures.

The reference is the full |Λ|×K grid with every answer kept: from it we know, for each level, which
realizations were answered correctly. Early exit, run on the same samples and seeds, must stop each
passing level exactly at the grid's first correct realization, fail exactly at the grid's first
level with Pc < τ, and so give the same λ* and bucket at a fraction of the generations.
"""

from __future__ import annotations

import dataclasses

import pytest

from curate.config import PismConfig, PromptConfig, load_config
from curate.engines import SamplingParams
from curate.engines.transformers_engine import TransformersEngine
from curate.grading import grade
from curate.images import decode_image
from curate.scoring.pism import PismResult, PismScorer, Sample, passes_needed, pism_bucket
from curate.toy.corpus import generate_corpus

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

RATIOS = [0.0, 0.2, 0.4, 0.6, 0.8]
K = 5
TAU = 0.2  # with K = 5: a level passes with one correct answer of five, like 1 of 10 at τ = 0.1


@pytest.fixture(scope="module")
def engine():
    cfg = load_config(overrides=["data.format=toy", "engine.batch_size=64"])
    eng = TransformersEngine.from_config(cfg.engine)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def samples():
    rows = generate_corpus(12, seed=3).to_pylist()
    return [Sample(r["id"], [decode_image(b) for b in r["images"]], r["question"], r["task"], r["ground_truth"])
            for r in rows]


def _run(engine, samples, mode, sampling, mask="block"):
    cfg = PismConfig(mode=mode, ratios=RATIOS, k=K, tau=TAU, mask=mask, keep_answers=True, seed=11)
    return PismScorer(engine, cfg, sampling, PromptConfig()).score(samples)


def _grid_outcomes(sample, result):
    """δ per (level, k) from the full grid's kept answers (level-major, k ascending)."""
    assert len(result.answers) == len(RATIOS) * K
    ok = [grade(sample.task, a, sample.ground_truth).correct for a in result.answers]
    return [ok[j * K:(j + 1) * K] for j in range(len(RATIOS))]


@pytest.mark.parametrize("temperature", [0.0, 0.7], ids=["greedy", "sampled"])
def test_early_exit_certifies_the_full_grid(engine, samples, temperature):
    sampling = SamplingParams(temperature=temperature, max_tokens=48)
    full = _run(engine, samples, "full", sampling)
    early = _run(engine, samples, "early_exit", sampling)
    need = passes_needed(TAU, K)
    assert need == 1
    for sample, f, e in zip(samples, full, early):
        assert isinstance(f, PismResult) and isinstance(e, PismResult), (f, e)
        grid = _grid_outcomes(sample, f)
        # the full grid's own λ*: first level with fewer than `need` correct
        failing = [j for j, row in enumerate(grid) if sum(row) < need]
        assert f.lambda_star == (RATIOS[failing[0]] if failing else None)
        assert e.lambda_star == f.lambda_star and e.bucket == f.bucket, sample.id
        stop = failing[0] if failing else len(RATIOS) - 1
        for j in range(stop + 1):
            if sum(grid[j]) < need:  # the failing level: all K tried, Pc = 0 in both modes
                assert e.attempts[j] == K and e.correct[j] == 0 and e.pc[j] == f.pc[j] == 0.0
            else:  # a passing level stops at the grid's first correct realization
                assert e.attempts[j] == grid[j].index(True) + 1 and e.correct[j] == 1
        assert all(a == 0 for a in e.attempts[stop + 1:])
        assert e.generations == sum(e.attempts) <= f.generations == len(RATIOS) * K
        # at least the certification lower bound j + K for λ* = Λ[j]
        if failing:
            assert e.generations >= failing[0] + K
        # answers agree attempt by attempt
        kept = [a for j in range(len(RATIOS)) for a in f.answers[j * K: j * K + e.attempts[j]]]
        assert e.answers == kept


def test_scores_carry_signal(engine, samples):
    """On the trained toy model, buckets are not all one value."""
    results = _run(engine, samples, "early_exit", SamplingParams(temperature=0.7, max_tokens=48))
    buckets = {r.bucket for r in results if isinstance(r, PismResult)}
    assert len(buckets) >= 2, buckets


@pytest.mark.parametrize("mask", ["pixel", "patch"])
def test_other_mask_kinds_run_and_agree(engine, samples, mask):
    sampling = SamplingParams(temperature=0.0, max_tokens=48)
    few = samples[:4]
    full, early = _run(engine, few, "full", sampling, mask), _run(engine, few, "early_exit", sampling, mask)
    assert [r.lambda_star for r in full] == [r.lambda_star for r in early]


def test_buckets_follow_the_text_rule():
    cfg = PismConfig()
    assert pism_bucket(0.0, cfg.ratios, cfg.buckets) == "unsolved"
    assert [pism_bucket(x, cfg.ratios, cfg.buckets) for x in (0.1, 0.4)] == ["hard", "hard"]
    assert [pism_bucket(x, cfg.ratios, cfg.buckets) for x in (0.5, 0.6)] == ["medium", "medium"]
    assert [pism_bucket(x, cfg.ratios, cfg.buckets) for x in (0.7, 0.9, None)] == ["easy"] * 3
    appendix = dataclasses.replace(cfg.buckets, easy_from=0.8)
    assert pism_bucket(0.7, cfg.ratios, appendix) == "medium"


def test_passes_needed():
    assert passes_needed(0.1, 10) == 1
    assert passes_needed(0.2, 10) == 2
    assert passes_needed(0.25, 10) == 3
    assert passes_needed(0.01, 10) == 1
