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

import math
from typing import Any, Optional

import torch

from curate.attention_probe import ProbeResult
from curate.config import CmabThresholds

__all__ = [
    "CMAB_VARIANTS",
    "CmabError",
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


def cmab_bucket(rho: Optional[float], correct: bool, thresholds: CmabThresholds) -> str:
    """easy | medium | hard | unsolved: hard in [hard_low, hard_high], medium within
    [easy_low, easy_high] around it, easy outside; unsolved when no response was correct."""
    if not correct:
        return "unsolved"
    if rho is None or math.isnan(rho):
        raise ValueError("a correctly answered sample needs a ρ̄ to be bucketed")
    t = thresholds
    if t.hard_low <= rho <= t.hard_high:
        return "hard"
    if t.easy_low <= rho < t.hard_low or t.hard_high < rho <= t.easy_high:
        return "medium"
    return "easy"
