"""Typed configuration of ``python -m curate select`` (loaded with ``curate.config.load_structured``).

A selection reads one annotated dataset and writes one or more named *subsets* (e.g. ``grpo`` and
``sft``), each a training set chosen by a rule over the difficulty buckets, or one of the paper's
controls (a seeded random subset of the same size, the full set), optionally balanced across task
types or resampled QuaDMix-style, and split into train/val. ``configs/select/*.yaml`` are the
recipes; every key is listed below with its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from curate.config import ConfigError, PromptConfig, check_key
from curate.schema import BUCKETS

__all__ = [
    "BalanceConfig",
    "QuadMixConfig",
    "QuadMixParams",
    "RandomConfig",
    "RuleConfig",
    "SelectConfig",
    "SplitConfig",
    "SubsetConfig",
]

KINDS = ("rule", "random", "full", "quadmix")
RULE_BY = ("pism", "cmab", "either", "both")
FORMATS = ("verl", "verl_sft", "swift_grpo", "sft_jsonl")
QUADMIX_SCORES = ("pism_lambda_star", "cmab_rho")


def _choice(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")



@dataclass
class RuleConfig:
    """Which difficulty buckets a row must be in (method.md §3: the proposal keeps medium + hard)."""

    # pism | cmab: that score's bucket decides; either: PISM's OR CMAB's bucket is kept;
    # both: PISM's AND CMAB's bucket are kept.
    by: str = "pism"
    buckets: list[str] = field(default_factory=lambda: ["medium", "hard"])
    # Per-score bucket lists (null: `buckets`), e.g. PISM hard OR CMAB medium+hard.
    pism_buckets: Optional[list[str]] = None
    cmab_buckets: Optional[list[str]] = None

    def buckets_for(self, score: str) -> list[str]:
        specific = self.pism_buckets if score == "pism" else self.cmab_buckets
        return list(specific if specific is not None else self.buckets)

    def scores(self) -> tuple[str, ...]:
        return ("pism", "cmab") if self.by in ("either", "both") else (self.by,)

    def describe(self) -> str:
        parts = [f"{s}_bucket in {self.buckets_for(s)}" for s in self.scores()]
        return (" AND " if self.by == "both" else " OR ").join(parts)


@dataclass
class RandomConfig:
    """The paper's control: a seeded random subset instead of the rule's rows (kind=random)."""

    # Rows to draw; null: as many as the rule (with balancing) selects, the paper's "random, same size".
    size: Optional[int] = None
    # Draw, per task type, as many rows as the rule selects of that type (same task mix).
    stratify_by_task: bool = False
    # all: from every usable row, the rule's own rows included (the paper);
    # outside_rule: only from rows the rule does not select (a disjoint control).
    pool: str = "all"


@dataclass
class BalanceConfig:
    """Per-task-type balancing, applied after the rule (seeded draws within each type)."""

    # none | cap | proportional
    mode: str = "none"
    # cap: at most this many rows per task type.
    cap_per_task: Optional[int] = None
    # proportional: task type -> weight; types not listed get none (null: the task mix of all
    # usable rows, so the subset keeps the corpus's mix).
    quotas: Optional[dict[str, float]] = None
    # proportional: total rows (null: the largest subset the quotas allow).
    size: Optional[int] = None


@dataclass
class QuadMixParams:
    """Copies S(r̄) = (2 / (1 + exp(-lam (omega - r̄))))^eta + epsilon if r̄ <= omega, else epsilon (§7)."""

    lam: float = 10.0
    omega: float = 0.5
    eta: float = 1.0
    epsilon: float = 0.0


@dataclass
class QuadMixConfig:
    """QuaDMix-style sampling (kind=quadmix): expected copies per row from its difficulty percentile."""

    # pism_lambda_star: smaller λ* (fails under less masking) ranks first, never-failing rows last;
    # cmab_rho: ρ̄ closer to 1 (balanced attention, CMAB's hard band) ranks first.
    score: str = "pism_lambda_star"
    # Leave out rows whose bucket for that score is unsolved (λ* = 0 would rank them hardest).
    exclude_unsolved: bool = True
    default: QuadMixParams = field(default_factory=QuadMixParams)
    # Task type -> parameters for that type (others use `default`).
    per_task: dict[str, QuadMixParams] = field(default_factory=dict)


@dataclass
class SplitConfig:
    """Train/val split of a subset's rows (seeded; QuaDMix copies never cross it)."""

    val_fraction: float = 0.0
    # Rows in val; overrides val_fraction.
    val_size: Optional[int] = None
    # Same task mix in val as in the subset (largest-remainder quotas per type).
    stratify_by_task: bool = True


@dataclass
class SubsetConfig:
    # rule: rows in the rule's buckets | random: the control above | full: every usable row |
    # quadmix: QuaDMix resampling of every usable row
    kind: str = "rule"
    rule: RuleConfig = field(default_factory=RuleConfig)
    random: RandomConfig = field(default_factory=RandomConfig)
    quadmix: QuadMixConfig = field(default_factory=QuadMixConfig)
    # Keep only these task types (null: all).
    tasks: Optional[list[str]] = None
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # Names of subsets listed earlier whose rows this one never takes (SFT(X) + GRPO(Y) on disjoint data).
    disjoint_from: list[str] = field(default_factory=list)
    # verl: verl RL parquet (GRPO) | verl_sft: verl SFT parquet (messages + images) |
    # swift_grpo: ms-swift GRPO JSONL | sft_jsonl: ms-swift / LLaMA-Factory SFT JSONL
    formats: list[str] = field(default_factory=lambda: ["verl"])


@dataclass
class SelectConfig:
    # The annotated dataset: a directory of Parquet shards (<run>/annotated) or the run directory.
    input: str = "???"
    # Output directory (manifest.json, one folder per subset); refused if it exists unless overwrite.
    output: str = "???"
    overwrite: bool = False
    seed: int = 0
    # Rows no subset may take, e.g. a held-out evaluation split: a Parquet file with an `id` column
    # (another selection's <subset>/canonical/<split>.parquet) or a text file of one id per line;
    # a path or URI. Ids the dataset lacks are ignored (counted in the manifest).
    exclude_ids: Optional[str] = None
    # Subsets in order (later ones may be disjoint from earlier ones); at least one.
    subsets: dict[str, SubsetConfig] = field(default_factory=dict)
    # run: the prompt the scoring run used (run.json), so training sees what difficulty was measured
    # on; falls back to `prompt` when there is no run.json | config: always `prompt`.
    prompt_source: str = "run"
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # Annotation columns copied into verl's extra_info (and JSONL keys) when the dataset has them.
    annotations: list[str] = field(
        default_factory=lambda: ["pism_bucket", "pism_lambda_star", "cmab_bucket", "cmab_rho"]
    )
    # Rows per batch while streaming the dataset.
    batch_rows: int = 256

    def validate(self) -> "SelectConfig":
        check_key("input", self.input not in ("", "???"), "is required")
        check_key("output", self.output not in ("", "???"), "is required")
        check_key("subsets", bool(self.subsets), "define at least one subset (e.g. subsets.grpo.kind=rule)")
        _choice("prompt_source", self.prompt_source, ("run", "config"))
        check_key("batch_rows", self.batch_rows > 0, "must be positive")
        seen: list[str] = []
        for name, sub in self.subsets.items():
            key = f"subsets.{name}"
            check_key(key, name.isidentifier(), "subset names must be identifiers (they name folders)")
            _choice(f"{key}.kind", sub.kind, KINDS)
            _choice(f"{key}.rule.by", sub.rule.by, RULE_BY)
            for score in ("pism", "cmab"):
                check_key(
                    f"{key}.rule.{score}_buckets",
                    set(sub.rule.buckets_for(score)) <= set(BUCKETS),
                    f"buckets must be among {list(BUCKETS)}",
                )
                check_key(f"{key}.rule.{score}_buckets", bool(sub.rule.buckets_for(score)), "must not be empty")
            r = sub.random
            _choice(f"{key}.random.pool", r.pool, ("all", "outside_rule"))
            check_key(f"{key}.random.size", r.size is None or r.size > 0, "must be positive or null")
            check_key(
                f"{key}.random.size",
                not (r.size is not None and r.stratify_by_task),
                "a stratified draw takes its size per type from the rule; leave size null",
            )
            b = sub.balance
            _choice(f"{key}.balance.mode", b.mode, ("none", "cap", "proportional"))
            if b.mode == "cap":
                check_key(
                    f"{key}.balance.cap_per_task",
                    b.cap_per_task is not None and b.cap_per_task > 0,
                    "must be a positive number with balance.mode=cap",
                )
            if b.quotas is not None:
                check_key(
                    f"{key}.balance.quotas",
                    bool(b.quotas) and all(w >= 0 for w in b.quotas.values()) and sum(b.quotas.values()) > 0,
                    "weights must be >= 0 with a positive sum",
                )
            check_key(f"{key}.balance.size", b.size is None or b.size > 0, "must be positive or null")
            q = sub.quadmix
            _choice(f"{key}.quadmix.score", q.score, QUADMIX_SCORES)
            for task, p in {"default": q.default, **q.per_task}.items():
                pkey = f"{key}.quadmix." + ("default" if task == "default" else f"per_task.{task}")
                check_key(f"{pkey}.omega", 0 <= p.omega <= 1, "must be in [0, 1]")
                check_key(f"{pkey}.epsilon", p.epsilon >= 0, "must be >= 0")
                check_key(f"{pkey}.eta", p.eta > 0, "must be > 0")
            s = sub.split
            check_key(f"{key}.split.val_fraction", 0 <= s.val_fraction < 1, "must be in [0, 1)")
            check_key(f"{key}.split.val_size", s.val_size is None or s.val_size >= 0, "must be >= 0 or null")
            check_key(f"{key}.formats", bool(sub.formats), "list at least one format")
            for fmt in sub.formats:
                _choice(f"{key}.formats", fmt, FORMATS)
            for other in sub.disjoint_from:
                check_key(
                    f"{key}.disjoint_from", other in seen, f"{other!r} is not a subset listed before {name!r}"
                )
            seen.append(name)
        return self
