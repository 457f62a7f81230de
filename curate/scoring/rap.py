"""RAP's CDE and ACE (method.md §4) for batches of samples; DRM is a selection rule (curate select).

CDE (Causal Discrepancy Estimator): M rollouts with the image and M with the image removed from the
prompt, D = acc_img − acc_txt: a sample the model answers as well without its image teaches nothing
about looking. The image rollouts are defined as PISM's λ = 0 attempts k = 0 … M−1 (the same prompt,
sampling and seeds, ``pism.attempt_seed`` with ``pism.seed``), so when PISM runs in the same pass its
attempts are taken from the batch context and only the missing ones are generated (early exit often
stops λ = 0 at its first correct answer); the result is the same either way. The text-only rollouts
are RAP's own.

ACE (Attention Confidence Estimator): one image rollout (``rap.ace.response``) is teacher-forced through
the attention probe, which returns only the final layer's response→response block; ``curate.scoring.ace``
turns it into ψ and the flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curate.config import PromptConfig, RapConfig
from curate.engines.base import GenerationEngine, GenerationRequest, SamplingParams
from curate.grading import GradingOptions, grade
from curate.images import content_id
from curate.schema import IMAGE_PLACEHOLDER
from curate.scoring.ace import AceScore, ace_score
from curate.scoring.masks import derived_seed
from curate.scoring.pism import attempt_seed
from curate.scoring.probing import probe_responses, response_ids, vision_tokens_in
from curate.scoring.prompts import build_messages
from curate.scoring.sample import Sample
from curate.scoring.stage import PROBE_BATCH, BatchContext, Resources, Rollout

if TYPE_CHECKING:
    from curate.engines.transformers_engine import TransformersEngine

__all__ = ["RapResult", "RapScorer", "text_only_question"]


@dataclass
class RapResult:
    img_correct: int
    img_attempts: int
    img_reused: int
    txt_correct: int
    txt_attempts: int
    generations: int
    tokens: int
    ace: AceScore | None = None

    @property
    def cde(self) -> float:
        """D = acc_img − acc_txt."""
        return self.img_correct / self.img_attempts - self.txt_correct / self.txt_attempts

    def columns(self) -> dict[str, Any]:
        """The row's ``schema.RAP_SCHEMA`` columns."""
        out = {
            "rap_img_correct": self.img_correct,
            "rap_img_attempts": self.img_attempts,
            "rap_img_reused": self.img_reused,
            "rap_txt_correct": self.txt_correct,
            "rap_txt_attempts": self.txt_attempts,
            "rap_cde": self.cde,
            "rap_generations": self.generations,
            "rap_tokens": self.tokens,
        }
        if self.ace is not None:
            out.update(self.ace.columns())
        return out


def text_only_question(question: str) -> str:
    """The question with its image placeholders taken out: what CDE asks without the image."""
    return " ".join(part.strip() for part in question.split(IMAGE_PLACEHOLDER) if part.strip())


@dataclass
class _Plan:
    index: int
    image: GenerationRequest  # the image prompt; n, seed: the image rollouts still to generate
    text: GenerationRequest
    reused: list[Rollout]


class RapScorer:
    """CDE and (optionally) ACE over batches of samples on one engine."""

    reports_progress = False

    def __init__(
        self,
        engine: GenerationEngine,
        cfg: RapConfig,
        sampling: SamplingParams,
        prompt: PromptConfig,
        *,
        pism_seed: int,
        grading: GradingOptions | None = None,
        probe_engine: Callable[[], TransformersEngine] | None = None,
        probe_batch: int = PROBE_BATCH,
    ):
        if cfg.ace.enabled and probe_engine is None:
            raise ValueError("rap.ace.enabled needs a probe engine (a transformers model)")
        self.engine = engine
        self.cfg = cfg
        # ACE probes the generated token ids, which come with log-probabilities.
        self.sampling = dataclasses.replace(sampling, logprobs=cfg.ace.enabled or sampling.logprobs)
        self.prompt = prompt
        self.pism_seed = pism_seed
        self.grading = grading
        self.probe_engine = probe_engine
        self.probe_batch = probe_batch

    @classmethod
    def from_resources(cls, resources: Resources) -> RapScorer:
        cfg = resources.cfg
        return cls(
            resources.engine,
            cfg.rap,
            resources.sampling,
            cfg.prompt,
            pism_seed=cfg.pism.seed,
            grading=resources.grading,
            probe_engine=lambda: resources.probe_engine,
        )

    def columns(
        self, samples: Sequence[Sample], context: BatchContext, progress: Callable[[int], None] | None = None
    ) -> list[dict[str, Any] | str]:
        """The stage's columns per sample (``curate.scoring.stage``)."""
        results = self.score(samples, context.unmasked_rollouts)
        return [r if isinstance(r, str) else r.columns() for r in results]

    def score(
        self, samples: Sequence[Sample], reusable: Mapping[str, Sequence[Rollout]] | None = None
    ) -> list[RapResult | str]:
        """One result per sample, or an error message. ``reusable``: sample id → PISM's λ = 0 rollouts
        in attempt order, the first M of which are taken instead of generated."""
        m = self.cfg.m
        out: list[RapResult | str | None] = [None] * len(samples)
        plans: list[_Plan] = []
        for i, s in enumerate(samples):
            question = text_only_question(s.question)
            if not question:
                out[i] = (
                    "the question has no text besides its image placeholder(s): nothing to ask without the image"
                )
                continue
            try:
                image_messages = build_messages(s.question, len(s.images), self.prompt)
                text_messages = build_messages(question, 0, self.prompt)
            except ValueError as err:
                out[i] = str(err)
                continue
            reused = list((reusable or {}).get(s.id, ()))[:m]
            image = GenerationRequest(
                image_messages,
                s.images,
                seed=attempt_seed(s.id, 0.0, self.pism_seed) + len(reused),
                n=m - len(reused),
                image_id=content_id(s.images),
            )
            text = GenerationRequest(
                text_messages, [], seed=derived_seed("rap-text", s.id, self.cfg.seed), n=m
            )
            plans.append(_Plan(i, image, text, reused))
        requests = [p.image for p in plans if p.image.n > 0] + [p.text for p in plans]
        generated = iter(self.engine.generate(requests, self.sampling))
        image_results = {p.index: next(generated) for p in plans if p.image.n > 0}
        text_results = {p.index: next(generated) for p in plans}
        to_probe: list[tuple[_Plan, Rollout]] = []
        for p in plans:
            s = samples[p.index]
            results = [r for r in (image_results.get(p.index), text_results[p.index]) if r is not None]
            failed = next((r.error for r in results if r.error is not None), None)
            if failed is not None:
                out[p.index] = f"engine: {failed}"
                continue
            new_image = (
                [self._rollout(s, c) for c in image_results[p.index].completions]
                if p.index in image_results
                else []
            )
            text = [self._rollout(s, c) for c in text_results[p.index].completions]
            rollouts = p.reused + new_image
            made = new_image + text
            out[p.index] = RapResult(
                img_correct=sum(r.correct for r in rollouts),
                img_attempts=len(rollouts),
                img_reused=len(p.reused),
                txt_correct=sum(r.correct for r in text),
                txt_attempts=len(text),
                generations=len(made),
                tokens=sum(r.num_tokens for r in made),
            )
            if self.cfg.ace.enabled:
                chosen = self._ace_response(rollouts)
                if chosen is not None:
                    to_probe.append((p, chosen))
        if to_probe:
            self._ace(to_probe, out)
        return out  # type: ignore[return-value]

    def _rollout(self, s: Sample, completion: Any) -> Rollout:
        ok = grade(
            s.task, completion.text, s.ground_truth, s.verifier, options=self.grading, image_size=s.image_size
        ).correct
        ids = tuple(completion.token_ids) if completion.token_ids else None
        return Rollout(completion.text, completion.num_tokens, ok, ids)

    def _ace_response(self, rollouts: Sequence[Rollout]) -> Rollout | None:
        if self.cfg.ace.response == "first":
            return rollouts[0] if rollouts else None
        return next((r for r in rollouts if r.correct), None)

    def _ace(self, to_probe: list[tuple[_Plan, Rollout]], out: list) -> None:
        engine = self.probe_engine()  # type: ignore[misc]
        ace = self.cfg.ace
        items = []
        for p, rollout in to_probe:
            ids = response_ids(engine, rollout.text, rollout.token_ids)
            vision = vision_tokens_in(engine, ids)
            if vision:
                out[p.index] = (
                    f"the ACE response contains vision token id(s) {vision}; the probe cannot score it"
                )
            elif ids:
                items.append((p, ids))
        probe_prompts = [(dataclasses.replace(p.image, n=1), ids) for p, ids in items]
        probed = probe_responses(
            engine,
            probe_prompts,
            batch=self.probe_batch,
            layers=[],
            chunk=ace.probe_chunk,
            response_attention="mean" if ace.heads == "mean" else "heads",
        )
        for (p, _), result in zip(items, probed):
            out[p.index].ace = ace_score(
                result.response_attention,
                sigma=ace.sigma,
                threshold=ace.threshold,
                form=ace.form,
                heads=ace.heads,
            )
