"""Typed configuration of ``python -m curate select`` (loaded with ``curate.config.load_structured``).

A selection reads one annotated dataset and writes one or more named *subsets* (e.g. ``grpo`` and
``sft``), each a training set chosen by a rule over the difficulty buckets, or one of the paper's
controls (a seeded random subset of the same size, the full set), optionally narrowed by a pass-rate
pre-filter over the rollouts the scorers made, balanced across task types or resampled QuaDMix-style,
and split into train/val. ``configs/select/*.yaml`` are the recipes; every key is listed below with
its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from curate.config import ConfigError, PromptConfig, check_key
from curate.schema import BUCKETS

__all__ = [
    "BalanceConfig",
    "PassRateConfig",
    "QuadMixConfig",
    "QuadMixParams",
    "RandomConfig",
    "RapRuleConfig",
    "RuleConfig",
    "SelectConfig",
    "SplitConfig",
    "SubsetConfig",
]

KINDS = ("rule", "random", "full", "quadmix", "rap")
RULE_BY = ("pism", "cmab", "either", "both", "none")
PASS_RATE_SOURCES = ("auto", "pism", "cmab", "pooled")
FORMATS = ("verl", "verl_sft", "swift_grpo", "sft_jsonl")
QUADMIX_SCORES = ("pism_lambda_star", "cmab_rho")


def _choice(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")


@dataclass
class PassRateConfig:
    """The offline pre-filter from pre-rollouts (method.md §5, DAPO's dynamic sampling done once,
    before training): a GRPO group whose rollouts all get the same reward has zero advantage, so a
    prompt the model always or never solves teaches nothing and only takes a batch slot.

    Each row's rollouts (correct of attempted, from the scorers' own generations: no new ones) put it
    in one class: ``mixed`` when both outcomes were seen (0 < pass rate < 1, however few rollouts),
    ``all_correct`` / ``all_wrong`` when at least ``min_attempts`` rollouts all agree, else ``unknown``.
    Every dropped row is counted per class in the manifest.
    """

    # Drop rows whose rollouts were all correct (pass rate 1) / all wrong (pass rate 0).
    drop_all_correct: bool = True
    drop_all_wrong: bool = True
    # Whose rollouts count. pism: PISM's λ = 0 level, plain rollouts on the unmasked image
    # (pism_correct[0] of pism_attempts[0]; pism.mode=early_exit stops that level at its first
    # correct answer, so it rarely shows all-correct: see rules.rollouts) | cmab: CMAB's K responses
    # (cmab_correct of cmab_generations; its prompt puts the image where cmab.image_position says)
    # | pooled: both summed (refused unless the run made both) | auto: pooled over those the run made.
    source: str = "auto"
    # Agreeing rollouts needed to call a row all-correct or all-wrong (mixed rows need no minimum).
    min_attempts: int = 4
    # keep | drop: rows with fewer agreeing rollouts (their pass rate is unknown, not 0 or 1).
    unknown: str = "keep"

    def dropped_classes(self) -> list[str]:
        flags = {"all_correct": self.drop_all_correct, "all_wrong": self.drop_all_wrong,
                 "unknown": self.unknown == "drop"}
        return [name for name, drop in flags.items() if drop]

    def describe(self) -> str:
        return (f"pass rate ({self.source} rollouts, >= {self.min_attempts} alike) not "
                + " / ".join(self.dropped_classes()))


@dataclass
class RuleConfig:
    """Which difficulty buckets a row must be in (method.md §3: the proposal keeps medium + hard),
    and, with ``pass_rate``, which rows the pre-filter leaves (ANDed with the buckets)."""

    # pism | cmab: that score's bucket decides; either: PISM's OR CMAB's bucket is kept;
    # both: PISM's AND CMAB's bucket are kept; none: no bucket rule, only the pass-rate pre-filter.
    by: str = "pism"
    buckets: list[str] = field(default_factory=lambda: ["medium", "hard"])
    # Per-score bucket lists (null: `buckets`), e.g. PISM hard OR CMAB medium+hard.
    pism_buckets: Optional[list[str]] = None
    cmab_buckets: Optional[list[str]] = None
    # The pass-rate pre-filter (PassRateConfig); null: none. `pass_rate: {}` sets it with its defaults.
    pass_rate: Optional[PassRateConfig] = None

    def buckets_for(self, score: str) -> list[str]:
        specific = self.pism_buckets if score == "pism" else self.cmab_buckets
        return list(specific if specific is not None else self.buckets)

    def scores(self) -> tuple[str, ...]:
        if self.by == "none":
            return ()
        return ("pism", "cmab") if self.by in ("either", "both") else (self.by,)

    def describe(self) -> str:
        parts = [f"{s}_bucket in {self.buckets_for(s)}" for s in self.scores()]
        buckets = (" AND " if self.by == "both" else " OR ").join(parts)
        if self.pass_rate is None:
            return buckets
        prefilter = self.pass_rate.describe()
        if not parts:
            return prefilter
        return f"({buckets}) AND {prefilter}" if len(parts) > 1 else f"{buckets} AND {prefilter}"


@dataclass
class RapRuleConfig:
    """RAP's selection (kind=rap, method.md §4) over the ``rap_*`` columns of a run with rap.enabled:
    keep the samples whose answers depend on the image. D = acc_img − acc_txt (CDE), D_iff = 1 − acc_img.

    - ``cde`` + ``paper``: D >= lambda_c. ``cde`` + ``code`` (the released select/selection.py): D > margin,
      LIMR similarity 1 − (acc_img − μ)² / (1 − μ)² >= similarity (μ: the mean acc_img of the usable
      rows), and not M of M correct with the image.
    - ``drm`` + ``paper``: the paper CDE set without its trivial rows (M of M correct), refilled to the
      same size with the hardest rows outside it (highest D_iff in [1/M, 1), seeded order among ties).
      ``drm`` + ``code``: the code CDE set plus a seeded ``drm_fraction`` of the 1-of-M-correct rows that
      pass the released code's loose rule ((similarity >= loose_similarity and (D > mean D or
      D >= loose_margin)) or D >= strong_margin).
    """

    # cde | drm
    rule: str = "drm"
    # paper | code
    variant: str = "paper"
    lambda_c: float = 0.5
    margin: float = 0.2
    similarity: float = 0.6
    drm_fraction: float = 0.1
    loose_similarity: float = 0.85
    loose_margin: float = 0.2
    strong_margin: float = 0.6
    # Leave out rows ACE flags (one token soaks up the attention), refills included. null: the
    # variant's own (paper: yes, when the run computed ACE; code: no, the released code has no ACE).
    drop_ace_flagged: Optional[bool] = None

    def drops_flagged(self, have_ace: bool) -> bool:
        if self.drop_ace_flagged is None:
            return self.variant == "paper" and have_ace
        return self.drop_ace_flagged

    def describe(self) -> str:
        if self.variant == "paper":
            what = f"RAP CDE D >= {self.lambda_c:g}"
            if self.rule == "drm":
                what += "; DRM: trivial rows replaced by the hardest (1 <= correct < M)"
        else:
            what = f"RAP CDE (released code) D > {self.margin:g}, similarity >= {self.similarity:g}, not M/M"
            if self.rule == "drm":
                what += f"; DRM: + {self.drm_fraction:.0%} of the 1/M-correct rows passing the loose rule"
        if self.drop_ace_flagged or (self.drop_ace_flagged is None and self.variant == "paper"):
            what += "; ACE-flagged rows out" + ("" if self.drop_ace_flagged else " (when the run scored ACE)")
        return what


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
    # quadmix: QuaDMix resampling of every usable row | rap: RAP's CDE or DRM selection (`rap`)
    kind: str = "rule"
    rule: RuleConfig = field(default_factory=RuleConfig)
    random: RandomConfig = field(default_factory=RandomConfig)
    quadmix: QuadMixConfig = field(default_factory=QuadMixConfig)
    rap: RapRuleConfig = field(default_factory=RapRuleConfig)
    # Keep only these task types (null: all).
    tasks: Optional[list[str]] = None
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # Names of subsets listed earlier whose rows this one never takes (SFT(X) + GRPO(Y) on disjoint data).
    disjoint_from: list[str] = field(default_factory=list)
    # verl: verl RL parquet (GRPO) | verl_sft: verl SFT parquet (messages + images) |
    # swift_grpo: ms-swift GRPO JSONL | sft_jsonl: ms-swift / LLaMA-Factory SFT JSONL
    formats: list[str] = field(default_factory=lambda: ["verl"])

    def scores(self) -> tuple[str, ...]:
        """The run's scores this subset reads: the run must have scored them (``<score>.enabled``)."""
        if self.kind == "rap":
            return ("rap",)
        if self.kind == "quadmix":
            return ("pism",) if self.quadmix.score.startswith("pism") else ("cmab",)
        if self.kind == "rule" or (self.kind == "random" and (
                self.random.size is None or self.random.pool == "outside_rule")):
            return self.rule.scores()
        return ()


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
    # Also never take a row that repeats an excluded row's content under another id (same question,
    # same image bytes; curate.schema.content_keys): a held-out row's copy in training data is no
    # held-out row. Costs one pass over the dataset's questions and images.
    exclude_duplicates: bool = True
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
            _check_pass_rate(key, sub)
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
            _check_rap(key, sub.rap)
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


def _check_rap(key: str, rap: RapRuleConfig) -> None:
    _choice(f"{key}.rap.rule", rap.rule, ("cde", "drm"))
    _choice(f"{key}.rap.variant", rap.variant, ("paper", "code"))
    for name in ("lambda_c", "margin", "loose_margin", "strong_margin"):
        check_key(f"{key}.rap.{name}", -1 <= getattr(rap, name) <= 1,
                  "must be in [-1, 1] (D is a difference of accuracies)")
    for name in ("similarity", "loose_similarity"):
        check_key(f"{key}.rap.{name}", getattr(rap, name) <= 1, "must be <= 1 (the similarity's maximum)")
    check_key(f"{key}.rap.drm_fraction", 0 <= rap.drm_fraction <= 1, "must be in [0, 1]")


def _check_pass_rate(key: str, sub: SubsetConfig) -> None:
    pr = sub.rule.pass_rate
    check_key(f"{key}.rule.by", sub.rule.by != "none" or pr is not None,
              "none leaves only the pass-rate pre-filter: set rule.pass_rate (every row: kind=full)")
    if pr is None:
        return
    check_key(f"{key}.rule.pass_rate", sub.kind in ("rule", "random"),
              f"kind={sub.kind} takes no rule; for the pre-filter alone use kind=rule with rule.by=none")
    _choice(f"{key}.rule.pass_rate.source", pr.source, PASS_RATE_SOURCES)
    _choice(f"{key}.rule.pass_rate.unknown", pr.unknown, ("keep", "drop"))
    check_key(f"{key}.rule.pass_rate.min_attempts", pr.min_attempts >= 1, "must be >= 1")
    check_key(f"{key}.rule.pass_rate", bool(pr.dropped_classes()),
              "drops nothing: set drop_all_correct, drop_all_wrong or unknown=drop")
