"""CMAB ratio and buckets (method.md §2) from the attention probe's masses.

Two variants, because the paper and its released code disagree and the published thresholds come
from the code:

``code`` (default): one decoder layer (``layer``, default ``round(L * 20 / 28)``: index 20 of 28 for
Qwen2.5-VL-7B), head-averaged attention, per response column the MEAN weight per visual token and the
MEAN per text token, text = positions before the first visual token. Generate's prefill step is
skipped: with the probe's columns (column ``t`` = the query that produced response token ``t``) that
is column 0, so columns ``1 .. n-1`` count; they are exactly the released code's
``attentions[1:]`` of ``generate(output_attentions=True)``. As there, a column whose text mean is 0
is left out of both sums. ρ̄ = Σ_t mean_img / Σ_t mean_txt.

``paper``: decoder layers 2 .. L-1 counted from 1, i.e. 0-based indices ``1 .. L-2`` (first and last
layer excluded; needs L >= 3); S_img, S_txt are SUMS of weight over visual / text tokens (text = all
non-visual positions in the query's context); ρ(l, t) = S_img / S_txt; ρ_t = exp(mean_l log(ρ(l, t)
+ 1e-8)); ρ̄ = the arithmetic mean of ρ_t over every generated token, so all ``n`` columns count
(generate's prefill row produced the first token).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from curate.config import CmabConfig, PromptConfig
from curate.engines.base import GenerationEngine, GenerationRequest, SamplingParams
from curate.grading import GradingOptions, grade
from curate.images import content_id
from curate.scoring.attention_probe import ProbeResult, decoder_layers

# cmab_bucket lives beside the calibration, torch-free, so that report and select apply it without a
# model stack; re-exported here.
from curate.scoring.cmab_calibration import cmab_bucket
from curate.scoring.masks import derived_seed
from curate.scoring.probing import probe_responses, response_ids, vision_tokens_in
from curate.scoring.prompts import build_messages, without_placeholder
from curate.scoring.stage import PROBE_BATCH

if TYPE_CHECKING:
    from curate.engines.transformers_engine import TransformersEngine
    from curate.scoring.sample import Sample
    from curate.scoring.stage import BatchContext, Resources

__all__ = [
    "CMAB_VARIANTS",
    "CmabError",
    "CmabResult",
    "CmabScorer",
    "cmab_bucket",
    "cmab_layers",
    "cmab_probe_options",
    "cmab_rho",
]

CMAB_VARIANTS = ("code", "paper")
# The released code's layer: index 20 of Qwen2.5-VL-7B's 28 decoder layers.
_CODE_LAYER_FRACTION = 20 / 28
_TEXT_SPAN = {"code": "before_image", "paper": "all"}
_LOG_EPS = 1e-8


class CmabError(ValueError):
    """ρ̄ is undefined for this sample (no image tokens, response too short, no text attention)."""


def _check_variant(variant: str) -> None:
    if variant not in CMAB_VARIANTS:
        raise ValueError(f"CMAB variant must be one of {list(CMAB_VARIANTS)}, got {variant!r}")


def cmab_layers(variant: str, num_layers: int, layer: Optional[int] = None) -> list[int]:
    """0-based decoder layers a variant reads (``layer`` overrides the code variant's default)."""
    _check_variant(variant)
    if variant == "code":
        index = round(num_layers * _CODE_LAYER_FRACTION) if layer is None else int(layer)
        if not 0 <= index < num_layers:
            raise ValueError(f"cmab.layer {index} out of range for {num_layers} decoder layers")
        return [index]
    if layer is not None:
        raise ValueError("cmab.layer applies to the code variant only (paper uses layers 2..L-1)")
    if num_layers < 3:
        raise ValueError(f"the paper variant needs at least 3 decoder layers, the model has {num_layers}")
    return list(range(1, num_layers - 1))


def cmab_probe_options(variant: str, num_layers: int, layer: Optional[int] = None) -> dict[str, Any]:
    """Keyword arguments for ``probe_attention`` that compute exactly what ``variant`` reads."""
    return {"layers": cmab_layers(variant, num_layers, layer), "text_span": _TEXT_SPAN[variant]}


def _rows(result: ProbeResult, layers: list[int]) -> list[int]:
    missing = [i for i in layers if i not in result.layers]
    if missing:
        raise ValueError(f"the probe did not compute layers {missing} (it has {list(result.layers)})")
    return [result.layers.index(i) for i in layers]


def cmab_rho(
    result: ProbeResult,
    variant: str = "code",
    *,
    num_layers: int,
    layer: Optional[int] = None,
    skip_prefill: Optional[bool] = None,
) -> float:
    """ρ̄ of one probed response. ``skip_prefill`` defaults to the variant's rule (code: True)."""
    _check_variant(variant)
    if result.text_span != _TEXT_SPAN[variant]:
        raise ValueError(
            f"the {variant} variant reads text_span={_TEXT_SPAN[variant]!r}, "
            f"the probe used {result.text_span!r}"
        )
    if result.image_tokens == 0:
        raise CmabError("the prompt has no image tokens")
    skip = (variant == "code") if skip_prefill is None else skip_prefill
    first = 1 if skip else 0
    if result.response_length <= first:
        raise CmabError(f"response of {result.response_length} token(s) leaves no token to score")
    rows = _rows(result, cmab_layers(variant, num_layers, layer))
    if variant == "code":
        image = result.image_mean[rows[0], first:].double()
        text = result.text_mean[rows[0], first:].double()
        keep = text != 0
        total_text = float(text[keep].sum())
        if total_text == 0:
            raise CmabError("no attention on text tokens before the image")
        return float(image[keep].sum()) / total_text
    image = result.image_mass[rows, first:].double()
    text = result.text_mass[rows, first:].double()
    ratio = image / text  # text mass is > 0: the query's own position is text
    per_token = torch.exp(torch.log(ratio + _LOG_EPS).mean(dim=0))
    rho = float(per_token.mean())
    if not math.isfinite(rho):
        raise CmabError(f"ρ̄ is not finite ({rho})")
    return rho


# ---- the flow: generate, grade, probe ---------------------------------------------------------


@dataclass
class CmabResult:
    rho: float | None
    bucket: str
    variant: str
    layers: list[int]
    correct: int
    generations: int

    def columns(self) -> dict[str, Any]:
        """The row's ``schema.CMAB_SCHEMA`` columns."""
        return {"cmab_rho": self.rho, "cmab_bucket": self.bucket, "cmab_variant": self.variant,
                "cmab_layers": self.layers, "cmab_correct": self.correct, "cmab_generations": self.generations}


class CmabScorer:
    """CMAB for batches of samples: K responses from any engine, graded; the probe on correct ones.

    Generation may run on any backend (vLLM on clusters); the probe always runs in transformers on
    ``probe_engine``'s model, teacher-forcing the generated token ids (vLLM exposes no attention).
    """

    reports_progress = False

    def __init__(
        self,
        engine: GenerationEngine,
        probe_engine: "TransformersEngine",
        cfg: CmabConfig,
        sampling: SamplingParams,
        prompt: PromptConfig,
        probe_batch: int = 8,
        grading: GradingOptions | None = None,
    ):
        self.engine = engine
        self.probe_engine = probe_engine
        self.cfg = cfg
        # Token ids come with log-probabilities; the probe needs the exact generated ids.
        self.sampling = dataclasses.replace(sampling, logprobs=True)
        # The variant's own layout (code: question before the image, as its thresholds assume),
        # whatever the PISM prompt is.
        self.prompt = dataclasses.replace(prompt, image_position=cfg.prompt_layout(prompt))
        self.probe_batch = probe_batch
        self.grading = grading
        self.num_layers = len(decoder_layers(probe_engine.model))
        self.layers = cmab_layers(cfg.variant, self.num_layers, cfg.layer)

    @classmethod
    def from_resources(cls, resources: "Resources") -> "CmabScorer":
        cfg = resources.cfg
        return cls(resources.engine, resources.probe_engine, cfg.cmab, resources.sampling, cfg.prompt,
                   probe_batch=PROBE_BATCH, grading=resources.grading)

    def columns(self, samples: Sequence["Sample"], context: "BatchContext", progress: Any = None) -> list[Any]:
        """The stage's columns per sample (``curate.scoring.stage``), or an error message."""
        return [r if isinstance(r, str) else r.columns() for r in self.score(samples)]

    def score(self, samples: Sequence["Sample"]) -> list[CmabResult | str]:
        """One result per sample: a ``CmabResult``, or an error message."""
        out: list[CmabResult | str | None] = [None] * len(samples)
        requests: list[tuple[int, GenerationRequest]] = []
        for i, s in enumerate(samples):
            try:
                # One image: its place is the variant's layout, not the dataset's placeholder.
                question = without_placeholder(s.question) if len(s.images) == 1 else s.question
                messages = build_messages(question, len(s.images), self.prompt)
            except ValueError as err:
                out[i] = str(err)
                continue
            requests.append((i, GenerationRequest(messages, s.images, seed=derived_seed("cmab", s.id, self.cfg.seed),
                                                  n=self.cfg.k, image_id=content_id(s.images))))
        results = self.engine.generate([r for _, r in requests], self.sampling)
        to_probe: list[tuple[int, GenerationRequest, list[int]]] = []  # (sample, prompt, response ids)
        correct_counts: dict[int, int] = {}
        for (i, request), result in zip(requests, results):
            if result.error is not None:
                out[i] = f"engine: {result.error}"
                continue
            s = samples[i]
            good = [c for c in result.completions
                    if grade(s.task, c.text, s.ground_truth, s.verifier, options=self.grading,
                             image_size=s.image_size).correct]
            correct_counts[i] = len(good)
            if not good:
                out[i] = self._result(None, 0)
                continue
            chosen = good[:1] if self.cfg.response == "first_correct" else good
            ids = [response_ids(self.probe_engine, c.text, c.token_ids) for c in chosen]
            vision = sorted({t for response in ids for t in vision_tokens_in(self.probe_engine, response)})
            if vision:
                out[i] = f"a correct response contains vision token id(s) {vision}; the probe cannot score it"
                continue
            to_probe.extend((i, request, response) for response in ids)
        options = cmab_probe_options(self.cfg.variant, self.num_layers, self.cfg.layer)
        probed = probe_responses(self.probe_engine, [(request, ids) for _, request, ids in to_probe],
                                 batch=self.probe_batch, chunk=self.cfg.probe_chunk, **options)
        rhos: dict[int, list[float]] = {}
        failures: dict[int, str] = {}
        for (owner, _, _), result in zip(to_probe, probed):
            try:
                rhos.setdefault(owner, []).append(cmab_rho(result, self.cfg.variant, num_layers=self.num_layers,
                                                           layer=self.cfg.layer))
            except CmabError as err:
                failures[owner] = str(err)
        for i in dict.fromkeys(owner for owner, _, _ in to_probe):
            out[i] = self._result(sum(rhos[i]) / len(rhos[i]), correct_counts[i]) if i in rhos else failures[i]
        return out  # type: ignore[return-value]

    def _result(self, rho: float | None, correct: int) -> CmabResult:
        thresholds = self.cfg.thresholds[self.cfg.variant]
        return CmabResult(rho=rho, bucket=cmab_bucket(rho, correct > 0, thresholds), variant=self.cfg.variant,
                          layers=list(self.layers), correct=correct, generations=self.cfg.k)
