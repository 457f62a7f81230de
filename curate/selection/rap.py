"""RAP's selection rules (method.md §4): which rows need their image, from the ``rap_*`` columns.

Pure functions over a ``ScoreTable`` (no I/O), like ``curate.selection.rules``; see
``curate.selection.config.RapRuleConfig`` for the rules and their variants. Every row ``select_rap``
keeps or drops is counted in the record it returns, which the manifest carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from curate.config import ConfigError
from curate.selection.config import RapRuleConfig

__all__ = ["RapColumns", "select_rap"]

# The CDE columns every RAP rule reads; ACE's flag is read when present.
CDE_COLUMNS = ("rap_img_correct", "rap_img_attempts", "rap_txt_correct", "rap_txt_attempts")
ACE_FLAG = "rap_ace_flag"


@dataclass
class RapColumns:
    """Per row of the score table (rows without RAP scores: 0 of 0, never selected)."""

    img_correct: np.ndarray
    img_attempts: np.ndarray
    acc_img: np.ndarray
    cde: np.ndarray  # D = acc_img − acc_txt
    flagged: np.ndarray  # ACE flag (False where not scored)
    have_ace: bool

    @classmethod
    def of(cls, scores: Any, key: str) -> "RapColumns":
        missing = [c for c in CDE_COLUMNS if c not in scores.columns]
        if missing:
            raise ConfigError(
                f"config key '{key}.kind': rap needs the columns {missing}, which the dataset does "
                "not have: score with rap.enabled=true (configs/curate/rap.yaml)"
            )

        def counts(name: str) -> np.ndarray:
            return np.array([0 if v is None else int(v) for v in scores.columns[name]], dtype=np.int64)

        img_c, img_n, txt_c, txt_n = (counts(c) for c in CDE_COLUMNS)
        with np.errstate(divide="ignore", invalid="ignore"):
            acc_img = np.where(img_n > 0, img_c / np.maximum(img_n, 1), np.nan)
            acc_txt = np.where(txt_n > 0, txt_c / np.maximum(txt_n, 1), np.nan)
        have_ace = ACE_FLAG in scores.columns
        flags = scores.columns[ACE_FLAG] if have_ace else [None] * len(scores)
        flagged = np.array([bool(f) for f in flags], dtype=bool)
        return cls(img_c, img_n, acc_img, acc_img - acc_txt, flagged, have_ace)


def limr_similarity(acc_img: np.ndarray, mean: float) -> np.ndarray:
    """1 − (acc − μ)² / (1 − μ)²: how close a row's accuracy is to the dataset's (the released code's
    LIMR-style score with one epoch); 1 everywhere when μ = 1 (every row always solved)."""
    if mean >= 1:
        return np.ones_like(acc_img)
    return 1 - (acc_img - mean) ** 2 / (1 - mean) ** 2


def select_rap(
    scores: Any, rows: np.ndarray, cfg: RapRuleConfig, rng: np.random.Generator, key: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``rows`` (usable pool, sorted) the rule keeps, and its counts for the manifest."""
    cols = RapColumns.of(scores, key)
    drop_flagged = cfg.drops_flagged(cols.have_ace)
    if drop_flagged and not cols.have_ace:
        raise ConfigError(
            f"config key '{key}.rap.drop_ace_flagged': the dataset has no ACE scores "
            "(score with rap.ace.enabled=true, or set it false)"
        )
    scored = rows[cols.img_attempts[rows] > 0]
    m = int(cols.img_attempts[scored].max()) if len(scored) else 0
    record: dict[str, Any] = {
        "rule": cfg.rule,
        "variant": cfg.variant,
        "scored_rows": len(scored),
        "m": m,
        "ace_flagged": int(cols.flagged[scored].sum()) if cols.have_ace else None,
    }
    solved_all = cols.img_correct == cols.img_attempts
    unflagged = ~cols.flagged if drop_flagged else np.ones(len(cols.flagged), dtype=bool)
    if cfg.variant == "paper":
        cde = scored[cols.cde[scored] >= cfg.lambda_c]
    else:
        mean = float(np.mean(cols.acc_img[scored])) if len(scored) else 0.0
        similarity = limr_similarity(cols.acc_img, mean)
        cde = scored[
            (cols.cde[scored] > cfg.margin) & (similarity[scored] >= cfg.similarity) & ~solved_all[scored]
        ]
        record["mean_acc_img"] = round(mean, 6)
    record["cde_rows"] = len(cde)
    kept = cde[unflagged[cde]]
    record["ace_dropped"] = len(cde) - len(kept)
    if cfg.rule == "drm":
        kept = (
            _drm_paper(cols, scored, kept, unflagged, solved_all, rng, record)
            if cfg.variant == "paper"
            else _drm_code(cols, scored, kept, unflagged, cfg, rng, record)
        )
    record["rows_out"] = len(kept)
    return kept, record


def _drm_paper(
    cols: RapColumns,
    scored: np.ndarray,
    kept: np.ndarray,
    unflagged: np.ndarray,
    solved_all: np.ndarray,
    rng: np.random.Generator,
    record: dict[str, Any],
) -> np.ndarray:
    """Trivial rows (M of M correct) out; as many of the hardest others in (D_iff in [1/M, 1))."""
    trivial = kept[solved_all[kept]]
    base = kept[~solved_all[kept]]
    mixed = (cols.img_correct > 0) & ~solved_all
    candidates = np.setdiff1d(scored[mixed[scored] & unflagged[scored]], kept)
    # Hardest first (fewest correct of M: highest D_iff), a seeded order among equals.
    order = rng.permutation(len(candidates))
    candidates = candidates[order][np.argsort(cols.acc_img[candidates][order], kind="stable")]
    refill = candidates[: len(trivial)]
    record.update(
        trivial_removed=len(trivial), refilled=len(refill), refill_shortfall=len(trivial) - len(refill)
    )
    return np.sort(np.concatenate([base, refill]))


def _drm_code(
    cols: RapColumns,
    scored: np.ndarray,
    kept: np.ndarray,
    unflagged: np.ndarray,
    cfg: RapRuleConfig,
    rng: np.random.Generator,
    record: dict[str, Any],
) -> np.ndarray:
    """The released code's DRM: add a seeded fraction of the 1-of-M-correct rows passing its loose rule."""
    acc = cols.acc_img[scored]
    mean_d = float(np.nanmean(cols.cde[scored])) if len(scored) else 0.0
    similarity = limr_similarity(cols.acc_img, float(np.mean(acc)) if len(scored) else 0.0)[scored]
    d = cols.cde[scored]
    loose = ((similarity >= cfg.loose_similarity) & ((d > mean_d) | (d >= cfg.loose_margin))) | (
        d >= cfg.strong_margin
    )
    one_right = cols.img_correct[scored] == 1
    pool = scored[loose & one_right & unflagged[scored]]
    take = int(len(pool) * cfg.drm_fraction)
    added = np.sort(rng.permutation(pool)[:take])
    record.update(
        mean_cde=round(mean_d, 6),
        loose_one_correct_rows=len(pool),
        drm_added=take,
        drm_new=len(np.setdiff1d(added, kept)),
    )
    return np.union1d(kept, added)
