"""Iterative rejection-sampling SFT (Skywork R1V, method.md §8): ``python -m rl iterate``.

    python -m rl iterate --config configs/rl/toy_iterate.yaml [key=value ...]

Round t = 1 … T starts from the model M_{t-1} (M_0 = ``model``):

1. ``generate``: K responses per training sample with M_{t-1} on the project's engines (transformers
   on CPU, vLLM on GPUs), each judged as GRPO rewards it (``rl.eval.grade_response``: the grader's δ and
   ``rl.reward``'s score);
2. ``keep``: D_t = {responses whose reward reaches τ_t} ∪ {samples M_{t-1} answered wrongly (none of
   its K responses correct), with their reference response}, written as a verl SFT parquet;
3. ``sft``: verl's SFT trainer from M_{t-1} on D_t (``python -m rl sft`` with ``sft.recipe``; on a CPU
   its ``hardmode.cpu``); M_t is the last checkpoint's ``huggingface/`` with M_0's processor restored;
4. ``eval``: ``python -m rl eval`` of M_t on the held-out data (M_0 is evaluated once, as round 0).

With ``grpo.recipe`` set, GRPO (``python -m rl train``) from M_T on the training set ends the loop, and
its last checkpoint is evaluated too. Every step leaves a marker holding what defined it; a rerun skips
the steps whose definition is unchanged and whose output is there, and runs the first that changed
with everything after it (resumable per round). ``report.json``/``report.md`` are rewritten at the end:
kept responses and reference samples per task, accuracy before and after every round.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from curate.config import ConfigError, EngineConfig, check_key, load_structured

log = logging.getLogger(__name__)

__all__ = ["IterateConfig", "KeepSection", "Round", "keep_responses", "main", "run_iterate"]


@dataclass
class GenerationSection:
    # Responses per training sample (K) from the round's starting model.
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0
    # The engine (curate.config.EngineConfig); its model is set to the round's starting model.
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class RewardModelSection:
    """The sequence-classification reward model of ``keep.by: model``, local (``path``) or served
    (``base_url``), exactly one of them: it scores the prompt's text turns (``<image>`` markers where the
    images were; it sees no pixels) with the response as the assistant turn, through the model's chat
    template; the score is the first logit, unactivated either way, so a τ means the same for both."""

    # A local HF model directory (AutoModelForSequenceClassification).
    path: Optional[str] = None
    # Or a server of one: `vllm serve MODEL --runner pooling` (its /classify, at the server's root: a
    # trailing /v1 is dropped).
    base_url: Optional[str] = None
    # The served model's name (null: the server's own).
    model: Optional[str] = None
    # Name of the environment variable holding the server's API key (the key never goes in a config).
    api_key_env: str = "OPENAI_API_KEY"
    # Per request; timeouts, connection errors, 5xx, 408 and 429 are retried with backoff.
    timeout_s: float = 120.0
    max_retries: int = 3
    # Responses scored at once: one forward batch (path), or requests in flight (base_url).
    batch_size: int = 16
    # path only.
    device: str = "auto"


@dataclass
class KeepSection:
    # τ_t per round (round t takes tau[t-1]; a shorter list repeats its last value): a response is
    # kept when its `by` value is >= τ_t.
    tau: list[float] = field(default_factory=lambda: [1.0])
    # reward: rl.reward's GRPO score (accuracy + format) | acc: the grader's δ (1 correct, 0 not) |
    # model: the reward model's score (reward_model)
    by: str = "reward"
    # With by=model: keep only responses the graders also judge correct.
    require_correct: bool = True
    reward_model: RewardModelSection = field(default_factory=RewardModelSection)
    # Distinct kept responses per sample at most (the first ones by seed); 0: every one.
    max_per_sample: int = 1
    # The assistant turn of a sample the model answered wrongly; {ground_truth} is replaced. The
    # paper's SFT targets are the ground truth alone; a template that matches the system prompt's
    # format keeps the format reward of later rounds.
    reference_template: str = "{ground_truth}"


@dataclass
class StageSection:
    # A recipe of `python -m rl sft` / `python -m rl train` (null: the stage does not run).
    recipe: Optional[str] = None
    # verl overrides appended to each of its commands.
    overrides: list[str] = field(default_factory=list)


@dataclass
class EvalSection:
    max_tokens: int = 1024
    batch_size: int = 16
    # More `python -m rl eval` arguments (e.g. ["--limit", "200"]).
    args: list[str] = field(default_factory=list)


@dataclass
class IterateConfig:
    # The starting model: an HF directory or a toy preset name.
    model: str = "???"
    # Training samples: a verl RL parquet (curate select's `verl` export).
    train_files: str = "???"
    # Held-out data for `python -m rl eval` (never seen in training).
    heldout: str = "???"
    # Output directory: round-<t>/ per round, steps/ (markers), logs/, report.json, report.md.
    output: str = "???"
    rounds: int = 2
    generation: GenerationSection = field(default_factory=GenerationSection)
    keep: KeepSection = field(default_factory=KeepSection)
    sft: StageSection = field(default_factory=lambda: StageSection(recipe="configs/rl/toy_sft.yaml"))
    grpo: StageSection = field(default_factory=StageSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self) -> "IterateConfig":
        for key in ("model", "train_files", "heldout", "output"):
            check_key(key, getattr(self, key) not in ("", "???"), "is required")
        check_key("rounds", self.rounds >= 1, "must be >= 1")
        check_key("generation.k", self.generation.k >= 1, "must be >= 1")
        check_key("generation.temperature", self.generation.temperature >= 0, "must be >= 0")
        check_key("generation.max_tokens", self.generation.max_tokens > 0, "must be positive")
        check_key("keep.tau", bool(self.keep.tau), "list at least one threshold")
        check_key(
            "keep.by",
            self.keep.by in ("reward", "acc", "model"),
            f"{self.keep.by!r} is not one of ['reward', 'acc', 'model']",
        )
        rm = self.keep.reward_model
        check_key(
            "keep.reward_model.path" if not rm.base_url else "keep.reward_model.base_url",
            self.keep.by != "model" or bool(rm.path) != bool(rm.base_url),
            "keep.by=model needs exactly one of keep.reward_model.path (a local sequence-classification "
            "model directory) and keep.reward_model.base_url (a server of one)",
        )
        check_key("keep.reward_model.batch_size", rm.batch_size >= 1, "must be >= 1")
        check_key(
            "keep.max_per_sample", self.keep.max_per_sample >= 0, "must be >= 0 (0: every kept response)"
        )
        check_key(
            "keep.reference_template",
            "{ground_truth}" in self.keep.reference_template,
            "must contain {ground_truth}",
        )
        check_key("sft.recipe", bool(self.sft.recipe), "is required: the SFT recipe of every round")
        for key in ("sft.recipe", "grpo.recipe"):
            recipe = getattr(self, key.split(".")[0]).recipe
            check_key(key, recipe is None or Path(recipe).is_file(), f"{recipe!r} is not a file")
        return self

    def tau(self, round_: int) -> float:
        return self.keep.tau[min(round_, len(self.keep.tau)) - 1]


# ---- what a round keeps ------------------------------------------------------------------------------


@dataclass
class Graded:
    """One sample of the training set with its K graded responses."""

    id: str
    task: str
    prompt: list[dict]  # text turns, <image> markers
    images: list[bytes]
    ground_truth: str
    data_source: Optional[str]
    responses: list[dict]  # {"text", "correct", "reward", "acc"} in seed order


def keep_responses(samples: list[Graded], keep: KeepSection, tau: float) -> tuple[list[dict], dict[str, Any]]:
    """The round's SFT rows (D_t) and what was kept, per task.

    A response is kept when its ``keep.by`` value is >= ``tau`` (and, by the reward model, when the
    graders judge it correct unless ``require_correct`` is off; at most ``max_per_sample`` distinct
    texts per sample, first by seed); a sample none of whose responses is correct enters with its
    reference response too (the previous model answered it wrongly).
    """
    rows: list[dict] = []
    kept: Counter = Counter()
    reference: Counter = Counter()
    for s in samples:
        chosen: list[str] = []
        for r in s.responses:
            vetoed = keep.by == "model" and keep.require_correct and not r["correct"]
            if r[keep.by] >= tau and not vetoed and r["text"] not in chosen:
                chosen.append(r["text"])
        if keep.max_per_sample:
            chosen = chosen[: keep.max_per_sample]
        wrong = not any(r["correct"] for r in s.responses)
        if wrong:
            chosen.append(keep.reference_template.replace("{ground_truth}", s.ground_truth))
            reference[s.task] += 1
        kept[s.task] += len(chosen) - wrong
        for n, text in enumerate(chosen):
            rows.append(
                {
                    "messages": [*s.prompt, {"role": "assistant", "content": text}],
                    "images": [{"bytes": b, "path": None} for b in s.images],
                    "data_source": s.data_source,
                    "ability": s.task,
                    "extra_info": {
                        "id": s.id,
                        "task": s.task,
                        "source": "reference" if wrong and n == len(chosen) - 1 else "response",
                    },
                }
            )
    tasks = sorted({s.task for s in samples})
    counts = {
        "samples": len(samples),
        "tau": tau,
        "kept_responses": {t: kept[t] for t in tasks},
        "reference_samples": {t: reference[t] for t in tasks},
        "rows": len(rows),
        "correct_rate": _mean([r["correct"] for s in samples for r in s.responses]),
    }
    return rows, counts


def _mean(values: list[Any]) -> Optional[float]:
    return round(sum(values) / len(values), 4) if values else None


# ---- the steps ---------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    definition: dict[str, Any]  # what its output depends on (JSON)
    run: Callable[[], None]
    outputs: list[Path]


@dataclass
class Round:
    """Paths of round ``t`` under the output directory (round 0: the starting model's evaluation)."""

    root: Path
    t: int

    @property
    def dir(self) -> Path:
        return self.root / f"round-{self.t}"

    @property
    def responses(self) -> Path:
        return self.dir / "responses.jsonl"

    @property
    def data(self) -> Path:
        return self.dir / "sft_data.parquet"

    @property
    def kept(self) -> Path:
        return self.dir / "kept.json"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "sft"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def eval(self) -> Path:
        return self.dir / "eval.json"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Iteration:
    """The steps of one ``rl iterate`` configuration, and running them with markers."""

    def __init__(self, cfg: IterateConfig, execute: Callable[[list[str], Path], int] | None = None):
        self.cfg = cfg
        self.root = Path(cfg.output).resolve()
        self.execute = execute or _execute
        self.base = _model_dir(cfg.model)

    def model_of(self, t: int) -> str:
        return self.base if t == 0 else str(Round(self.root, t).model)

    def steps(self) -> list[Step]:
        cfg = self.cfg
        out: list[Step] = [self._eval_step(0)]
        for t in range(1, cfg.rounds + 1):
            r = Round(self.root, t)
            generation = {
                "model": self.model_of(t - 1),
                "train_files": cfg.train_files,
                "round": t,
                **dataclasses.asdict(cfg.generation),
                # the reward model's scores are written with the responses
                "reward_model": dataclasses.asdict(cfg.keep.reward_model) if cfg.keep.by == "model" else None,
            }
            out.append(Step(f"round-{t}.generate", generation, lambda t=t: self._generate(t), [r.responses]))
            keep = {"keep": dataclasses.asdict(cfg.keep), "tau": cfg.tau(t)}
            out.append(Step(f"round-{t}.keep", keep, lambda t=t: self._keep(t), [r.data, r.kept]))
            sft = {
                "recipe": cfg.sft.recipe,
                "recipe_text": Path(cfg.sft.recipe).read_text(),
                "overrides": cfg.sft.overrides,
                "model": self.model_of(t - 1),
            }
            out.append(Step(f"round-{t}.sft", sft, lambda t=t: self._sft(t), [r.model]))
            out.append(self._eval_step(t))
        if cfg.grpo.recipe:
            grpo = {
                "recipe": cfg.grpo.recipe,
                "recipe_text": Path(cfg.grpo.recipe).read_text(),
                "overrides": cfg.grpo.overrides,
                "model": self.model_of(cfg.rounds),
            }
            out.append(Step("grpo", grpo, self._grpo, [self.root / "grpo" / "checkpoints"]))
            out.append(
                Step(
                    "grpo.eval",
                    {"eval": dataclasses.asdict(cfg.eval), "heldout": cfg.heldout},
                    self._grpo_eval,
                    [self.root / "grpo" / "eval.json"],
                )
            )
        return out

    def _eval_step(self, t: int) -> Step:
        r = Round(self.root, t)
        definition = {
            "model": self.model_of(t),
            "heldout": self.cfg.heldout,
            **dataclasses.asdict(self.cfg.eval),
        }
        return Step(f"round-{t}.eval", definition, lambda: self._evaluate(self.model_of(t), r.eval), [r.eval])

    # -- running ------------------------------------------------------------------------------------

    def run(self) -> bool:
        """Run what is not current; False when a step failed (the later ones are not run)."""
        markers = self.root / "steps"
        markers.mkdir(parents=True, exist_ok=True)
        steps = self.steps()
        rerun = False
        done_before = 0
        for step in steps:
            marker = markers / f"{step.name}.json"
            token = _digest(step.definition)
            current = (
                not rerun
                and marker.is_file()
                and json.loads(marker.read_text()).get("token") == token
                and all(p.exists() for p in step.outputs)
            )
            if current:
                done_before += 1
                continue
            rerun = True
            marker.unlink(missing_ok=True)
            print(f"[{step.name}] running", flush=True)
            try:
                step.run()
            except StepFailed as err:
                print(f"[{step.name}] FAILED: {err}", flush=True)
                write_report(self)
                return False
            marker.write_text(json.dumps({"token": token, "definition": step.definition}, default=str))
            print(f"[{step.name}] done", flush=True)
        print(
            f"{len(steps)} steps, {done_before} finished before, {len(steps) - done_before} run", flush=True
        )
        write_report(self)
        return True

    def _command(self, argv: list[str], log_name: str) -> None:
        log_path = self.root / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        code = self.execute([sys.executable, "-m", *argv], log_path)
        if code != 0:
            raise StepFailed(f"exit status {code}; see {log_path}")

    # -- the steps' work ------------------------------------------------------------------------------

    def _generate(self, t: int) -> None:
        from curate.engines import GenerationRequest, SamplingParams, create_engine
        from curate.grading import GradingOptions
        from curate.grading.boxes import box_format_for_model
        from curate.images import encode_png
        from curate.io.writers import text_turns
        from curate.scoring.masks import derived_seed
        from rl.eval import grade_response, load_samples

        g, r = self.cfg.generation, Round(self.root, t)
        model = self.model_of(t - 1)
        errors: list[str] = []
        _, samples = load_samples(self.cfg.train_files, errors=errors)
        samples = list(samples)
        if errors:
            log.warning(
                "%d training rows could not be read and are left out (first: %s)", len(errors), errors[0]
            )
        params = SamplingParams(temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, stop=())
        options = GradingOptions(answer_box_format=box_format_for_model(model))
        requests = [
            GenerationRequest(s.messages, s.images, seed=derived_seed("iterate", s.id, t, g.seed), n=g.k)
            for s in samples
        ]
        with create_engine(dataclasses.replace(g.engine, model=model)) as engine:
            results = engine.generate(requests, params)
        r.dir.mkdir(parents=True, exist_ok=True)
        records = []
        for s, result in zip(samples, results):
            responses = []
            for c in result.completions if result.ok else []:
                graded = grade_response(s, c.text, options)
                responses.append(
                    {
                        "text": c.text,
                        "correct": graded["correct"],
                        "acc": graded["acc"],
                        "reward": graded["reward"],
                    }
                )
            records.append((s, result, responses))
        if self.cfg.keep.by == "model":
            score_with_reward_model(
                self.cfg.keep.reward_model, [(text_turns(s.messages), resp) for s, _, resp in records]
            )
        tmp = r.responses.with_suffix(".tmp")
        with tmp.open("w") as handle:
            for s, result, responses in records:
                record = {
                    "id": s.id,
                    "task": s.task,
                    "prompt": text_turns(s.messages),
                    "images": [encode_png(im).hex() for im in s.images],
                    "ground_truth": s.ground_truth,
                    "data_source": s.data_source,
                    "responses": responses,
                    "error": result.error,
                }
                handle.write(json.dumps(record) + "\n")
        tmp.replace(r.responses)

    def _keep(self, t: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from curate.selection.export import verl_sft_schema

        r = Round(self.root, t)
        samples = []
        for line in r.responses.read_text().splitlines():
            rec = json.loads(line)
            if rec["error"] is None:  # an engine error: no responses to judge, the sample sits this round out
                images = [bytes.fromhex(h) for h in rec["images"]]
                samples.append(
                    Graded(
                        rec["id"],
                        rec["task"],
                        rec["prompt"],
                        images,
                        rec["ground_truth"],
                        rec["data_source"],
                        rec["responses"],
                    )
                )
        rows, counts = keep_responses(samples, self.cfg.keep, self.cfg.tau(t))
        if not rows:
            raise StepFailed(
                f"round {t} keeps no row: no response reached tau {self.cfg.tau(t)} and no sample was "
                "answered wrongly"
            )
        provenance = [pa.field(name, pa.string()) for name in ("id", "task", "source")]
        pq.write_table(pa.Table.from_pylist(rows, schema=verl_sft_schema(provenance)), r.data)
        r.kept.write_text(json.dumps(counts, indent=2))

    def _sft(self, t: int) -> None:
        from rl.study.plan import latest_checkpoint

        r, cfg = Round(self.root, t), self.cfg
        shutil.rmtree(r.checkpoints, ignore_errors=True)  # a changed round starts its SFT afresh
        self._command(
            [
                "rl",
                "sft",
                "--config",
                cfg.sft.recipe,
                f"model.path={self.model_of(t - 1)}",
                f"data.train_files={r.data}",
                f"trainer.default_local_dir={r.checkpoints}",
                f"trainer.experiment_name=iterate_round{t}",
                *cfg.sft.overrides,
            ],
            f"round-{t}.sft",
        )
        last = latest_checkpoint(r.checkpoints)
        if last is None or not (last / "huggingface").is_dir():
            raise StepFailed(
                f"no global_step_N/huggingface under {r.checkpoints} (checkpoint.save_contents needs "
                "hf_model)"
            )
        _publish(last / "huggingface", r.model, self.base)

    def _evaluate(self, model: str, out: Path) -> None:
        e = self.cfg.eval
        out.parent.mkdir(parents=True, exist_ok=True)
        self._command(
            [
                "rl",
                "eval",
                model,
                self.cfg.heldout,
                "--out",
                str(out),
                "--max-tokens",
                str(e.max_tokens),
                "--batch-size",
                str(e.batch_size),
                *e.args,
            ],
            out.parent.name + ".eval",
        )

    def _grpo(self) -> None:
        cfg = self.cfg
        self._command(
            [
                "rl",
                "train",
                "--config",
                cfg.grpo.recipe,
                f"actor_rollout_ref.model.path={self.model_of(cfg.rounds)}",
                f"data.train_files={cfg.train_files}",
                f"trainer.default_local_dir={self.root / 'grpo' / 'checkpoints'}",
                *cfg.grpo.overrides,
            ],
            "grpo",
        )

    def _grpo_eval(self) -> None:
        from rl.study.plan import latest_checkpoint

        last = latest_checkpoint(self.root / "grpo" / "checkpoints")
        if last is None:
            raise StepFailed("GRPO wrote no checkpoint")
        self._evaluate(str(last), self.root / "grpo" / "eval.json")


class StepFailed(RuntimeError):
    """A step's command failed or left no output; the message says where to look."""


def _execute(command: list[str], log_path: Path) -> int:
    with log_path.open("w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode


def score_with_reward_model(cfg: RewardModelSection, items: list[tuple[list[dict], list[dict]]]) -> None:
    """Add the reward model's score (``"model"``) to every response of every (prompt turns, responses)."""
    if cfg.base_url:
        _score_served(cfg, items)
    else:
        _score_local(cfg, items)


def _score_local(cfg: RewardModelSection, items: list[tuple[list[dict], list[dict]]]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from curate.modeling import resolve_device

    device = resolve_device(cfg.device)
    tokenizer = AutoTokenizer.from_pretrained(cfg.path)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.path).to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pending = [(prompt, r) for prompt, responses in items for r in responses]
    for start in range(0, len(pending), cfg.batch_size):
        chunk = pending[start : start + cfg.batch_size]
        texts = [
            tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": r["text"]}], tokenize=False
            )
            for prompt, r in chunk
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            logits = model(**batch).logits
        for (_, r), value in zip(chunk, logits[:, 0].tolist()):
            r["model"] = float(value)


def _score_served(cfg: RewardModelSection, items: list[tuple[list[dict], list[dict]]]) -> None:
    """Scores from a vLLM pooling server's ``POST /classify``, one chat conversation per request.

    ``/classify`` rather than ``/pooling``: its task is fixed to ``classify`` (the last token's
    classifier output, as HF's ``ForSequenceClassification``), whereas ``/pooling`` takes the server's
    default task, which a token-classification (process) reward model answers per token. Both render
    ``messages`` with the served model's chat template and no generation prompt, as ``_score_local``
    does. ``use_activation: false`` because vLLM otherwise applies the classifier's activation (a
    sigmoid for one label): the raw logit keeps τ on the scale of the local path. A response the
    server fails (after ``max_retries`` tries for transient errors) fails the step, naming the server.
    """
    from concurrent.futures import ThreadPoolExecutor

    from curate.engines.openai_engine import OpenAIClient, RequestFailed

    base_url = cfg.base_url.rstrip("/").removesuffix("/v1")
    client = OpenAIClient(
        base_url,
        api_key=os.environ.get(cfg.api_key_env),
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
    )

    def score(prompt: list[dict], text: str) -> float:
        body: dict[str, Any] = {
            "messages": [*prompt, {"role": "assistant", "content": text}],
            "use_activation": False,
        }
        if cfg.model:
            body["model"] = cfg.model
        try:
            return float(client.call("POST", "/classify", body)["data"][0]["probs"][0])
        except RequestFailed as err:
            raise StepFailed(f"reward model at {base_url} (keep.reward_model.base_url): {err}") from None
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise StepFailed(
                f"reward model at {base_url} (keep.reward_model.base_url) sent no classifier score "
                f"({type(err).__name__}: {err}); is it served with --runner pooling?"
            ) from None

    pending = [(prompt, r) for prompt, responses in items for r in responses]
    pool = ThreadPoolExecutor(max_workers=cfg.batch_size, thread_name_prefix="reward-model")
    try:
        scores = list(pool.map(lambda job: score(job[0], job[1]["text"]), pending))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, no request still queued is sent
        client.close()
    for (_, r), value in zip(pending, scores):
        r["model"] = value


def _model_dir(name: str) -> str:
    from curate.modeling import is_toy_model

    if is_toy_model(name):
        from curate.toy.cache import toy_model_path

        return str(toy_model_path(preset=name))
    return name


def _publish(saved: Path, model: Path, base: str) -> None:
    """The round's model: verl's saved HF directory with the base model's processor restored."""
    from curate.modeling import restore_processor_files

    tmp = model.with_name(model.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(saved, tmp)
    if Path(base).is_dir():
        restore_processor_files(base, tmp)
    shutil.rmtree(model, ignore_errors=True)
    tmp.replace(model)


# ---- the report ----------------------------------------------------------------------------------------


def write_report(it: Iteration) -> dict[str, Any]:
    """report.json and report.md from what the rounds have written so far."""
    rounds = []
    for t in range(0, it.cfg.rounds + 1):
        r = Round(it.root, t)
        entry: dict[str, Any] = {"round": t, "model": it.model_of(t)}
        if r.kept.is_file():
            entry["kept"] = json.loads(r.kept.read_text())
        if r.eval.is_file():
            entry["eval"] = json.loads(r.eval.read_text())["summary"]
        rounds.append(entry)
    grpo_eval = it.root / "grpo" / "eval.json"
    report = {
        "output": str(it.root),
        "rounds": rounds,
        "grpo": json.loads(grpo_eval.read_text())["summary"] if grpo_eval.is_file() else None,
    }
    (it.root / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# rl iterate: `{it.root}`",
        "",
        "| round | tau | kept responses | reference samples | rows | "
        "correct rate (K responses) | held-out accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in rounds:
        k = e.get("kept", {})
        acc = (e.get("eval") or {}).get("overall", {}).get("accuracy")
        lines.append(
            f"| {e['round']} | {k.get('tau', '')} | {sum(k.get('kept_responses', {}).values()) if k else ''}"
            f" | {sum(k.get('reference_samples', {}).values()) if k else ''} | {k.get('rows', '')} | "
            f"{k.get('correct_rate', '')} | {'' if acc is None else f'{acc:.3f}'} |"
        )
    if report["grpo"]:
        lines += [
            "",
            f"GRPO from the last round: held-out accuracy {report['grpo']['overall']['accuracy']:.3f}.",
        ]
    per_task = [e for e in rounds if "kept" in e]
    if per_task:
        tasks = sorted(per_task[0]["kept"]["kept_responses"])
        lines += [
            "",
            "Kept responses / reference samples per task:",
            "",
            "| round | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        for e in per_task:
            k = e["kept"]
            lines.append(
                f"| {e['round']} | "
                + " | ".join(
                    f"{k['kept_responses'].get(t, 0)} / {k['reference_samples'].get(t, 0)}" for t in tasks
                )
                + " |"
            )
    (it.root / "report.md").write_text("\n".join(lines) + "\n")
    return report


# ---- command line ----------------------------------------------------------------------------------------


def run_iterate(cfg: IterateConfig, execute: Callable[[list[str], Path], int] | None = None) -> bool:
    return Iteration(cfg, execute).run()


def dry_run(cfg: IterateConfig) -> None:
    """Check the SFT (and GRPO) stage against verl's config as round 1 would run it, print the steps."""
    from rl.sft import plan_sft
    from rl.train import plan_training, validate_like_verl, verl_config

    it = Iteration(cfg)
    first = Round(it.root, 1)
    sft = plan_sft(
        cfg.sft.recipe,
        [
            f"model.path={it.base}",
            f"data.train_files={first.data}",
            f"trainer.default_local_dir={first.checkpoints}",
            *cfg.sft.overrides,
        ],
    )
    verl_config(sft)
    print(f"round 1 SFT: {sft.shell()}")
    if cfg.grpo.recipe:
        grpo = plan_training(
            cfg.grpo.recipe,
            [
                f"actor_rollout_ref.model.path={it.model_of(cfg.rounds)}",
                f"data.train_files={cfg.train_files}",
                f"trainer.default_local_dir={it.root / 'grpo' / 'checkpoints'}",
                *cfg.grpo.overrides,
            ],
        )
        validate_like_verl(grpo, verl_config(grpo))
        print(f"final GRPO: {grpo.shell()}")
    print("steps: " + ", ".join(step.name for step in it.steps()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="an iterate recipe (configs/rl/*_iterate.yaml)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the stages against verl's config and print the steps; run nothing",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rounds=3 keep.tau=[1.0,2.0]")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_structured(IterateConfig, args.config, args.overrides)
        if args.dry_run:
            dry_run(cfg)
            return 0
    except ConfigError as err:
        print(f"python -m rl iterate: {err}", file=sys.stderr)
        return 2
    return 0 if run_iterate(cfg) else 1
