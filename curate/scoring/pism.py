"""PISM — Progressive Image Semantic Masking (method.md §1): difficulty from how much of the image the
model can lose before it stops answering correctly.

For each mask ratio λ in Λ and realization k < K, the model answers the question on the masked image;
δ = 1 when the shared grader (``curate.grading``) says the answer is correct. Pc(λ) = mean δ over the
K realizations, λ* = the smallest λ with Pc(λ) < τ, and the bucket follows from λ*.

Two schedules give the same λ* and bucket for the same realizations (the masks and the generation
seeds are pure functions of (sample id, λ, k, seed), and engines give sample i of a request seed+i):

- ``full`` evaluates the whole |Λ|×K grid (exact Pc(λ) curves, 100 generations per sample by default).
- ``early_exit`` walks the levels in ascending λ and stops a level as soon as its outcome is decided:
  with K = 10 and τ = 0.1 a level passes at its first correct answer and fails after ten wrong ones,
  so certifying λ* = Λ[j] costs j + 10 generations at best. Pc is then known exactly only on fully
  evaluated levels (null elsewhere); ``pism_attempts``/``pism_correct`` keep what was observed.

Work goes to the engine in waves across all samples of a batch, so one engine call serves many
samples' attempts at once. Attempts at λ = 0 share one image, so they travel as one request with
``n`` samples (one prefill); masked realizations are distinct images with distinct ids.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from curate.config import PismBuckets, PismConfig, PromptConfig
from curate.engines.base import GenerationEngine, GenerationRequest, SamplingParams
from curate.grading import GradingOptions, grade
from curate.images import content_id
from curate.scoring.masks import derived_seed, mask_image, realization_id
from curate.scoring.prompts import build_messages
from curate.scoring.sample import Sample
from curate.scoring.stage import BatchContext, Resources, Rollout

log = logging.getLogger(__name__)


@dataclass
class PismResult:
    pc: list[float | None]
    attempts: list[int]
    correct: list[int]
    generations: int
    tokens: int
    lambda_star: float | None
    bucket: str
    answers: list[str] | None = None
    # The λ = 0 attempts in k order (not a column: later stages reuse them, BatchContext).
    unmasked: list[Rollout] = field(default_factory=list)

    def columns(self) -> dict[str, Any]:
        """The row's ``schema.PISM_SCHEMA`` columns."""
        return {"pism_pc": self.pc, "pism_attempts": self.attempts, "pism_correct": self.correct,
                "pism_generations": self.generations, "pism_tokens": self.tokens,
                "pism_lambda_star": self.lambda_star, "pism_bucket": self.bucket, "pism_answers": self.answers}


def attempt_seed(sample_id: str, ratio: float, seed: int) -> int:
    """The generation seed of realization k = 0 at mask ratio ``ratio``; realization k uses this + k."""
    return derived_seed("generate", sample_id, f"{ratio:.6f}", seed)


def passes_needed(tau: float, k: int) -> int:
    """Correct answers out of K for Pc(λ) = c / K to reach τ (1 for K = 10, τ = 0.1)."""
    return max(1, math.ceil(round(tau * k, 9)))


def pism_bucket(lambda_star: float | None, ratios: Sequence[float], buckets: PismBuckets) -> str:
    """unsolved if the unmasked level fails; else hard / medium / easy by λ* (method.md §1)."""
    if lambda_star is None:
        return "easy"
    if lambda_star == ratios[0]:
        return "unsolved"
    if lambda_star <= buckets.hard_max:
        return "hard"
    if lambda_star >= buckets.easy_from:
        return "easy"
    return "medium"


@dataclass
class _State:
    sample: Sample
    messages: list[dict]
    image_id: str
    attempts: list[int]
    correct: list[int]
    level: int = 0
    generations: int = 0
    tokens: int = 0
    answers: list[str] = field(default_factory=list)
    unmasked: list[Rollout] = field(default_factory=list)
    done: bool = False
    error: str | None = None


class PismScorer:
    """Runs PISM over batches of samples on one engine."""

    reports_progress = True

    def __init__(
        self,
        engine: GenerationEngine,
        cfg: PismConfig,
        sampling: SamplingParams,
        prompt: PromptConfig,
        grading: GradingOptions | None = None,
    ):
        self.engine = engine
        self.cfg = cfg
        self.grading = grading
        self.sampling = sampling
        self.prompt = prompt
        self.need = passes_needed(cfg.tau, cfg.k)

    @classmethod
    def from_resources(cls, resources: Resources) -> "PismScorer":
        cfg = resources.cfg
        # RAP's ACE probes λ = 0 rollouts it takes from PISM: keep their generated token ids.
        keep_ids = cfg.rap.enabled and cfg.rap.ace.enabled
        sampling = dataclasses.replace(resources.sampling, logprobs=True) if keep_ids else resources.sampling
        return cls(resources.engine, cfg.pism, sampling, cfg.prompt, resources.grading)

    def columns(
        self, samples: Sequence[Sample], context: BatchContext, progress: Callable[[int], None] | None = None
    ) -> list[dict[str, Any] | str]:
        """The stage's columns per sample (``curate.scoring.stage``); leaves the λ = 0 rollouts in
        ``context``."""
        out: list[dict[str, Any] | str] = []
        for s, result in zip(samples, self.score(samples, progress)):
            if isinstance(result, PismResult):
                context.unmasked_rollouts[s.id] = result.unmasked
                out.append(result.columns())
            else:
                out.append(result)
        return out

    def score(
        self, samples: Sequence[Sample], progress: Callable[[int], None] | None = None
    ) -> list[PismResult | str]:
        """One result per sample: a ``PismResult``, or an error message for a sample that failed."""
        levels = len(self.cfg.ratios)
        states: list[_State] = []
        for s in samples:
            state = _State(s, [], "", [0] * levels, [0] * levels)
            try:
                state.messages = build_messages(s.question, len(s.images), self.prompt)
                state.image_id = content_id(s.images)
            except Exception as err:
                state.error, state.done = f"{type(err).__name__}: {err}", True
            states.append(state)
        done_before = sum(st.done for st in states)
        if progress and done_before:
            progress(done_before)
        while True:
            active = [st for st in states if not st.done]
            if not active:
                break
            wave: list[tuple[_State, int, list[int]]] = []  # (state, level, realization indices)
            for st in active:
                ks = self._next_attempts(st)
                if self.cfg.ratios[st.level] == 0:
                    wave.append((st, st.level, ks))
                else:
                    wave.extend((st, st.level, [k]) for k in ks)
            requests = [self._request(st, level, ks) for st, level, ks in wave]
            results = self.engine.generate(requests, self.sampling)
            for (st, level, ks), result in zip(wave, results):
                if st.error is not None:
                    continue
                if result.error is not None:
                    st.error, st.done = f"engine: {result.error}", True
                    continue
                for completion in result.completions:
                    ok = grade(st.sample.task, completion.text, st.sample.ground_truth, st.sample.verifier,
                               options=self.grading, image_size=st.sample.image_size).correct
                    st.attempts[level] += 1
                    st.correct[level] += int(ok)
                    st.generations += 1
                    st.tokens += completion.num_tokens
                    if self.cfg.keep_answers:
                        st.answers.append(completion.text)
                    if self.cfg.ratios[level] == 0:
                        st.unmasked.append(Rollout(completion.text, completion.num_tokens, ok,
                                                   tuple(completion.token_ids) if completion.token_ids else None))
            finished = 0
            for st in active:
                if not st.done:
                    self._advance(st)
                finished += st.done
            if progress and finished:
                progress(finished)
        return [self._result(st) for st in states]

    def _next_attempts(self, st: _State) -> list[int]:
        start = st.attempts[st.level]
        width = self.cfg.k - start if self.cfg.mode == "full" else self.cfg.wave_attempts
        return list(range(start, min(self.cfg.k, start + width)))

    def _request(self, st: _State, level: int, ks: list[int]) -> GenerationRequest:
        cfg = self.cfg
        ratio = cfg.ratios[level]
        base_seed = attempt_seed(st.sample.id, ratio, cfg.seed)
        if ratio == 0:
            # Every attempt sees the same image: one request, n samples, seeds base + k.
            return GenerationRequest(
                st.messages, st.sample.images, seed=base_seed + ks[0], n=len(ks), image_id=st.image_id
            )
        (k,) = ks
        images = [
            mask_image(img, ratio, cfg.mask, sample_id=st.sample.id, k=k, seed=cfg.seed, image_index=i,
                       patch_size=cfg.patch_size)
            for i, img in enumerate(st.sample.images)
        ]
        return GenerationRequest(
            st.messages, images, seed=base_seed + k, n=1,
            image_id=realization_id(st.image_id, ratio, cfg.mask, k, cfg.seed, cfg.patch_size),
        )

    def _advance(self, st: _State) -> None:
        """Decide the current level if its outcome is known, and move on or stop."""
        level, k = st.level, self.cfg.k
        tried, right = st.attempts[level], st.correct[level]
        if self.cfg.mode == "full":
            decided = tried == k
        else:
            decided = right >= self.need or right + (k - tried) < self.need
        if not decided:
            return
        failed = right < self.need
        if (failed and self.cfg.mode == "early_exit") or level + 1 == len(self.cfg.ratios):
            st.done = True
        else:
            st.level += 1

    def _result(self, st: _State) -> PismResult | str:
        if st.error is not None:
            return st.error
        cfg = self.cfg
        failing = [j for j, (a, c) in enumerate(zip(st.attempts, st.correct)) if a == cfg.k and c < self.need]
        lambda_star = cfg.ratios[failing[0]] if failing else None
        return PismResult(
            pc=[c / cfg.k if a == cfg.k else None for a, c in zip(st.attempts, st.correct)],
            attempts=list(st.attempts),
            correct=list(st.correct),
            generations=st.generations,
            tokens=st.tokens,
            lambda_star=lambda_star,
            bucket=pism_bucket(lambda_star, cfg.ratios, cfg.buckets),
            answers=list(st.answers) if cfg.keep_answers else None,
            unmasked=list(st.unmasked),
        )
