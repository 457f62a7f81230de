"""Preference pairs from graded rollouts: the data of MPO (``python -m rl mpo``, method.md §9).

For every prompt of a verl RL parquet (the ``verl`` export of ``python -m curate select``), K responses
are sampled from the model about to be trained, with the project's engines (``curate.engines``:
transformers on CPU, vLLM on GPUs), and each is graded by ``curate.grading`` exactly as ``rl eval``
and GRPO's reward judge it (``rl.eval.grade_response``). A prompt with at least one correct and one
incorrect response gives up to ``pairs.pairs_per_prompt`` pairs: chosen = a correct response, rejected
= an incorrect one, the same prompt and images (R1V2 / InternVL-MPO's rule with the graders as the
reward). A prompt answered all right or all wrong states no preference: it is dropped and counted.

The prompt is the parquet's ``prompt`` column as verl feeds it to the policy (``rl.eval.load_samples``),
so the pairs are built on the prompt difficulty was measured on and GRPO trains on.

Written to a directory, so that training can be rerun without sampling again:

- ``pairs.parquet``: ``images`` (HF ``List(Image())``), ``prompt``, ``chosen``, ``rejected`` (TRL's
  conversational vision-preference layout), ``id``, ``task``, ``ground_truth``;
- ``manifest.json`` (written last): the settings' fingerprint and the counts, per task: prompts,
  kept, dropped as all correct / all wrong / failed (no response came back), pairs.

Deterministic: response i of a prompt is sampled with seed ``derived_seed("mpo-pairs", id, seed) + i``
(the engines' convention, independent of batching) and the pairs are drawn with a generator seeded by
the same (seed, id).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from curate.config import EngineConfig, SamplingConfig, check_key

__all__ = [
    "PairsConfig",
    "PairsManifest",
    "Rollouts",
    "build_pairs",
    "differences",
    "ensure_pairs",
    "fingerprint",
    "pick_pairs",
    "sample_rollouts",
    "trl_messages",
    "verdict",
]

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.parquet"
MANIFEST_FILE = "manifest.json"
SEED_LABEL = "mpo-pairs"
VERDICTS = ("kept", "all_correct", "all_wrong", "failed")
ENGINE_BACKENDS = ("transformers", "vllm")
# Weight files whose name, size and modification time identify a local model's weights.
_WEIGHTS = (".safetensors", ".bin", ".pt")


@dataclass
class PairsConfig:
    """``pairs:`` of an MPO recipe: how the preference pairs are sampled and chosen."""

    # Responses sampled per prompt (K); a prompt needs one correct and one incorrect among them.
    k: int = 8
    # Pairs kept per prompt at most, each a distinct (correct, incorrect) combination of distinct texts.
    pairs_per_prompt: int = 2
    # Sampling seeds (response i of a prompt: derived_seed("mpo-pairs", id, seed) + i) and pair draws.
    seed: int = 0
    # Only the first N usable rows of the data (null: all of them).
    limit: Optional[int] = None
    # The policy as GRPO's rollout samples it: temperature 1.0, to EOS (no stop string).
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, stop=[]))
    # The engine (curate.config.EngineConfig: transformers or vllm); its model is set to the model
    # being trained, whatever engine.model says.
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> "PairsConfig":
        check_key("pairs.k", self.k >= 2, "must be >= 2 (a pair needs a correct and an incorrect response)")
        check_key("pairs.pairs_per_prompt", self.pairs_per_prompt >= 1, "must be >= 1")
        check_key("pairs.limit", self.limit is None or self.limit > 0, "must be positive or null")
        s = self.sampling
        check_key("pairs.sampling.temperature", s.temperature > 0, "must be > 0 (greedy gives one response)")
        check_key("pairs.sampling.top_p", 0 < s.top_p <= 1, "must be in (0, 1]")
        check_key("pairs.sampling.max_tokens", s.max_tokens > 0, "must be positive")
        e = self.engine
        check_key(
            "pairs.engine.backend",
            e.backend in ENGINE_BACKENDS,
            f"{e.backend!r} is not one of {list(ENGINE_BACKENDS)}",
        )
        check_key("pairs.engine.batch_size", e.batch_size > 0, "must be positive")
        check_key("pairs.engine.max_model_len", e.max_model_len > 0, "must be positive")
        return self

    def engine_config(self, model: str) -> EngineConfig:
        return dataclasses.replace(self.engine, model=model)


@dataclass
class Rollouts:
    """One prompt's K responses and their grades (``correct`` in response order)."""

    sample: Any  # rl.eval.EvalSample
    texts: list[str]
    correct: list[bool]
    error: Optional[str] = None


@dataclass
class PairsManifest:
    """What ``manifest.json`` holds: how the pairs were built and what came of it."""

    fingerprint: dict[str, Any]
    prompts: int
    pairs: int
    counts: dict[str, int]  # verdict -> prompts
    per_task: dict[str, dict[str, int]]  # task -> {prompts, <verdicts>, pairs}
    responses: int
    correct_responses: int
    read_errors: int
    first_read_errors: list[str]
    seconds: float

    @classmethod
    def read(cls, directory: Path) -> Optional["PairsManifest"]:
        path = directory / MANIFEST_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def verdict(rollouts: Rollouts) -> str:
    """``failed`` (no response), ``all_correct``, ``all_wrong`` or ``kept`` (both kinds present)."""
    if not rollouts.texts:
        return "failed"
    if all(rollouts.correct):
        return "all_correct"
    if not any(rollouts.correct):
        return "all_wrong"
    return "kept"


def pick_pairs(texts: Sequence[str], correct: Sequence[bool], limit: int, rng: Any) -> list[tuple[str, str]]:
    """Up to ``limit`` (chosen, rejected) pairs: chosen a correct text, rejected an incorrect one.

    Each pair is a distinct combination of distinct texts (a response sampled twice counts once);
    each next pair is the unused combination whose two responses have served least so far, ties broken
    in the order of ``rng``'s permutation, so a few pairs spread over as many responses as there are.
    """
    good = list(dict.fromkeys(t for t, ok in zip(texts, correct) if ok))
    bad = list(dict.fromkeys(t for t, ok in zip(texts, correct) if not ok))
    combos = [(g, b) for g in good for b in bad]
    order = [combos[i] for i in rng.permutation(len(combos))]
    served: Counter[str] = Counter()
    pairs: list[tuple[str, str]] = []
    for _ in range(min(limit, len(combos))):
        best = min((c for c in order if c not in pairs), key=lambda c: served[c[0]] + served[c[1]])
        pairs.append(best)
        served.update(best)
    return pairs


def trl_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Engine chat messages as TRL's structured turns: every content a list of ``{"type", "text"}``
    parts (one Arrow type for the whole column), ``{"type": "image", "text": None}`` where the engine
    puts an image (TRL's collator fills those in order from ``images``)."""
    out = []
    for m in messages:
        content = m["content"]
        parts = (
            [{"type": "text", "text": content}]
            if isinstance(content, str)
            else [
                {"type": "image", "text": None}
                if p.get("type") == "image"
                else {"type": "text", "text": p["text"]}
                for p in content
            ]
        )
        out.append({"role": m["role"], "content": parts})
    return out


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def request_seed(sample_id: str, seed: int) -> int:
    """The seed of response 0 of a prompt; response i is sampled with this + i."""
    from curate.scoring.masks import derived_seed

    return derived_seed(SEED_LABEL, sample_id, seed)


def sample_rollouts(
    engine: Any, samples: Iterable[Any], cfg: PairsConfig, options: Any
) -> Iterator[Rollouts]:
    """K graded responses per sample, ``cfg.engine.batch_size`` prompts per engine call."""
    from curate.engines import GenerationRequest, SamplingParams
    from rl.eval import grade_response

    s = cfg.sampling
    params = SamplingParams(
        temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, stop=tuple(s.stop)
    )
    pending: list[Any] = []

    def flush() -> Iterator[Rollouts]:
        requests = [
            GenerationRequest(
                messages=x.messages, images=x.images, seed=request_seed(x.id, cfg.seed), n=cfg.k
            )
            for x in pending
        ]
        for sample, result in zip(pending, engine.generate(requests, params)):
            texts = [c.text for c in result.completions] if result.ok else []
            correct = [grade_response(sample, t, options)["correct"] for t in texts]
            yield Rollouts(sample, texts, correct, result.error)
        pending.clear()

    for sample in samples:
        pending.append(sample)
        if len(pending) >= cfg.engine.batch_size:
            yield from flush()
    if pending:
        yield from flush()


def _pairs_schema() -> Any:
    import datasets

    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    turns = datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)})
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "ground_truth": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "prompt": turns,
            "chosen": turns,
            "rejected": turns,
        }
    )
    return features.arrow_schema


def build_pairs(rollouts: Iterable[Rollouts], path: Path, cfg: PairsConfig) -> dict[str, Any]:
    """Write the pairs of ``rollouts`` to the Parquet file ``path`` (atomically); the counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.images import encode_png
    from curate.selection.rules import rng_for

    schema = _pairs_schema()
    per_task: dict[str, Counter[str]] = defaultdict(Counter)
    responses = correct_responses = 0
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for r in rollouts:
                s = r.sample
                outcome = verdict(r)
                counts = per_task[s.task]
                counts["prompts"] += 1
                counts[outcome] += 1
                responses += len(r.texts)
                correct_responses += sum(r.correct)
                if outcome != "kept":
                    continue
                pairs = pick_pairs(
                    r.texts, r.correct, cfg.pairs_per_prompt, rng_for(cfg.seed, SEED_LABEL, s.id)
                )
                counts["pairs"] += len(pairs)
                images = [{"bytes": encode_png(im), "path": None} for im in s.images]
                prompt = trl_messages(s.messages)
                rows = [
                    {
                        "id": s.id,
                        "task": s.task,
                        "ground_truth": s.ground_truth,
                        "images": images,
                        "prompt": prompt,
                        "chosen": _assistant(chosen),
                        "rejected": _assistant(rejected),
                    }
                    for chosen, rejected in pairs
                ]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    tasks = sorted(per_task)
    return {
        "prompts": sum(per_task[t]["prompts"] for t in tasks),
        "pairs": sum(per_task[t]["pairs"] for t in tasks),
        "counts": {v: sum(per_task[t][v] for t in tasks) for v in VERDICTS},
        "per_task": {t: {k: per_task[t][k] for k in ("prompts", *VERDICTS, "pairs")} for t in tasks},
        "responses": responses,
        "correct_responses": correct_responses,
    }


def _files(path: Path, weights_only: bool = False) -> list[list[Any]]:
    """[name, size, mtime_ns] of a file, or of a directory's Parquet (or weight + config) files."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    if not path.is_dir():
        return []
    if weights_only:
        found = [p for p in path.iterdir() if p.suffix in _WEIGHTS or p.name == "config.json"]
    else:
        found = [p for p in path.rglob("*.parquet") if not p.name.startswith(("_", "."))]
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(found)]


def fingerprint(cfg: PairsConfig, model: str, data: str, options: Any) -> dict[str, Any]:
    """What decides the pairs: the settings (not the engine's batch size: results do not depend on
    batching), the grading options, the model's weights and the data files (names, sizes, times)."""
    settings = dataclasses.asdict(cfg)
    settings["engine"].pop("batch_size")
    settings["engine"].pop("model")
    return {
        "pairs": settings,
        "grading": dataclasses.asdict(options),
        "model": {"path": model, "files": _files(Path(model), weights_only=True)},
        "data": {"path": data, "files": _files(Path(data))},
    }


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two fingerprints differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def ensure_pairs(
    cfg: PairsConfig,
    model: str,
    data: str,
    directory: Path,
    options: Any,
    make_engine: Optional[Callable[[EngineConfig], Any]] = None,
) -> PairsManifest:
    """The pairs in ``directory``: built unless they already were with the same fingerprint.

    Pairs built with other settings are never overwritten: that fails naming what differs.
    """
    from curate.config import ConfigError
    from curate.engines import create_engine
    from rl.eval import load_samples

    want = fingerprint(cfg, model, data, options)
    have = PairsManifest.read(directory)
    if have is not None and (directory / PAIRS_FILE).is_file():
        changed = differences(have.fingerprint, want)
        if not changed:
            log.info("pairs: %s is up to date (%d pairs); not sampling again", directory, have.pairs)
            return have
        raise ConfigError(
            f"{directory} holds pairs built with other settings (they differ in {', '.join(changed)}); "
            "use another output directory or delete that one"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    started = time.monotonic()
    read_errors: list[str] = []
    _, samples = load_samples(data, errors=read_errors)
    if cfg.limit is not None:
        samples = (s for i, s in zip(range(cfg.limit), samples))
    with (make_engine or create_engine)(cfg.engine_config(model)) as engine:
        counts = build_pairs(sample_rollouts(engine, samples, cfg, options), directory / PAIRS_FILE, cfg)
    manifest = PairsManifest(
        fingerprint=want,
        read_errors=len(read_errors),
        first_read_errors=read_errors[:20],
        seconds=round(time.monotonic() - started, 1),
        **counts,
    )
    (directory / MANIFEST_FILE).write_text(json.dumps(dataclasses.asdict(manifest), indent=2) + "\n")
    log.info(
        "pairs: %d prompts, %d kept, %d pairs (dropped: %d all correct, %d all wrong, %d failed) in %.0f s",
        manifest.prompts,
        counts["counts"]["kept"],
        manifest.pairs,
        counts["counts"]["all_correct"],
        counts["counts"]["all_wrong"],
        counts["counts"]["failed"],
        manifest.seconds,
    )
    return manifest
