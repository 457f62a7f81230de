"""RAP's Attention Confidence Estimator (method.md §4) from one response's final-layer attention.

``block[i, j]`` is the attention weight response token ``i``'s query puts on response token ``j``
(``j <= i``; ``curate.scoring.attention_probe``'s ``response_attention``). For each token ``j``,
ψ_j = Π_{i≥j} σ·A_ij: the attention it keeps receiving from every later token, σ-scaled so that a
token taking more than 1/σ of each later query's weight grows ψ. The product runs over n − j factors,
thousands for a long response, so it is summed in log space; and because late tokens have few factors
(the last one's ψ is σ·A_{n−1,n−1}, its own self-attention), a length-normalised form ψ_j^(1/(n−j))
(the geometric mean of the factors) is offered beside the paper's raw one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AceScore", "ace_score", "log_psi", "reduce_heads"]


@dataclass(frozen=True)
class AceScore:
    log_psi: float  # max_j log ψ_j
    log_psi_norm: float  # max_j log ψ_j / (n − j)
    token: int  # the j whose ψ (of the form that flags) is largest
    flagged: bool

    def columns(self) -> dict[str, object]:
        return {
            "rap_ace_log_psi": self.log_psi,
            "rap_ace_log_psi_norm": self.log_psi_norm,
            "rap_ace_token": self.token,
            "rap_ace_flag": self.flagged,
        }


def reduce_heads(block: Tensor, heads: str) -> Tensor:
    """[heads, n, n] → [n, n] by ``mean`` or ``max``; an [n, n] block (already head-averaged) as is."""
    if block.dim() == 2:
        if heads != "mean":
            raise ValueError(f"a head-averaged block cannot be reduced by {heads!r}")
        return block
    if heads == "mean":
        return block.mean(dim=0)
    if heads == "max":
        return block.amax(dim=0)
    raise ValueError(f"heads must be 'mean' or 'max', got {heads!r}")


def log_psi(block: Tensor, sigma: float) -> Tensor:
    """log ψ_j for every response token j of an [n, n] block, float64 (−inf where some A_ij is 0)."""
    if block.dim() != 2 or block.shape[0] != block.shape[1]:
        raise ValueError(f"expected a square [n, n] block, got {tuple(block.shape)}")
    a = block.double()
    n = a.shape[0]
    later = torch.ones(n, n, dtype=torch.bool, device=a.device).tril()  # row i >= column j
    factors = torch.where(later, math.log(sigma) + torch.log(a), torch.zeros_like(a))
    return factors.sum(dim=0)


def ace_score(
    block: Tensor, *, sigma: float, threshold: float, form: str = "raw", heads: str = "mean"
) -> AceScore:
    """ACE of one response: ``block`` is [n, n] (head mean) or [heads, n, n]."""
    if form not in ("raw", "normalized"):
        raise ValueError(f"form must be 'raw' or 'normalized', got {form!r}")
    raw = log_psi(reduce_heads(block, heads), sigma)
    n = raw.shape[0]
    norm = raw / torch.arange(n, 0, -1, dtype=raw.dtype, device=raw.device)
    decisive = raw if form == "raw" else norm
    token = int(decisive.argmax())
    return AceScore(
        log_psi=float(raw.max()),
        log_psi_norm=float(norm.max()),
        token=token,
        flagged=bool(decisive[token] > math.log(threshold)),
    )
