"""Which rows a subset takes: pure functions over the score columns (no images, no I/O).

Rows are addressed by their position in the id-sorted score table, so a selection depends only on
the dataset's content, the config and the seed: never on shard names, file order or Python's hash
seed. Every random choice draws from a generator seeded with (seed, subset name, purpose).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from curate import schema as S
from curate.config import ConfigError
from curate.selection.config import (
    BalanceConfig,
    PassRateConfig,
    QuadMixConfig,
    RuleConfig,
    SplitConfig,
    SubsetConfig,
)
from curate.selection.rap import select_rap

__all__ = [
    "PASS_CLASSES",
    "ScoreTable",
    "SubsetSelection",
    "apply_rule",
    "balance",
    "largest_remainder",
    "pass_classes",
    "quadmix_copies",
    "rule_mask",
    "select_subset",
    "split_rows",
]

# Score columns a selection reads (those present); never the images.
SCORE_COLUMNS = (
    S.ID,
    S.TASK,
    S.STATUS,
    S.ERROR,
    "pism_bucket",
    "pism_lambda_star",
    "cmab_bucket",
    "cmab_rho",
    # the scorers' rollouts, which the pass-rate pre-filter counts
    "pism_attempts",
    "pism_correct",
    "cmab_correct",
    "cmab_generations",
    # RAP's CDE rollouts and ACE flag (curate.selection.rap)
    "rap_img_correct",
    "rap_img_attempts",
    "rap_txt_correct",
    "rap_txt_attempts",
    "rap_ace_flag",
)

# (correct, attempted) columns of each scorer's rollouts; PISM's are lists, one entry per mask ratio.
ROLLOUT_COLUMNS = {"pism": ("pism_correct", "pism_attempts"), "cmab": ("cmab_correct", "cmab_generations")}
# A row's pass-rate class (curate.selection.config.PassRateConfig).
PASS_CLASSES = ("all_correct", "all_wrong", "mixed", "unknown")


@dataclass
class ScoreTable:
    """The score columns of an annotated dataset, sorted by id; ``usable`` = status ok."""

    ids: np.ndarray  # str, sorted, unique
    tasks: np.ndarray  # str
    usable: np.ndarray  # bool
    errors: np.ndarray  # str or None
    columns: dict[str, np.ndarray]  # annotation columns present in the dataset
    # Rows no subset may take (``exclude_ids``); None: none.
    excluded: Optional[np.ndarray] = None
    # Of those, rows not listed but repeating a listed row's content (``exclude_duplicates``).
    excluded_copies: int = 0

    def exclude(self, ids: Iterable[str]) -> int:
        """Never select the rows with these ids (others are ignored); returns how many rows that is."""
        self.excluded = np.isin(self.ids.astype(str), np.array(sorted(set(ids)), dtype=str))
        return int(self.excluded.sum())

    @classmethod
    def from_table(cls, table: pa.Table) -> "ScoreTable":
        missing = [c for c in (S.ID, S.TASK, S.STATUS) if c not in table.column_names]
        if missing:
            raise ConfigError(f"config key 'input': the dataset has no column(s) {missing}")
        ids = np.array(table.column(S.ID).to_pylist(), dtype=object)
        order = np.argsort(ids.astype(str), kind="stable")
        ids = ids[order]
        dup = [k for k, n in Counter(ids.tolist()).items() if n > 1]
        if dup:
            raise ConfigError(f"config key 'input': ids must be unique; {len(dup)} repeat, e.g. {dup[0]!r}")

        def col(name: str) -> np.ndarray:
            # fromiter keeps a list column 1-D (np.array would make equal-length lists a 2-D array)
            return np.fromiter(table.column(name).to_pylist(), dtype=object, count=table.num_rows)[order]

        status = col(S.STATUS)
        errors = col(S.ERROR) if S.ERROR in table.column_names else np.full(len(ids), None, dtype=object)
        present = {c: col(c) for c in SCORE_COLUMNS[4:] if c in table.column_names}
        tasks = np.array([str(t) for t in col(S.TASK)], dtype=object)
        return cls(ids, tasks, status == S.STATUS_OK, errors, present)

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str, key: str) -> np.ndarray:
        if name not in self.columns:
            raise ConfigError(f"config key '{key}': the dataset has no column {name!r} (was that score run?)")
        return self.columns[name]

    def counts(self, rows: np.ndarray, by: Optional[str] = None) -> dict:
        """Rows per task (``by=None``) or per task and value of column ``by``."""
        if by is None:
            return dict(sorted(Counter(self.tasks[rows].tolist()).items()))
        out: dict[str, dict[str, int]] = {}
        for task, value in zip(self.tasks[rows].tolist(), self.columns[by][rows].tolist()):
            out.setdefault(task, Counter())[str(value)] += 1
        return {t: dict(sorted(c.items())) for t, c in sorted(out.items())}


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """A generator for one purpose: stable across runs, platforms and Python hash seeds."""
    words = [seed & 0xFFFFFFFF]
    for label in labels:
        words.extend(np.frombuffer(hashlib.blake2b(label.encode(), digest_size=8).digest(), dtype=np.uint32))
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def draw(rng: np.random.Generator, rows: np.ndarray, k: int) -> np.ndarray:
    """``k`` of ``rows`` uniformly without replacement, returned in row order."""
    if k > len(rows):
        raise ValueError(f"cannot draw {k} rows from {len(rows)}")
    return np.sort(rng.permutation(np.sort(rows))[:k])


def rule_mask(scores: ScoreTable, rule: RuleConfig, key: str) -> np.ndarray:
    """Rows whose bucket(s) the rule keeps (a null bucket is never kept); by=none keeps every row."""
    masks = []
    for score in rule.scores():
        buckets = scores.column(f"{score}_bucket", f"{key}.rule.by")
        keep = set(rule.buckets_for(score))
        masks.append(np.array([b in keep for b in buckets], dtype=bool))
    if not masks:
        return np.ones(len(scores), dtype=bool)
    if rule.by == "both":
        return masks[0] & masks[1]
    return masks[0] | masks[1] if len(masks) == 2 else masks[0]


def rollouts(scores: ScoreTable, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(correct, attempted) rollouts per row by one scorer; a row without them (null) has 0 of 0.

    PISM's are those of its λ = 0 level (``pism.ratios`` always starts at 0.0), K plain rollouts
    with ``pism.mode=full``. Under ``early_exit`` that level stops once its outcome against τ is
    certain: at its ⌈τK⌉-th correct answer (the first, for K = 10 and τ = 0.1; a whole wave of
    ``pism.wave_attempts`` at once), or when too few attempts are left to pass. A never-solved row
    then still shows only wrong answers (all K at τK <= 1), a row answered wrong before right shows
    both, as it should; but a row answered right from the start shows only ⌈τK⌉ (or wave_attempts)
    correct of as many: all-correct only if that reaches ``min_attempts``, else unknown. So early
    exit hides all-correct rows (never turning them into mixed or all-wrong ones), and correct /
    attempted is biased upwards (the count stops at a success): the pre-filter decides on the
    classes, never on that ratio. ``configs/curate/prerollout.yaml`` makes K unstopped rollouts.
    """
    correct, attempted = (scores.columns[c] for c in ROLLOUT_COLUMNS[source])
    if source == "pism":
        correct, attempted = ([None if v is None else v[0] for v in col] for col in (correct, attempted))
    return _counts(correct), _counts(attempted)


def _counts(values: Iterable[Any]) -> np.ndarray:
    return np.array([0 if v is None else int(v) for v in values], dtype=np.int64)


def pass_classes(scores: ScoreTable, cfg: PassRateConfig, key: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each row's pass-rate class (PASS_CLASSES) over the rollouts ``cfg.source`` names, and the
    scorers whose rollouts were counted."""
    have = tuple(s for s, cols in ROLLOUT_COLUMNS.items() if all(c in scores.columns for c in cols))
    sources = {"auto": have, "pooled": ("pism", "cmab")}.get(cfg.source, (cfg.source,))
    missing = [s for s in sources or ROLLOUT_COLUMNS if s not in have]
    if missing:
        columns = " / ".join(c for s in missing for c in ROLLOUT_COLUMNS[s])
        raise ConfigError(
            f"config key '{key}.rule.pass_rate.source': {cfg.source!r} needs the rollouts of "
            f"{(' or ' if cfg.source == 'auto' else ' and ').join(missing)} ({columns}), which the dataset "
            "does not have (did that score run?); configs/curate/prerollout.yaml makes rollouts"
        )
    correct = np.zeros(len(scores), dtype=np.int64)
    attempted = np.zeros(len(scores), dtype=np.int64)
    for source in sources:
        c, a = rollouts(scores, source)
        correct += c
        attempted += a
    classes = np.full(len(scores), "unknown", dtype=object)
    enough = attempted >= cfg.min_attempts  # min_attempts >= 1: the two uniform classes never overlap
    classes[(correct > 0) & (correct < attempted)] = "mixed"
    classes[enough & (correct == attempted)] = "all_correct"
    classes[enough & (correct == 0)] = "all_wrong"
    return classes, sources


def apply_rule(
    scores: ScoreTable, rule: RuleConfig, rows: np.ndarray, key: str
) -> tuple[np.ndarray, Optional[dict[str, Any]]]:
    """The ``rows`` the rule keeps (its buckets, then its pass-rate pre-filter) and, with a pre-filter,
    its counts for the manifest: the rows the buckets kept per class, and those it dropped."""
    bucketed = rows[rule_mask(scores, rule, key)[rows]]
    cfg = rule.pass_rate
    if cfg is None:
        return bucketed, None
    classes, sources = pass_classes(scores, cfg, key)
    seen = classes[bucketed].tolist()
    drop = cfg.dropped_classes()
    dropped = np.array([c in drop for c in seen], dtype=bool)
    counts = Counter(seen)
    record = {
        "sources": list(sources),
        "rows_in": len(bucketed),
        "classes": {c: counts[c] for c in PASS_CLASSES},
        "dropped": {c: counts[c] if c in drop else 0 for c in PASS_CLASSES if c != "mixed"},
        "rows_out": int((~dropped).sum()),
    }
    return bucketed[~dropped], record


def largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to ``total``, proportional to ``weights`` (Hamilton's method; ties by name)."""
    weight_sum = float(sum(weights.values()))
    exact = {k: total * w / weight_sum for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    left = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:left]:
        counts[k] += 1
    return counts


def _by_task(scores: ScoreTable, rows: np.ndarray) -> dict[str, np.ndarray]:
    tasks = scores.tasks[rows]
    return {t: rows[tasks == t] for t in sorted(set(tasks.tolist()))}


def balance(
    scores: ScoreTable,
    rows: np.ndarray,
    cfg: BalanceConfig,
    pool: np.ndarray,
    rng: np.random.Generator,
    key: str,
) -> np.ndarray:
    """Per-task balancing: a cap per type, or quotas (default: the pool's task mix)."""
    if cfg.mode == "none":
        return rows
    groups = _by_task(scores, rows)
    if cfg.mode == "cap":
        cap = int(cfg.cap_per_task or 0)
        picked = [draw(rng, g, min(cap, len(g))) for g in groups.values()]
        return np.sort(np.concatenate(picked)) if picked else rows[:0]
    weights = (
        dict(cfg.quotas) if cfg.quotas is not None else {t: len(g) for t, g in _by_task(scores, pool).items()}
    )
    weights = {t: float(w) for t, w in weights.items() if w > 0}
    available = {t: len(groups.get(t, ())) for t in weights}
    if cfg.size is not None:
        size = cfg.size
        quota = largest_remainder(weights, size)
        short = {t: (quota[t], available[t]) for t in weights if quota[t] > available[t]}
        if short:
            raise ConfigError(
                f"config key '{key}.balance.size': {size} rows in these proportions need more "
                f"rows than selected (task: needed, available) {short}"
            )
    else:
        weight_sum = sum(weights.values())
        size = min(math.floor(available[t] * weight_sum / w) for t, w in weights.items())
        while size > 0 and any(q > available[t] for t, q in largest_remainder(weights, size).items()):
            size -= 1
        if size == 0:
            raise ConfigError(
                f"config key '{key}.balance.quotas': no rows selected for task(s) "
                f"{[t for t in weights if not available[t]]}"
            )
        quota = largest_remainder(weights, size)
    picked = [draw(rng, groups[t], quota[t]) for t in weights if quota[t]]
    return np.sort(np.concatenate(picked))


def _percentiles(keys: np.ndarray) -> np.ndarray:
    """Rank percentile in [0, 1] (0 = first), ties sharing their mean rank."""
    n = len(keys)
    if n == 1:
        return np.zeros(1)
    order = np.argsort(keys, kind="stable")
    ranks = np.empty(n)
    sorted_keys = keys[order]
    start = 0
    while start < n:
        end = start
        while end + 1 < n and sorted_keys[end + 1] == sorted_keys[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2
        start = end + 1
    return ranks / (n - 1)


def quadmix_copies(
    scores: ScoreTable, rows: np.ndarray, cfg: QuadMixConfig, rng: np.random.Generator, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, copies) with copies >= 1: S(r̄) per row within its task type, a.b = a plus one w.p. b."""
    score_col = scores.column(cfg.score, f"{key}.quadmix.score")
    bucket_name = "pism_bucket" if cfg.score.startswith("pism") else "cmab_bucket"
    if cfg.exclude_unsolved and bucket_name in scores.columns:
        rows = rows[scores.columns[bucket_name][rows] != "unsolved"]
    out_rows, out_copies = [], []
    for task, group in _by_task(scores, rows).items():
        values = score_col[group]
        if cfg.score == "pism_lambda_star":  # never failing (null) = most robust = last
            keys = np.array([math.inf if v is None else float(v) for v in values])
        else:  # distance of ρ̄ from balance on a log scale; unknown ρ̄ last
            keys = np.array([math.inf if v is None or v <= 0 else abs(math.log(v)) for v in values])
        p = cfg.per_task.get(task, cfg.default)
        r = _percentiles(keys)
        expected = (
            np.where(r <= p.omega, (2.0 / (1.0 + np.exp(-p.lam * (p.omega - r)))) ** p.eta, 0.0) + p.epsilon
        )
        whole = np.floor(expected)
        copies = (whole + (rng.random(len(group)) < expected - whole)).astype(np.int64)
        out_rows.append(group[copies > 0])
        out_copies.append(copies[copies > 0])
    if not out_rows:
        return rows[:0], np.zeros(0, dtype=np.int64)
    rows, copies = np.concatenate(out_rows), np.concatenate(out_copies)
    order = np.argsort(rows)
    return rows[order], copies[order]


def split_rows(
    scores: ScoreTable, rows: np.ndarray, cfg: SplitConfig, rng: np.random.Generator, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) rows; val has ``val_size`` (or ``round(val_fraction · n)``) rows, stratified by task."""
    n = len(rows)
    size = cfg.val_size if cfg.val_size is not None else round(cfg.val_fraction * n)
    if size == 0:
        return rows, rows[:0]
    if size >= n:
        raise ConfigError(f"config key '{key}.split': val would take {size} of the subset's {n} rows")
    if cfg.stratify_by_task:
        groups = _by_task(scores, rows)
        quota = largest_remainder({t: len(g) for t, g in groups.items()}, size)
        val = np.concatenate([draw(rng, g, quota[t]) for t, g in groups.items()])
    else:
        val = draw(rng, rows, size)
    val = np.sort(val)
    return np.setdiff1d(rows, val, assume_unique=True), val


@dataclass
class SubsetSelection:
    """What one subset takes: distinct rows per split and, for QuaDMix, copies of train rows."""

    name: str
    train: np.ndarray
    val: np.ndarray
    train_copies: Optional[np.ndarray]  # aligned with train; None = one copy each
    pool: np.ndarray  # the usable rows the subset could take
    reference: Optional[np.ndarray]  # the rule's rows a random control matched
    excluded_by_disjointness: int  # usable rows left out because earlier subsets took them
    # The pass-rate pre-filter's counts over the rule's rows (a random control's: its reference's).
    pass_rate: Optional[dict[str, Any]] = None
    # kind=rap: what each step of the RAP rule kept and dropped (curate.selection.rap).
    rap: Optional[dict[str, Any]] = None

    @property
    def rows(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.val]))

    @property
    def train_rows_written(self) -> int:
        return int(self.train_copies.sum()) if self.train_copies is not None else len(self.train)


def select_subset(
    scores: ScoreTable,
    name: str,
    cfg: SubsetConfig,
    seed: int,
    taken: Optional[Mapping[str, np.ndarray]] = None,
) -> SubsetSelection:
    """The rows of subset ``name``; ``taken`` holds the rows of the subsets chosen before it.

    The rule (and a random control's reference) is evaluated over every usable row of the subset's
    task types; rows of the subsets named in ``disjoint_from`` are then never taken.
    """
    key = f"subsets.{name}"
    if cfg.kind == "quadmix" and cfg.balance.mode != "none":
        raise ConfigError(
            f"config key '{key}.balance.mode': QuaDMix mixes types with quadmix.per_task; "
            "balancing on top is not supported"
        )
    base_mask = scores.usable.copy()
    if scores.excluded is not None:
        base_mask &= ~scores.excluded
    if cfg.tasks is not None:
        unknown = sorted(set(cfg.tasks) - set(scores.tasks[scores.usable].tolist()))
        if unknown:
            raise ConfigError(f"config key '{key}.tasks': no usable rows of task(s) {unknown}")
        base_mask &= np.isin(scores.tasks, list(cfg.tasks))
    pool_mask = base_mask.copy()
    for other in cfg.disjoint_from:
        pool_mask[(taken or {})[other]] = False
    base, pool = np.flatnonzero(base_mask), np.flatnonzero(pool_mask)

    def rng(purpose: str) -> np.random.Generator:
        return rng_for(seed, name, purpose)

    copies = reference = prefilter = rap = None
    if cfg.kind == "full":
        chosen = balance(scores, pool, cfg.balance, base, rng("balance"), key)
    elif cfg.kind == "quadmix":
        chosen, copies = quadmix_copies(scores, pool, cfg.quadmix, rng("quadmix"), key)
    elif cfg.kind == "rule":
        ruled, prefilter = apply_rule(scores, cfg.rule, pool, key)
        chosen = balance(scores, ruled, cfg.balance, base, rng("balance"), key)
    elif cfg.kind == "rap":
        kept, rap = select_rap(scores, pool, cfg.rap, rng("rap"), key)
        chosen = balance(scores, kept, cfg.balance, base, rng("balance"), key)
    else:  # random: the size (and task mix) of what the rule would take from the whole base
        ruled, prefilter = apply_rule(scores, cfg.rule, base, key)
        reference = balance(scores, ruled, cfg.balance, base, rng("balance"), key)
        candidates = np.setdiff1d(pool, ruled) if cfg.random.pool == "outside_rule" else pool
        chosen = _random_control(scores, candidates, reference, cfg, rng("random"), key)
    if len(chosen) == 0:
        raise ConfigError(f"config key '{key}': the subset selects no rows (pool of {len(pool)} usable rows)")

    train, val = split_rows(scores, chosen, cfg.split, rng("split"), key)
    train_copies = copies[np.isin(chosen, train)] if copies is not None else None
    return SubsetSelection(
        name, train, val, train_copies, pool, reference, len(base) - len(pool), prefilter, rap
    )


def _random_control(
    scores: ScoreTable,
    candidates: np.ndarray,
    reference: np.ndarray,
    cfg: SubsetConfig,
    rng: np.random.Generator,
    key: str,
) -> np.ndarray:
    if not cfg.random.stratify_by_task:
        size = cfg.random.size if cfg.random.size is not None else len(reference)
        if size > len(candidates):
            raise ConfigError(
                f"config key '{key}.random': cannot draw {size} rows from a pool of "
                f"{len(candidates)} (random.pool={cfg.random.pool})"
            )
        return draw(rng, candidates, size)
    wanted = Counter(scores.tasks[reference].tolist())
    groups = _by_task(scores, candidates)
    short = {t: (n, len(groups.get(t, ()))) for t, n in wanted.items() if n > len(groups.get(t, ()))}
    if short:
        raise ConfigError(
            f"config key '{key}.random.stratify_by_task': not enough rows per task "
            f"(task: wanted, available) {short} (random.pool={cfg.random.pool})"
        )
    return np.sort(np.concatenate([draw(rng, groups[t], n) for t, n in sorted(wanted.items())]))


def union(selections: Iterable[SubsetSelection]) -> np.ndarray:
    parts: Sequence[np.ndarray] = [s.rows for s in selections]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
