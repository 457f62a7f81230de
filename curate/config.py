"""Typed configuration for curation, loaded the way verl loads its trainer config.

The dataclasses below are the schema: every key, its type and its default. ``configs/curate/*.yaml``
are recipes that override some keys (``configs/curate/default.yaml`` lists every key with comments
and is checked against these defaults by the tests). Command-line overrides use OmegaConf's dotlist
syntax (``pism.mode=full engine.batch_size=8``). Any mistake, an unknown key, a wrong type or a value
outside its choices, fails at load time with a ``ConfigError`` that names the full key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curate.grading.verdict import GradingOptions
from curate.images import ImageOptions
from curate.modeling import is_toy_model

__all__ = [
    "ConfigError",
    "check_key",
    "CurateConfig",
    "load_config",
    "to_yaml",
]


class ConfigError(ValueError):
    """A configuration mistake; the message always names the offending key."""


def _choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(choices)}")


def check_key(key: str, ok: bool, why: str) -> None:
    """Fail fast naming the config key: ``config key 'a.b': why`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {why}")


@dataclass
class ToyCorpusConfig:
    """The offline demo corpus (``data.format=toy``), generated deterministically from the seed."""

    num_samples: int = 200
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["counting", "color", "arithmetic", "ocr", "grounding"])


@dataclass
class DataConfig:
    # auto | canonical | verl | orsta | difficulty_sampling | swift | hf_disk | toy
    format: str = "auto"
    # A file, a directory or a glob; unused for format=toy.
    path: Optional[str] = None
    # Relative image paths resolve under this root (default: the data file's directory); paths that
    # would leave it are refused per row.
    image_root: Optional[str] = None
    # Read at most this many rows (None: all).
    limit: Optional[int] = None
    # A source value nested deeper than this (lists/dicts), or a text field longer than this many
    # characters, makes its row an error instead of exhausting the reader.
    max_depth: int = 32
    max_text_chars: int = 1_000_000
    # Per-image limits and alpha flattening (curate.images.ImageOptions).
    images: ImageOptions = field(default_factory=ImageOptions)
    toy: ToyCorpusConfig = field(default_factory=ToyCorpusConfig)


@dataclass
class VllmConfig:
    """Arguments for ``vllm.LLM``; any key vLLM accepts can be added under ``engine.vllm.extra``."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    enable_prefix_caching: bool = True
    max_num_seqs: int = 256
    enforce_eager: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpenAIConfig:
    """An existing OpenAI-compatible server (vLLM, SGLang): the released PISM code's setup."""

    base_url: str = "http://127.0.0.1:8000/v1"
    # Name of the environment variable holding the API key (the key itself never goes in a config).
    api_key_env: str = "OPENAI_API_KEY"
    # The served model name; None asks the server (GET /models) and takes the first.
    model_name: Optional[str] = None
    concurrency: int = 10
    timeout_s: float = 120.0
    max_retries: int = 3


@dataclass
class EngineConfig:
    # transformers | vllm | openai
    backend: str = "transformers"
    # A model directory or hub id; "toy" is the tiny Qwen2.5-VL trained offline on the toy corpus,
    # "toy-study" its partly trained 3-layer sibling (curate.toy.presets).
    model: str = "toy"
    # auto | float32 | bfloat16 | float16
    dtype: str = "auto"
    # auto | cpu | cuda
    device: str = "auto"
    # Attention kernel for generation (the CMAB probe does its own math and works with any).
    attn_implementation: str = "sdpa"
    # Longest prompt + response in tokens; longer prompts make that row an error.
    max_model_len: int = 4096
    # Requests per engine call (transformers: one left-padded generate batch).
    batch_size: int = 32
    # Load the model only from a local directory (engine.model must be one): cluster recipes set it,
    # since every scoring actor loads the checkpoint at once and compute nodes are often offline.
    local_files_only: bool = False
    # Cap on image pixels given to the processor (method.md §3: 1,254,400 for Qwen2.5-VL-7B runs).
    max_pixels: Optional[int] = None
    min_pixels: Optional[int] = None
    vllm: VllmConfig = field(default_factory=VllmConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)


DEFAULT_SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in <answer> </answer> tags."
)


@dataclass
class PromptConfig:
    # The system prompt of the paper's GRPO runs; "" sends none.
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # How the question is put to the model; {question} is replaced by the sample's question.
    template: str = "{question}"
    # Where the images go when the question has no <image> placeholders: first (Qwen's convention)
    # or last (after the text). CMAB uses its variant's layout instead (cmab.image_position).
    image_position: str = "first"


@dataclass
class SamplingConfig:
    # The released PISM code samples at 0.7 with 1024 new tokens; 0 means greedy.
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    # Generation stops as soon as the answer is complete; the stop string is kept in the text.
    stop: list[str] = field(default_factory=lambda: ["</answer>"])


@dataclass
class PismBuckets:
    """λ* boundaries (method.md §1). The paper's appendix puts λ* = 0.7 in medium: easy_from=0.8."""

    hard_max: float = 0.4  # hard if λ* <= hard_max
    easy_from: float = 0.7  # easy if λ* >= easy_from or no level fails; medium in between


@dataclass
class PismConfig:
    enabled: bool = True
    # early_exit: stop each level at its first correct answer and each sample at its first failing
    # level (same λ* and bucket as the full grid, a fraction of the generations); full: the whole grid.
    mode: str = "early_exit"
    ratios: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(10)])
    # Mask realizations per ratio (K).
    k: int = 10
    # A level fails when Pc(λ) < tau.
    tau: float = 0.1
    # block (released code) | pixel (paper text) | patch (vision-encoder patch grid)
    mask: str = "block"
    # Patch side in pixels for mask=patch (Qwen2.5-VL merges 2×2 patches of 14 px: 28).
    patch_size: int = 28
    # Seed of every mask realization and generation: (sample id, λ, k, seed) fixes both.
    seed: int = 0
    buckets: PismBuckets = field(default_factory=PismBuckets)
    # early_exit: attempts issued per sample and level in one wave (1 is the cheapest; more keeps a
    # small engine busier at the cost of extra generations after the first success).
    wave_attempts: int = 1
    # Keep every generated answer in the output column pism_answers.
    keep_answers: bool = False


@dataclass
class CmabThresholds:
    """ρ̄ bands (method.md §2): hard in [hard_low, hard_high], medium within [easy_low, easy_high]."""

    easy_low: float = 0.1
    hard_low: float = 0.4
    hard_high: float = 1.6
    easy_high: float = 1.9


@dataclass
class CmabCalibration:
    """Where CMAB's bucket thresholds come from (``curate.scoring.cmab_calibration``).

    ρ̄'s scale is the model's: the published bands were fitted to Qwen2.5-VL-7B's layer 20, and on
    another model nearly every sample can fall into one bucket (the toy demo put 76-102 of 120 there).
    ``calibrated`` puts the four cut points at quantiles of the run's own ρ̄ instead, computed when the
    run ends (an actor sees one batch, never the run's distribution) and recorded in ``run.json``;
    report, select and the run summary apply them. The stored ``cmab_bucket`` column keeps the fixed
    thresholds' bucket. Not part of the scoring fingerprint: it changes no row's ρ̄.
    """

    # fixed: cmab.thresholds (published for Qwen2.5-VL-7B) | calibrated: quantiles of this run's ρ̄.
    mode: str = "fixed"
    # Quantile levels of [easy_low, hard_low, hard_high, easy_high] over the ρ̄ of the rows CMAB
    # answered correctly. The default splits them 30 / 40 / 30 % easy / medium / hard (the easy and
    # medium shares split evenly between low and high ρ̄), near the paper's reasoning split among
    # solved samples (27 / 45 / 27 %), so every bucket has enough rows to select and compare.
    quantiles: list[float] = field(default_factory=lambda: [0.15, 0.35, 0.65, 0.85])
    # Fewer ρ̄ values than this make quantiles noise: the fixed thresholds apply, with a warning
    # logged and recorded in run.json.
    min_values: int = 20


@dataclass
class CmabConfig:
    enabled: bool = False
    # code: one layer at ~0.71·L, mean attention per token, prefill skipped (released code; the
    # published thresholds) | paper: layers 2..L-1, sums, geometric mean over layers.
    variant: str = "code"
    # code variant: the decoder layer index; None = round(L * 20 / 28) (index 20 of 28 for 7B).
    layer: Optional[int] = None
    # Responses generated and graded per sample; unsolved when none is correct.
    k: int = 4
    # first_correct: probe the first correct response | mean_correct: average ρ̄ over correct ones.
    response: str = "first_correct"
    # Bands per variant: sums (paper) scale with the image-token count, so they do not transfer.
    thresholds: dict[str, CmabThresholds] = field(
        default_factory=lambda: {"code": CmabThresholds(), "paper": CmabThresholds()}
    )
    # fixed thresholds above, or calibrated on the run's own ρ̄ (CmabCalibration).
    calibration: CmabCalibration = field(default_factory=CmabCalibration)
    # Query rows per chunk in the probe (bounds its memory).
    probe_chunk: int = 256
    seed: int = 0
    # Where CMAB's prompts put the images: auto (the variant's layout: code → last, the released
    # code's question-before-image layout its "text before the image" span and thresholds assume;
    # paper → prompt.image_position) | first | last. A one-image question's <image> placeholder is
    # taken out so that this layout holds; several placeholders keep their places.
    image_position: str = "auto"

    def prompt_layout(self, prompt: "PromptConfig") -> str:
        """The image position CMAB's prompts use (``auto`` resolved for this variant)."""
        if self.image_position != "auto":
            return self.image_position
        return "last" if self.variant == "code" else prompt.image_position


@dataclass
class AceConfig:
    """RAP's Attention Confidence Estimator (method.md §4): does one response token soak up the final
    layer's attention? For response tokens j, ψ_j = Π_{i≥j} σ·A_ij over the later tokens i attending
    to j, computed in log space from the probe's response→response block (no L×L maps kept)."""

    enabled: bool = True
    sigma: float = 2.0
    # λ_a: the sample is flagged when max_j ψ_j > threshold.
    threshold: float = 0.1
    # raw: the paper's product (its factor count grows with the distance to the end, so late tokens
    # dominate) | normalized: the geometric mean of the factors, ψ_j^(1/(n-j)).
    form: str = "raw"
    # How the final layer's heads are reduced to one map: mean (the paper) | max.
    heads: str = "mean"
    # Which image rollout is scored: first_correct (none correct: no ACE score) | first.
    response: str = "first_correct"
    # Query rows per chunk in the probe (bounds its memory).
    probe_chunk: int = 256


@dataclass
class RapConfig:
    """RAP's estimators (method.md §4). CDE: M rollouts with the image and M with the image removed
    from the prompt, D = acc_img − acc_txt; the image rollouts are PISM's λ = 0 attempts k < M (seeded by
    ``pism.seed``), taken from PISM when it ran in the same pass and generated here where it did not.
    ACE: ``AceConfig``. DRM is a selection rule (``curate select``, kind ``rap``)."""

    enabled: bool = False
    # Rollouts per sample with the image, and without it (M).
    m: int = 5
    # Seed of the text-only rollouts.
    seed: int = 0
    ace: AceConfig = field(default_factory=AceConfig)


@dataclass
class OutputConfig:
    # Directory of Parquet shards of the annotated dataset.
    path: str = "outputs/curate"
    # Skip ids already written by an earlier run into the same directory.
    resume: bool = True
    # Rows per shard of the canonical corpus and of the annotated output: the unit that is written,
    # checkpointed and, when a run is killed, lost and redone.
    rows_per_shard: int = 256


@dataclass
class RayConfig:
    # Cluster to join: "auto" (the latest `ray start` cluster on this machine), HOST:PORT or
    # ray://HOST:PORT. None: RAY_ADDRESS when set (as under `ray job submit`), else a new private local
    # cluster, never one merely found on the machine; "local" always starts a private one.
    address: Optional[str] = None
    # Scoring actor pool size (min..max; equal for a fixed pool).
    min_actors: int = 1
    max_actors: int = 1
    # Resources per scoring actor; never ask for GPUs a cluster does not have (Ray waits forever).
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    # Rows per map_batches call into a scoring actor.
    batch_size: int = 16
    # A crashed scoring actor is restarted at most max_restarts times (-1: always, which can loop
    # forever on a GPU whose memory a dead engine still holds). A batch is retried max_task_retries
    # times, then set aside and its rows retried one per batch in a fresh pool; a row that still
    # crashes becomes an error row.
    max_restarts: int = 3
    max_task_retries: int = 2
    # After losing nodes each pass sizes its pool to the nodes alive (fewer than min_actors if need
    # be) and waits at most this long for room for one actor before the job fails naming the nodes.
    capacity_wait_s: float = 300.0
    # Seconds Ray gets to restart a lost node's scoring actors elsewhere before they are stopped and
    # their rows scored again in the next pass.
    restart_grace_s: float = 60.0
    # Seconds between progress log lines.
    log_every_s: float = 30.0


@dataclass
class CurateConfig:
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    pism: PismConfig = field(default_factory=PismConfig)
    cmab: CmabConfig = field(default_factory=CmabConfig)
    rap: RapConfig = field(default_factory=RapConfig)
    # What counts as correct for PISM and CMAB (curate.grading.GradingOptions); rl/reward.py takes
    # the same keys, so training rewards what difficulty was measured against.
    grading: GradingOptions = field(default_factory=GradingOptions)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> "CurateConfig":
        """Semantic checks the types cannot express; each error names its key."""
        _choice("data.format", self.data.format,
                ["auto", "canonical", "verl", "orsta", "difficulty_sampling", "swift", "hf_disk", "toy"])
        check_key("data.path", self.data.format == "toy" or bool(self.data.path),
               "is required unless data.format=toy")
        check_key("data.limit", self.data.limit is None or self.data.limit > 0, "must be positive or null")
        check_key("data.max_depth", self.data.max_depth >= 2, "must be >= 2 (a row is a dict of values)")
        check_key("data.max_text_chars", self.data.max_text_chars > 0, "must be positive")
        im = self.data.images
        check_key("data.images.max_pixels", im.max_pixels > 0, "must be positive")
        check_key("data.images.max_bytes", im.max_bytes > 0, "must be positive")
        check_key("data.images.max_aspect_ratio", im.max_aspect_ratio >= 1, "must be >= 1")
        try:
            from PIL import ImageColor

            ImageColor.getrgb(im.background)
        except ValueError:
            check_key("data.images.background", False, f"{im.background!r} is not a colour (a name or #rrggbb)")
        _choice("engine.backend", self.engine.backend, ["transformers", "vllm", "openai"])
        _choice("engine.dtype", self.engine.dtype, ["auto", "float32", "bfloat16", "float16"])
        _choice("engine.device", self.engine.device, ["auto", "cpu", "cuda"])
        check_key("engine.batch_size", self.engine.batch_size > 0, "must be positive")
        check_key("engine.max_model_len", self.engine.max_model_len > 0, "must be positive")
        for key in ("min_pixels", "max_pixels"):
            value = getattr(self.engine, key)
            check_key(f"engine.{key}", value is None or value > 0, "must be positive or null")
        check_key("engine.openai.concurrency", self.engine.openai.concurrency > 0, "must be positive")
        self._check_model()
        tp = self.engine.vllm.tensor_parallel_size
        check_key("engine.vllm.tensor_parallel_size", tp >= 1, "must be >= 1")

        check_key("sampling.temperature", self.sampling.temperature >= 0, "must be >= 0")
        check_key("sampling.top_p", 0 < self.sampling.top_p <= 1, "must be in (0, 1]")
        check_key("sampling.max_tokens", self.sampling.max_tokens > 0, "must be positive")
        check_key("prompt.template", "{question}" in self.prompt.template, "must contain {question}")
        _choice("prompt.image_position", self.prompt.image_position, ["first", "last"])
        p = self.pism
        _choice("pism.mode", p.mode, ["early_exit", "full"])
        _choice("pism.mask", p.mask, ["block", "pixel", "patch"])
        check_key("pism.ratios", len(p.ratios) > 0 and all(0 <= r < 1 for r in p.ratios),
               "must be a non-empty list of ratios in [0, 1)")
        check_key("pism.ratios", list(p.ratios) == sorted(set(p.ratios)), "must be strictly increasing")
        check_key("pism.ratios", p.ratios[0] == 0.0, "must start at 0.0 (the unmasked level decides 'unsolved')")
        check_key("pism.k", p.k > 0, "must be positive")
        check_key("pism.tau", 0 < p.tau <= 1, "must be in (0, 1]")
        check_key("pism.wave_attempts", 1 <= p.wave_attempts <= p.k, "must be in [1, pism.k]")
        check_key("pism.patch_size", p.patch_size > 0, "must be positive")
        check_key("pism.buckets", p.buckets.hard_max < p.buckets.easy_from, "hard_max must be < easy_from")
        c = self.cmab
        _choice("cmab.variant", c.variant, ["code", "paper"])
        _choice("cmab.response", c.response, ["first_correct", "mean_correct"])
        _choice("cmab.image_position", c.image_position, ["auto", "first", "last"])
        check_key("cmab.k", c.k > 0, "must be positive")
        check_key(f"cmab.thresholds.{c.variant}", c.variant in c.thresholds, "missing for the chosen variant")
        for name, t in c.thresholds.items():
            check_key(f"cmab.thresholds.{name}", t.easy_low <= t.hard_low <= t.hard_high <= t.easy_high,
                   "must satisfy easy_low <= hard_low <= hard_high <= easy_high")
        cal = c.calibration
        _choice("cmab.calibration.mode", cal.mode, ["fixed", "calibrated"])
        q = list(cal.quantiles)
        check_key("cmab.calibration.quantiles", len(q) == 4,
               f"must list 4 levels [easy_low, hard_low, hard_high, easy_high], got {len(q)}")
        check_key("cmab.calibration.quantiles", all(0 < x < 1 for x in q), f"levels must be in (0, 1), got {q}")
        check_key("cmab.calibration.quantiles", all(a < b for a, b in zip(q, q[1:])),
               f"levels must be strictly increasing, got {q}")
        check_key("cmab.calibration.min_values", cal.min_values >= 4,
               "must be >= 4 (at least one ρ̄ value per cut point)")
        rap = self.rap
        check_key("rap.m", rap.m > 0, "must be positive")
        check_key("rap.ace.sigma", rap.ace.sigma > 0, "must be positive")
        check_key("rap.ace.threshold", rap.ace.threshold > 0, "must be positive")
        _choice("rap.ace.form", rap.ace.form, ["raw", "normalized"])
        _choice("rap.ace.heads", rap.ace.heads, ["mean", "max"])
        _choice("rap.ace.response", rap.ace.response, ["first_correct", "first"])
        check_key("rap.ace.probe_chunk", rap.ace.probe_chunk > 0, "must be positive")
        check_key("pism.enabled", p.enabled or c.enabled or rap.enabled,
                  "enable at least one of pism, cmab, rap")
        r = self.ray
        check_key("ray.min_actors", 1 <= r.min_actors <= r.max_actors, "must satisfy 1 <= min_actors <= max_actors")
        check_key("ray.batch_size", r.batch_size > 0, "must be positive")
        check_key("ray.num_gpus", r.num_gpus >= 0, "must be >= 0")
        check_key("ray.num_gpus", r.num_gpus <= 1 or float(r.num_gpus).is_integer(),
               "must be a whole number above 1 (Ray cannot split several GPUs)")
        check_key("ray.num_cpus", r.num_cpus > 0, "must be positive")
        check_key("ray.max_restarts", r.max_restarts >= -1, "must be >= -1 (-1: always restart)")
        check_key("ray.max_task_retries", r.max_task_retries >= 0,
               "must be >= 0 (a batch that always crashes its actor would otherwise be retried forever)")
        check_key("ray.capacity_wait_s", r.capacity_wait_s > 0, "must be positive")
        check_key("ray.restart_grace_s", r.restart_grace_s >= 0, "must be >= 0")
        check_key("output.rows_per_shard", self.output.rows_per_shard > 0, "must be positive")
        return self


    def _check_model(self) -> None:
        e = self.engine
        if e.backend == "openai":
            return
        try:
            toy = is_toy_model(e.model)
        except ValueError as err:  # "toy-…" naming no preset
            check_key("engine.model", False, str(err))
        check_key("engine.model", not (toy and self.ray.num_gpus > 0),
               f"{e.model!r} is an offline CPU toy model, and this run gives each scoring actor "
               f"ray.num_gpus={self.ray.num_gpus:g}: pass engine.model=<a local checkpoint directory>")
        if e.local_files_only and not (Path(e.model) / "config.json").is_file():
            name = e.model if e.model.count("/") == 1 and not Path(e.model).exists() else "ORG/NAME"
            check_key("engine.model", False,
                   f"{e.model!r} is not a local model directory (no config.json) and engine.local_files_only "
                   "is set: every scoring actor loads the checkpoint at once, from a path all nodes can "
                   f"read. Download it once (hf download {name} --local-dir /shared/models/{name.split('/')[-1]}) "
                   "and pass engine.model=/shared/models/...")
        looks_local = e.model.startswith(("/", "./", "../", "~")) or e.model.count("/") > 1
        check_key("engine.model", toy or not looks_local or Path(e.model).expanduser().exists(),
               f"{e.model!r} does not exist (a local checkpoint directory, or a hub id such as "
               "Qwen/Qwen2.5-VL-7B-Instruct)")


T = TypeVar("T")


def _wrap(err: OmegaConfBaseException, key: str = "?") -> ConfigError:
    key = getattr(err, "full_key", None) or key
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(f"config key '{key}': {first}")


def load_structured(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge ``schema``'s defaults, the YAML at ``path`` and dotlist ``overrides`` into a typed object."""
    try:
        cfg: DictConfig = OmegaConf.structured(schema)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for override in overrides:  # one at a time, so that an error names its key
            try:
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
            except OmegaConfBaseException as err:
                raise _wrap(err, override.partition("=")[0]) from None
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise _wrap(err) from None
    except ValueError as err:  # a dataclass's own check ("grading.box_iou: ..."), key first
        key, _, why = str(err).partition(": ")
        raise ConfigError(f"config key '{key}': {why}") from None
    validate = getattr(obj, "validate", None)
    return validate() if callable(validate) else obj  # type: ignore[return-value]


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CurateConfig:
    """The curation config: defaults ← YAML recipe ← overrides, validated."""
    return load_structured(CurateConfig, path, overrides)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (recorded with every run's output)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))

