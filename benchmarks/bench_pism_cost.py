"""PISM cost: generations per sample for the project's early exit, the full grid, the released code's
procedure, and the certification lower bound — on the same per-attempt outcomes.

Procedures, for mask ratios Λ (|Λ| = L levels) and K realizations per level (method.md §1):

* ``early_exit`` — the project's scheduler (``curate.scoring.pism.PismScorer``, ``pism.mode=early_exit``),
  run for real: a level passes at its first correct answer, the sample stops at its first level with
  0/K correct.
* ``full`` — the same scorer with ``pism.mode=full``: L·K generations (the Pc(λ) curves).
* ``released`` — the released code's procedure: one pass over all samples at λ = 0, then one pass per
  ratio over the samples solved at λ = 0, each retrying a sample until its first correct answer, up
  to K tries. It does not stop at the failing level, so every solved sample visits every ratio.
* ``bound`` — the least any procedure can spend to certify the same λ*: one success at each lower
  level plus K failures at the failing level, j + K for λ* = Λ[j]; L (one success per level) when no
  level fails.

Realization k of level j is the same attempt in every procedure, so all four counts come from one
outcome grid δ[sample, j, k]:

1. **Toy** — the trained toy model through the real transformers engine on the toy corpus. The full
   grid runs with every answer kept; grading the answers gives δ; ``released``, ``bound`` and the
   early-exit count are derived from δ; then early exit runs for real and must match the derivation
   sample by sample (count and λ*).
2. **Simulation** — the paper's Orsta-47k scale (47,766 samples, the paper's bucket proportions per
   domain) with known Pc(λ) curves: the real ``PismScorer`` runs against ``SimulationEngine``, a
   ``GenerationEngine`` whose answers are correct with probability Pc(λ) of the request's sample and
   level, drawn from a counter-based hash of (sample, level, k) — so δ is known in advance for the
   whole grid and the derived counts can be checked against the scheduler's. Early exit runs on every
   sample, the full grid on a subsample (its count is L·K by construction; the run checks that and
   that λ* agrees). Totals are then projected to GPU-hours at a stated generation speed.

    .venv/bin/python benchmarks/bench_pism_cost.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_pism_cost.py --quick    # ~30 s smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, load_recipe, machine, table, toy_model_key, toy_samples, write_results
from curate.config import PismConfig, PromptConfig
from curate.engines.base import (
    Completion,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from curate.images import content_id
from curate.scoring.masks import derived_seed, realization_id
from curate.scoring.pism import PismResult, PismScorer, Sample, passes_needed, pism_bucket

PROCEDURES = ("bound", "early_exit", "released", "full")
BUCKET_ORDER = ("unsolved", "hard", "medium", "easy")
# The paper's PISM buckets with Qwen2.5-VL-7B on Orsta-47k (method.md §1).
PAPER_BUCKETS = {
    "perception": {"easy": 7827, "medium": 4872, "hard": 1454, "unsolved": 6480},
    "reasoning": {"easy": 5048, "medium": 1061, "hard": 1618, "unsolved": 19406},
}


# ---- counts from an outcome grid ---------------------------------------------------------------
# grid: bool array [samples, L, K]; grid[i, j, k] = realization k of level j answered correctly.


def level_attempts(grid: np.ndarray, need: int) -> np.ndarray:
    """[samples, L]: attempts early exit spends on each level if it reaches it — until the
    ``need``-th correct answer, or until the remaining attempts cannot reach ``need``."""
    k = grid.shape[-1]
    right = np.cumsum(grid, axis=-1)
    left = k - 1 - np.arange(k)
    decided = (right >= need) | (right + left < need)
    return np.argmax(decided, axis=-1) + 1


def failing_level(grid: np.ndarray, need: int) -> np.ndarray:
    """[samples]: index of λ* (the first level with fewer than ``need`` of K correct), L if none."""
    fails = grid.sum(axis=-1) < need
    return np.where(fails.any(axis=-1), np.argmax(fails, axis=-1), grid.shape[1])


def early_exit_generations(grid: np.ndarray, need: int) -> np.ndarray:
    attempts = level_attempts(grid, need)
    last = np.minimum(failing_level(grid, need), grid.shape[1] - 1)
    return np.where(np.arange(grid.shape[1]) <= last[:, None], attempts, 0).sum(axis=-1)


def released_generations(grid: np.ndarray) -> np.ndarray:
    """The released code: λ = 0 for every sample, then every ratio for the samples solved at λ = 0,
    each (sample, ratio) retried until its first correct answer, at most K tries."""
    k = grid.shape[-1]
    tries = np.where(grid.any(axis=-1), np.argmax(grid, axis=-1) + 1, k)  # [samples, L]
    solved = grid[:, 0].any(axis=-1)
    return tries[:, 0] + np.where(solved, tries[:, 1:].sum(axis=-1), 0)


def certification_bound(fail_level: np.ndarray, levels: int, k: int, need: int) -> np.ndarray:
    """Fewest generations that certify λ* = Λ[j]: ``need`` successes per lower level plus the
    K − need + 1 failures that rule the level out (j + K for need = 1); need·L when none fails."""
    return np.where(fail_level < levels, need * fail_level + k - need + 1, need * levels)


def grid_counts(grid: np.ndarray, need: int) -> dict[str, np.ndarray]:
    levels, k = grid.shape[1:]
    fail = failing_level(grid, need)
    return {
        "bound": certification_bound(fail, levels, k, need),
        "early_exit": early_exit_generations(grid, need),
        "released": released_generations(grid),
        "full": np.full(len(grid), levels * k),
        "failing_level": fail,
    }


def summarize(buckets: Sequence[str], counts: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Mean generations per sample by bucket (and over all samples) for each procedure; ratios are
    ratios of totals."""
    buckets = np.asarray(buckets)
    rows = []
    for name in (*BUCKET_ORDER, "all"):
        pick = np.ones(len(buckets), bool) if name == "all" else buckets == name
        n = int(pick.sum())
        if n == 0:
            continue
        row: dict[str, Any] = {"bucket": name, "samples": n}
        for proc in PROCEDURES:
            row[proc] = float(np.mean(counts[proc][pick]))
        row["early_over_bound"] = row["early_exit"] / row["bound"]
        row["full_over_early"] = row["full"] / row["early_exit"]
        row["released_over_early"] = row["released"] / row["early_exit"]
        rows.append(row)
    return rows


def bucket_table(rows: list[dict[str, Any]], label: str) -> str:
    return table(
        [
            label,
            "n",
            "bound",
            "early_exit",
            "released",
            "full",
            "early/bound",
            "full/early",
            "released/early",
        ],
        [
            [
                r["bucket"],
                r["samples"],
                r["bound"],
                r["early_exit"],
                r["released"],
                r["full"],
                r["early_over_bound"],
                r["full_over_early"],
                r["released_over_early"],
            ]
            for r in rows
        ],
    )


# ---- toy: the trained model through the real engine --------------------------------------------


def toy_setting(num_samples: int, corpus_seed: int) -> dict[str, Any]:
    from curate.engines import create_engine
    from curate.grading import grade
    from curate.scoring.stage import sampling_params

    cfg = load_recipe()
    samples = toy_samples(num_samples, corpus_seed)
    need = passes_needed(cfg.pism.tau, cfg.pism.k)
    levels, k = len(cfg.pism.ratios), cfg.pism.k
    engine = create_engine(cfg.engine)
    try:

        def run(mode: str) -> tuple[list[PismResult], float]:
            pism = dataclasses.replace(cfg.pism, mode=mode, keep_answers=mode == "full")
            started = time.perf_counter()
            results = PismScorer(engine, pism, sampling_params(cfg), cfg.prompt).score(samples)
            bad = [r for r in results if not isinstance(r, PismResult)]
            if bad:
                raise RuntimeError(f"PISM failed on {len(bad)} toy samples: {bad[0]}")
            return results, time.perf_counter() - started

        full, full_s = run("full")
        early, early_s = run("early_exit")
    finally:
        engine.close()
    # δ from the full grid's kept answers: level-major, realizations in ascending k.
    grid = np.array(
        [
            [grade(s.task, a, s.ground_truth, s.verifier).correct for a in r.answers]
            for s, r in zip(samples, full)
        ]
    ).reshape(len(samples), levels, k)
    counts = grid_counts(grid, need)
    measured = np.array([r.generations for r in early])
    star = [r.lambda_star for r in early]
    derived_star = [cfg.pism.ratios[j] if j < levels else None for j in counts["failing_level"]]
    checks = {
        "grid_matches_full_counts": bool(np.array_equal(grid.sum(-1), np.array([r.correct for r in full]))),
        "early_exit_count_mismatches": int((measured != counts["early_exit"]).sum()),
        "lambda_star_mismatches": sum(a != b for a, b in zip(star, derived_star))
        + sum(e.lambda_star != f.lambda_star for e, f in zip(early, full)),
    }
    counts["early_exit"] = measured  # the scheduler's own count is what is reported
    buckets = [r.bucket for r in early]
    return {
        "samples": num_samples,
        "corpus_seed": corpus_seed,
        "toy_model_key": toy_model_key(),
        "seconds": {"full": round(full_s, 2), "early_exit": round(early_s, 2)},
        "tokens_per_generation": sum(r.tokens for r in full) / sum(r.generations for r in full),
        "checks": checks,
        "summary": summarize(buckets, counts),
        "per_sample": [
            {
                "id": s.id,
                "task": s.task,
                "bucket": b,
                "lambda_star": st,
                **{p: int(counts[p][i]) for p in PROCEDURES},
            }
            for i, (s, b, st) in enumerate(zip(samples, buckets, star))
        ],
    }


# ---- simulation: known Pc(λ) curves at Orsta-47k scale -----------------------------------------


@dataclass(frozen=True)
class Profile:
    """How each synthetic sample's Pc(λ) = a·σ((c − λ)/w) is drawn.

    a (accuracy on the clean image) ~ U(accuracy_low, 1); w = ``width`` (how gradually the answer
    degrades as more is masked); c is placed so that Pc at the sample's failure level equals
    ``fail_pc`` (a level fails with 0/10 correct with probability (1 − fail_pc)^10 ≈ 0.90). The
    failure level is drawn uniformly among the levels of the sample's bucket (from ``pism_bucket``:
    hard 0.1–0.4, medium 0.5–0.6, easy 0.7–0.9 or "beyond the grid" at 1.0, unsolved 0.0), so the
    realized buckets follow the paper's proportions up to sampling noise.
    """

    accuracy_low: float = 0.5
    width: float = 0.03
    fail_pc: float = 0.01


@dataclass
class SyntheticCorpus:
    ids: list[str]
    domains: np.ndarray  # [N] str
    intended: np.ndarray  # [N] str, the bucket the curve was drawn for
    pc: np.ndarray  # [N, L] Pc at each level
    seed: int

    def __len__(self) -> int:
        return len(self.ids)

    def samples(self) -> list[Sample]:
        """PISM samples: a distinct 8×8 image each (its content id names the sample), one question."""
        from PIL import Image

        out = []
        for i, sid in enumerate(self.ids):
            pixels = np.zeros((8, 8, 3), np.uint8)
            pixels.reshape(-1)[:8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
            out.append(Sample(sid, [Image.fromarray(pixels)], "How many circles?", "counting", "1"))
        return out

    def outcomes(self, index: np.ndarray, level: np.ndarray, k: np.ndarray) -> np.ndarray:
        """δ for (sample, level, realization) triples (broadcast): u(i, j, k) < Pc_i(λ_j)."""
        levels = self.pc.shape[1]
        return uniforms(index, level, k, levels, self.seed) < self.pc[index, level]

    def grid(self, k: int) -> np.ndarray:
        n, levels = self.pc.shape
        return self.outcomes(
            np.arange(n)[:, None, None], np.arange(levels)[None, :, None], np.arange(k)[None, None, :]
        )


def uniforms(index: np.ndarray, level: np.ndarray, k: np.ndarray, levels: int, seed: int) -> np.ndarray:
    """A counter-based uniform in [0, 1) per (sample, level, k): splitmix64 of the flat index."""
    key = (
        (np.asarray(index, np.uint64) * np.uint64(levels) + np.asarray(level, np.uint64)) * np.uint64(1 << 16)
        + np.asarray(k, np.uint64)
    ) ^ np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
    x = key + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def bucket_levels(cfg: PismConfig) -> dict[str, list[int]]:
    """Failure-level indices per bucket under ``cfg``'s buckets; index L stands for "no level fails"."""
    out: dict[str, list[int]] = {b: [] for b in BUCKET_ORDER}
    for j in range(len(cfg.ratios) + 1):
        star = cfg.ratios[j] if j < len(cfg.ratios) else None
        out[pism_bucket(star, cfg.ratios, cfg.buckets)].append(j)
    return out


def build_corpus(
    cfg: PismConfig, profile: Profile, bucket_sizes: dict[str, dict[str, int]], seed: int, scale: float = 1.0
) -> SyntheticCorpus:
    rng = np.random.default_rng(seed)
    ratios = np.asarray(cfg.ratios, float)
    beyond = ratios[-1] + (ratios[-1] - ratios[-2] if len(ratios) > 1 else 0.1)  # "fails after the grid"
    fail_lambdas = np.append(ratios, beyond)
    levels_of = bucket_levels(cfg)
    ids, domains, intended, fail_at = [], [], [], []
    for domain, sizes in bucket_sizes.items():
        for bucket in BUCKET_ORDER:
            n = round(sizes.get(bucket, 0) * scale)
            ids += [f"sim-{domain}-{bucket}-{i:06d}" for i in range(n)]
            domains += [domain] * n
            intended += [bucket] * n
            fail_at.append(rng.choice(levels_of[bucket], size=n))
    fail_at_ = np.concatenate(fail_at)
    accuracy = rng.uniform(profile.accuracy_low, 1.0, size=len(ids))
    ratio = np.clip(profile.fail_pc / accuracy, 1e-9, 1 - 1e-9)
    center = fail_lambdas[fail_at_] + profile.width * np.log(ratio / (1 - ratio))
    pc = accuracy[:, None] / (1 + np.exp(-(center[:, None] - ratios[None, :]) / profile.width))
    return SyntheticCorpus(ids, np.array(domains), np.array(intended), pc, seed)


class SimulationEngine(GenerationEngine):
    """A ``GenerationEngine`` that answers PISM's requests from a ``SyntheticCorpus`` — a benchmark
    tool, not an engine the project ships.

    Each request is mapped back to (sample, level, realization k) from what the scorer put in it:
    ``image_id`` is the sample's content id (λ = 0) or ``curate.scoring.masks.realization_id`` of it (masked:
    ratio and k are read from it, and the id is rebuilt with that function and must be equal); the
    seed must be ``derived_seed("generate", id, ratio, seed) + k`` for the same k. A request that does
    not map (an unknown image, a seed that disagrees) comes back as an error, which fails the run:
    the mapping can be wrong only loudly. Sample i of a request is realization k + i.
    """

    name = "simulation"

    def __init__(
        self,
        corpus: SyntheticCorpus,
        samples: Sequence[Sample],
        cfg: PismConfig,
        tokens_per_generation: int = 1,
    ):
        self.corpus, self.cfg = corpus, cfg
        self.tokens = tokens_per_generation
        self.by_image = {content_id(s.images): i for i, s in enumerate(samples)}
        self.samples = list(samples)
        self.level_of = {f"{r:.6f}": j for j, r in enumerate(cfg.ratios)}
        self.calls = self.requests = 0

    def locate(self, request: GenerationRequest) -> tuple[int, int, int]:
        """(sample index, level, first realization k) of a request, or ``ValueError``."""
        cfg, rid = self.cfg, request.image_id or ""
        if rid in self.by_image:
            index, ratio_key = self.by_image[rid], f"{0.0:.6f}"
            k = None
        else:
            parts = rid.split(":")
            if len(parts) < 5 or parts[0] not in self.by_image:
                raise ValueError(f"image id {rid!r} names no sample of the simulated corpus")
            index, ratio_key, k = self.by_image[parts[0]], parts[-3], int(parts[-2])
            if realization_id(parts[0], float(ratio_key), cfg.mask, k, cfg.seed, cfg.patch_size) != rid:
                raise ValueError(f"image id {rid!r} is not a realization id under the PISM config")
        if ratio_key not in self.level_of:
            raise ValueError(f"ratio {ratio_key} is not a level of the PISM config")
        base = derived_seed("generate", self.samples[index].id, ratio_key, cfg.seed)
        first = request.seed - base
        if k is not None and (first != k or request.n != 1):
            raise ValueError(f"seed {request.seed} / n {request.n} disagree with realization {k} of {rid!r}")
        if not 0 <= first or first + request.n > cfg.k:
            raise ValueError(f"seed {request.seed} is not realization 0..{cfg.k - 1} of sample {index}")
        return index, self.level_of[ratio_key], first

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationResult]:
        self.calls += 1
        self.requests += len(requests)
        results: list[GenerationResult | None] = [None] * len(requests)
        rows: list[tuple[int, int, int, int]] = []  # (request, sample, level, k)
        for r, request in enumerate(requests):
            try:
                index, level, first = self.locate(request)
            except ValueError as err:
                results[r] = GenerationResult(error=str(err))
                continue
            rows += [(r, index, level, first + i) for i in range(request.n)]
        if rows:
            req, index, level, k = (np.array(col) for col in zip(*rows))
            ok = self.corpus.outcomes(index, level, k)
            for r, i, good in zip(req.tolist(), index.tolist(), ok.tolist()):
                answer = self.samples[i].ground_truth if good else "none"
                if results[r] is None:
                    results[r] = GenerationResult(prompt_tokens=0)
                results[r].completions.append(Completion(f"<answer>{answer}</answer>", self.tokens, "stop"))
        return results  # type: ignore[return-value]


def score_in_chunks(scorer: PismScorer, samples: Sequence[Sample], chunk: int) -> list[PismResult]:
    results: list[PismResult] = []
    for start in range(0, len(samples), chunk):
        part = scorer.score(samples[start : start + chunk])
        bad = [r for r in part if not isinstance(r, PismResult)]
        if bad:
            raise RuntimeError(f"PISM failed on {len(bad)} simulated samples: {bad[0]}")
        results += part
    return results


def simulation_setting(
    profile: Profile,
    scale: float,
    full_samples: int,
    seed: int,
    tokens_per_generation: int,
    chunk: int = 4096,
) -> dict[str, Any]:
    cfg = PismConfig(mode="early_exit")  # the project's defaults: Λ = 0.0..0.9, K = 10, τ = 0.1
    need = passes_needed(cfg.tau, cfg.k)
    corpus = build_corpus(cfg, profile, PAPER_BUCKETS, seed, scale)
    samples = corpus.samples()
    engine = SimulationEngine(corpus, samples, cfg, tokens_per_generation)
    sampling = SamplingParams(temperature=0.7, max_tokens=1024)
    started = time.perf_counter()
    early = score_in_chunks(PismScorer(engine, cfg, sampling, PromptConfig()), samples, chunk)
    early_s = time.perf_counter() - started
    counts = grid_counts(corpus.grid(cfg.k), need)
    measured = np.array([r.generations for r in early])
    derived_star = [cfg.ratios[j] if j < len(cfg.ratios) else None for j in counts["failing_level"]]
    # The full grid on a random subsample: L·K each, same λ* as early exit.
    rng = np.random.default_rng(seed + 1)
    pick = np.sort(rng.choice(len(samples), size=min(full_samples, len(samples)), replace=False))
    started = time.perf_counter()
    full = score_in_chunks(
        PismScorer(engine, dataclasses.replace(cfg, mode="full"), sampling, PromptConfig()),
        [samples[i] for i in pick],
        chunk,
    )
    full_s = time.perf_counter() - started
    checks = {
        "early_exit_count_mismatches": int((measured != counts["early_exit"]).sum()),
        "lambda_star_mismatches": sum(r.lambda_star != d for r, d in zip(early, derived_star)),
        "full_subsample": len(pick),
        "full_count_mismatches": sum(r.generations != len(cfg.ratios) * cfg.k for r in full),
        "full_lambda_star_mismatches": sum(f.lambda_star != early[i].lambda_star for f, i in zip(full, pick)),
    }
    counts["early_exit"] = measured
    buckets = np.array([r.bucket for r in early])
    by_domain = {
        d: summarize(buckets[corpus.domains == d], {p: counts[p][corpus.domains == d] for p in PROCEDURES})
        for d in PAPER_BUCKETS
    }
    realized = {
        d: {b: int(((corpus.domains == d) & (buckets == b)).sum()) for b in BUCKET_ORDER}
        for d in PAPER_BUCKETS
    }
    agree = float((buckets == corpus.intended).mean())
    return {
        "samples": len(samples),
        "scale": scale,
        "seed": seed,
        "profile": dataclasses.asdict(profile),
        "paper_buckets": PAPER_BUCKETS,
        "realized_buckets": realized,
        "realized_equals_intended": agree,
        "seconds": {"early_exit": round(early_s, 1), "full_subsample": round(full_s, 1)},
        "engine_calls": engine.calls,
        "generations_per_s": round(
            (measured.sum() + len(pick) * len(cfg.ratios) * cfg.k) / (early_s + full_s)
        ),
        "checks": checks,
        "summary": summarize(buckets, counts),
        "by_domain": by_domain,
        "totals": {p: int(counts[p].sum()) for p in PROCEDURES},
    }


def sensitivity(profiles: Sequence[Profile], seed: int, scale: float) -> list[dict[str, Any]]:
    """Overall ratios under other Pc profiles, from the outcome grid alone (the derivation equals the
    scheduler's count — checked on the main profile)."""
    cfg = PismConfig()
    need = passes_needed(cfg.tau, cfg.k)
    rows = []
    for profile in profiles:
        corpus = build_corpus(cfg, profile, PAPER_BUCKETS, seed, scale)
        counts = grid_counts(corpus.grid(cfg.k), need)
        (total,) = [r for r in summarize(["all"] * len(corpus), counts) if r["bucket"] == "all"]
        rows.append(
            {
                **dataclasses.asdict(profile),
                **{p: total[p] for p in PROCEDURES},
                "early_over_bound": total["early_over_bound"],
                "full_over_early": total["full_over_early"],
                "released_over_early": total["released_over_early"],
            }
        )
    return rows


def projection(
    summary: list[dict[str, Any]], samples: int, tokens_per_generation: float, tokens_per_s: float
) -> dict[str, Any]:
    (total,) = [r for r in summary if r["bucket"] == "all"]
    out: dict[str, Any] = {
        "samples": samples,
        "tokens_per_generation": tokens_per_generation,
        "tokens_per_s_per_gpu": tokens_per_s,
    }
    for proc in PROCEDURES:
        generations = total[proc] * samples
        out[proc] = {
            "generations": round(generations),
            "gpu_hours": generations * tokens_per_generation / tokens_per_s / 3600,
        }
    return out


# ---- output ------------------------------------------------------------------------------------


def plot(toy: dict[str, Any], sim: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("toy model, toy corpus (real engine)", toy["summary"])]
    panels += [
        (f"simulation: {d} ({sum(sim['realized_buckets'][d].values()):,} samples)", rows)
        for d, rows in sim["by_domain"].items()
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), sharey=True)
    width = 0.2
    for ax, (title, rows) in zip(axes, panels):
        xs = np.arange(len(rows))
        for n, proc in enumerate(PROCEDURES):
            values = [r[proc] for r in rows]
            bars = ax.bar(xs + (n - 1.5) * width, values, width, label=proc, color=f"C{n}")
            if proc == "early_exit":
                ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(xs, [f"{r['bucket']}\nn={r['samples']}" for r in rows], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("generations per sample (mean)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(PROCEDURES), fontsize=9)
    fig.suptitle("PISM cost by bucket: certification bound, early exit, released procedure, full grid")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy-samples", type=int, default=40)
    parser.add_argument("--toy-seed", type=int, default=0, help="toy corpus seed")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the paper's 47,766 samples simulated"
    )
    parser.add_argument(
        "--full-samples", type=int, default=10000, help="simulated samples also run on the full grid"
    )
    parser.add_argument("--sim-seed", type=int, default=0)
    parser.add_argument("--accuracy-low", type=float, default=Profile.accuracy_low)
    parser.add_argument("--width", type=float, default=Profile.width)
    parser.add_argument("--fail-pc", type=float, default=Profile.fail_pc)
    parser.add_argument(
        "--tokens-per-generation",
        type=float,
        default=300.0,
        help="assumed mean generated tokens per PISM answer of Qwen2.5-VL-7B (<think>…<answer>)",
    )
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=2000.0,
        help="assumed generated tokens/s of one H100 serving Qwen2.5-VL-7B with vLLM, with a "
        "fresh ~1k-token image prefill per generation (every mask is a new image)",
    )
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="10 toy samples, 5%% of the simulated corpus")
    args = parser.parse_args()
    if args.quick:
        args.toy_samples, args.scale, args.full_samples = 10, 0.05, 300
    profile = Profile(args.accuracy_low, args.width, args.fail_pc)
    started = time.perf_counter()
    print(f"PISM cost: toy ({args.toy_samples} samples, real transformers engine) ...", flush=True)
    toy = toy_setting(args.toy_samples, args.toy_seed)
    print(
        f"  full grid {toy['seconds']['full']} s, early exit {toy['seconds']['early_exit']} s; checks {toy['checks']}",
        flush=True,
    )
    print(f"simulation ({args.scale:g} × 47,766 samples, real PismScorer, SimulationEngine) ...", flush=True)
    sim = simulation_setting(
        profile, args.scale, args.full_samples, args.sim_seed, round(args.tokens_per_generation)
    )
    print(
        f"  early exit {sim['seconds']['early_exit']} s, full subsample {sim['seconds']['full_subsample']} s "
        f"({sim['generations_per_s']} generations/s through the scheduler); checks {sim['checks']}",
        flush=True,
    )
    profiles = [Profile(a, w, profile.fail_pc) for a in (0.3, 0.5, 0.8) for w in (0.01, 0.03, 0.06)]
    sens = sensitivity(profiles, args.sim_seed, min(args.scale, 0.25))
    paper_total = sum(sum(v.values()) for v in PAPER_BUCKETS.values())
    proj = projection(sim["summary"], paper_total, args.tokens_per_generation, args.tokens_per_s)
    checks_ok = (
        not any(v for k, v in toy["checks"].items() if k != "grid_matches_full_counts")
        and toy["checks"]["grid_matches_full_counts"]
        and not any(v for k, v in sim["checks"].items() if k != "full_subsample")
    )
    out_dir = Path(args.out_dir)
    suffix = "_quick" if args.quick else ""
    payload = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "toy": toy,
        "simulation": sim,
        "sensitivity": sens,
        "projection": proj,
        "checks_ok": checks_ok,
        "seconds": round(time.perf_counter() - started, 1),
    }
    json_path = write_results(f"pism_cost{suffix}", payload, out_dir)
    png_path = out_dir / f"pism_cost{suffix}.png"
    plot(toy, sim, png_path)

    print(f"\nresults: {json_path}, {png_path}")
    print("\nsensitivity (overall, derived from the outcome grid):")
    print(
        table(
            ["acc_low", "width", "bound", "early", "released", "early/bound", "full/early", "released/early"],
            [
                [
                    r["accuracy_low"],
                    r["width"],
                    r["bound"],
                    r["early_exit"],
                    r["released"],
                    r["early_over_bound"],
                    r["full_over_early"],
                    r["released_over_early"],
                ]
                for r in sens
            ],
        )
    )
    print(
        f"\nprojection for Orsta-47k ({paper_total:,} samples), ASSUMING {args.tokens_per_generation:g} generated "
        f"tokens per generation and {args.tokens_per_s:g} generated tokens/s per H100 (not measured here):"
    )
    print(
        table(
            ["procedure", "generations", "GPU-hours"],
            [[p, f"{proj[p]['generations']:,}", proj[p]["gpu_hours"]] for p in PROCEDURES],
            floats="{:.1f}",
        )
    )
    print(f"\ntoy model ({toy['samples']} samples, model {toy['toy_model_key']}): generations per sample")
    print(bucket_table(toy["summary"], "bucket"))
    for domain, rows in sim["by_domain"].items():
        print(f"\nsimulation, {domain}: generations per sample (profile {dataclasses.asdict(profile)})")
        print(bucket_table(rows, "bucket"))
    (t_all,) = [r for r in toy["summary"] if r["bucket"] == "all"]
    (s_all,) = [r for r in sim["summary"] if r["bucket"] == "all"]
    print(f"\nall checks passed: {checks_ok}")
    print(
        table(
            ["setting", "early/bound (goal <= 1.3)", "full/early (goal >= 4)", "released/early"],
            [
                ["toy", t_all["early_over_bound"], t_all["full_over_early"], t_all["released_over_early"]],
                [
                    "simulation",
                    s_all["early_over_bound"],
                    s_all["full_over_early"],
                    s_all["released_over_early"],
                ],
            ],
        )
    )
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
