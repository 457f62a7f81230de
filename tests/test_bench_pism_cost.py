"""The PISM cost benchmark's counting and simulation, checked against step-by-step references.

The benchmark derives every procedure's generation count from an outcome grid δ[sample, level, k];
here each derivation is compared with a plain loop that walks the procedure attempt by attempt, and
the simulation engine is checked to answer every (sample, level, k) exactly as its grid says when
the real ``PismScorer`` drives it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_pism_cost as cost
from curate.config import PismConfig, PromptConfig
from curate.engines import GenerationRequest, SamplingParams
from curate.grading import grade
from curate.scoring.pism import PismScorer

L, K = 10, 10
SAMPLING = SamplingParams(temperature=0.7, max_tokens=16)


def random_grids(seed: int, n: int = 400) -> np.ndarray:
    """Grids with per-sample, per-level success rates from 0 to 1 (incl. all-wrong and all-right rows)."""
    rng = np.random.default_rng(seed)
    p = rng.choice([0.0, 0.05, 0.3, 0.8, 1.0], size=(n, L, 1))
    return rng.random((n, L, K)) < p


def released_by_loop(grid: np.ndarray) -> list[int]:
    """The released procedure as its passes run: λ = 0 over all samples, then one pass per ratio over
    the samples solved at λ = 0; in a pass, a sample is retried until its first correct answer, ≤ K times."""
    gens = [0] * len(grid)
    solved = set()
    for level in range(grid.shape[1]):
        for i in range(len(grid)):
            if level > 0 and i not in solved:
                continue
            for k in range(grid.shape[2]):
                gens[i] += 1
                if grid[i, level, k]:
                    if level == 0:
                        solved.add(i)
                    break
    return gens


def early_exit_by_loop(grid: np.ndarray, need: int) -> tuple[list[int], list[int]]:
    """Early exit attempt by attempt: (generations, failing level or L) per sample."""
    gens, fails = [], []
    levels, k = grid.shape[1:]
    for row in grid:
        total, fail = 0, levels
        for level in range(levels):
            right = 0
            for attempt in range(k):
                total += 1
                right += int(row[level, attempt])
                if right >= need or right + (k - attempt - 1) < need:
                    break
            if right < need:
                fail = level
                break
        gens.append(total)
        fails.append(fail)
    return gens, fails


@pytest.mark.parametrize("seed", [0, 1])
def test_released_count_matches_the_procedure_run_pass_by_pass(seed):
    grid = random_grids(seed)
    assert cost.released_generations(grid).tolist() == released_by_loop(grid)


@pytest.mark.parametrize("need", [1, 2, 3])
def test_early_exit_count_and_failing_level_match_the_attempt_by_attempt_rule(need):
    grid = random_grids(need)
    gens, fails = early_exit_by_loop(grid, need)
    assert cost.early_exit_generations(grid, need).tolist() == gens
    assert cost.failing_level(grid, need).tolist() == fails


def test_certification_bound_is_j_plus_k_and_never_beaten():
    grid = random_grids(5)
    counts = cost.grid_counts(grid, need=1)
    fail = counts["failing_level"]
    assert counts["bound"].tolist() == [j + K if j < L else L for j in fail]
    assert (counts["early_exit"] >= counts["bound"]).all()
    assert (counts["released"] >= counts["early_exit"]).all()  # it never stops at the failing level
    # A sample whose first realization is right wherever it passes costs exactly the bound.
    lucky = np.zeros((2, L, K), bool)
    lucky[:, :, 0] = True
    lucky[0, 3] = False  # λ* = Λ[3]
    assert cost.grid_counts(lucky, 1)["early_exit"].tolist() == [3 + K, L]
    assert cost.grid_counts(lucky, 1)["bound"].tolist() == [3 + K, L]


def test_synthetic_corpus_follows_its_profile():
    cfg = PismConfig()
    profile = cost.Profile(accuracy_low=0.5, width=0.03, fail_pc=0.01)
    sizes = {"d": {"unsolved": 30, "hard": 20, "medium": 10, "easy": 40}}
    corpus = cost.build_corpus(cfg, profile, sizes, seed=0)
    assert {b: int((corpus.intended == b).sum()) for b in cost.BUCKET_ORDER} == sizes["d"]
    levels = cost.bucket_levels(cfg)
    assert levels == {"unsolved": [0], "hard": [1, 2, 3, 4], "medium": [5, 6], "easy": [7, 8, 9, 10]}
    # Pc is non-increasing in λ, at most the clean accuracy, and every unsolved sample has Pc(0) = fail_pc.
    assert (np.diff(corpus.pc, axis=1) <= 1e-12).all() and (corpus.pc <= 1).all()
    np.testing.assert_allclose(corpus.pc[corpus.intended == "unsolved", 0], 0.01, rtol=1e-6)
    # The uniforms are a pure function of (sample, level, k) and spread over [0, 1).
    u = cost.uniforms(np.arange(1000), 3, 7, L, seed=0)
    assert np.array_equal(u, cost.uniforms(np.arange(1000), 3, 7, L, seed=0))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.05


@pytest.fixture(scope="module")
def simulated():
    cfg = PismConfig()
    sizes = {"d": {"unsolved": 10, "hard": 15, "medium": 10, "easy": 15}}
    corpus = cost.build_corpus(cfg, cost.Profile(), sizes, seed=3)
    samples = corpus.samples()
    return cfg, corpus, samples, cost.SimulationEngine(corpus, samples, cfg)


def test_simulation_engine_answers_every_attempt_as_its_grid_says(simulated):
    cfg, corpus, samples, engine = simulated
    full = PismScorer(
        engine, dataclasses.replace(cfg, mode="full", keep_answers=True), SAMPLING, PromptConfig()
    ).score(samples)
    answered = np.array(
        [[grade(s.task, a, s.ground_truth).correct for a in r.answers] for s, r in zip(samples, full)]
    ).reshape(len(samples), L, K)
    assert np.array_equal(answered, corpus.grid(K))
    assert 0 < answered.mean() < 1


def test_early_exit_on_the_simulation_equals_the_derived_count(simulated):
    cfg, corpus, samples, engine = simulated
    early = PismScorer(engine, cfg, SAMPLING, PromptConfig()).score(samples)
    counts = cost.grid_counts(corpus.grid(K), need=1)
    assert [r.generations for r in early] == counts["early_exit"].tolist()
    assert [r.lambda_star for r in early] == [
        cfg.ratios[j] if j < L else None for j in counts["failing_level"]
    ]
    assert len({r.bucket for r in early}) == 4


def test_simulation_engine_refuses_requests_it_cannot_map(simulated):
    cfg, _, samples, engine = simulated
    sent: list[GenerationRequest] = []

    class Recording(cost.SimulationEngine):
        def generate(self, requests, params):
            sent.extend(requests)
            return super().generate(requests, params)

    recorder = Recording(engine.corpus, samples, cfg)
    PismScorer(recorder, cfg, SAMPLING, PromptConfig()).score(samples[:1])
    masked = next(r for r in sent if r.image_id not in engine.by_image)  # a request at λ > 0
    index, level, k = engine.locate(masked)
    assert index == 0 and level > 0 and masked.image_id.endswith(f":{cfg.ratios[level]:.6f}:{k}:{cfg.seed}")
    wrong_seed = dataclasses.replace(masked, seed=masked.seed + 1)
    unknown = dataclasses.replace(masked, image_id="nope")
    forged = dataclasses.replace(masked, image_id=masked.image_id.replace(f":{k}:", f":{k + 1}:"))
    results = engine.generate([wrong_seed, unknown, forged, masked], SAMPLING)
    assert "disagree" in results[0].error and "names no sample" in results[1].error
    assert results[2].error  # a realization id whose k and seed do not belong together
    assert results[3].ok and len(results[3].completions) == 1
