"""Score a checkpoint on held-out data with the training graders and the training prompt.

    python -m rl eval CHECKPOINT DATA [--task-key KEY] [--limit N] [--out results.json] [--backend vllm]

CHECKPOINT is a Hugging Face model directory (``toy``, ``toy-study``: the project's toy models), a verl
checkpoint step ``<trainer.default_local_dir>/global_step_N``, or its ``actor`` directory. verl 0.9.1
saves the actor as FSDP shards (``model_world_size_W_rank_R.pt``) plus ``huggingface/`` holding the
config and processor, and full weights there only with ``actor.checkpoint.save_contents`` including
``hf_model``. Without them the shards are merged once by verl's own merger
(``verl.model_merger``, FSDP backend) into ``--merged-dir`` (default ``<actor>/huggingface_merged``).

DATA is held-out data in any layout ``curate.io`` reads (a URI such as ``s3://...`` is read from a local
copy, ``curate.storage.stage``); for verl RL parquet (our exports) each row's
``prompt`` column is used verbatim, system turn included, exactly what verl fed the policy. Other
layouts get the selection's prompt (``manifest.json`` of the ``python -m curate select`` output the
file belongs to), else ``--system-prompt`` / the project's default prompt. Rows that cannot be read are
counted and left out.

Generation goes through the project's engines (``--backend transformers`` on any machine, ``vllm`` on
GPUs), greedy by default. Each response is graded by ``curate.grading.grade`` (the ``correct`` that
decided difficulty) and rewarded by ``rl.reward.compute_score`` (what GRPO optimised, accuracy plus
format). Printed and written (``--out``): accuracy per task type and overall, mean accuracy reward,
format-reward rate, and every sample's response.

``--sampled N`` also draws N responses per row at ``--sampled-temperature`` (default 1.0, GRPO's rollout
temperature) and reports their mean accuracy (avg@N) and pass@N. GRPO first sharpens the sampling
distribution: the greedy answer, its mode, can stay the same while the sampled answers get better, and
only avg@N shows that.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

__all__ = [
    "EvalSample",
    "SampledEval",
    "add_arguments",
    "evaluate",
    "load_samples",
    "main",
    "resolve_checkpoint",
    "summarize",
]

log = logging.getLogger(__name__)

MERGED_DIR = "huggingface_merged"
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_FSDP_SHARD = "model_world_size_*_rank_*.pt"
_SEGMENT = re.compile(r"(<image>)")


class EvalError(ValueError):
    """The checkpoint or the data cannot be evaluated as given."""


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _has_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any((directory / w).is_file() for w in _WEIGHTS)


def resolve_checkpoint(checkpoint: str, merged_dir: Optional[str] = None) -> str:
    """A directory ``transformers`` can load for ``checkpoint`` (merging verl's FSDP shards if needed)."""
    from curate.modeling import is_toy_model, resolve_model_path

    if is_toy_model(checkpoint):  # "toy", "toy-study": the trained toy preset (an unknown "toy-…" raises)
        return resolve_model_path(checkpoint)
    path = Path(checkpoint)
    if not path.exists():
        return checkpoint  # a hub id: the engine resolves it
    if _has_weights(path):
        return str(path)
    actor = path / "actor" if (path / "actor").is_dir() else path
    if _has_weights(actor / "huggingface"):
        return str(actor / "huggingface")
    if (actor / "model" / "dist_ckpt").exists() or (actor / "dist_ckpt").exists():
        raise EvalError(
            f"{actor} is a Megatron checkpoint: merge it first with `python -m verl.model_merger merge "
            f"--backend megatron --local_dir {actor} --target_dir DIR` and evaluate DIR"
        )
    if not glob.glob(str(actor / _FSDP_SHARD)):
        raise EvalError(
            f"{checkpoint}: neither a model directory (config.json + weights) nor a verl checkpoint "
            f"(global_step_N or its actor/ with {_FSDP_SHARD})"
        )
    target = Path(merged_dir) if merged_dir else actor / MERGED_DIR
    if _has_weights(target):
        log.info("using the merged checkpoint %s", target)
        return str(target)
    merge_fsdp_checkpoint(actor, target)
    return str(target)


def merge_fsdp_checkpoint(actor: Path, target: Path) -> None:
    """verl's FSDP merger (``python -m verl.model_merger merge --backend fsdp``), written atomically.

    verl's merger saves the processor only when its loader can build one (on CPU machines without
    torchvision it cannot); the processor files saved beside the config are copied over then.
    """
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    scratch = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        config = ModelMergerConfig(
            operation="merge",
            backend="fsdp",
            local_dir=str(actor),
            target_dir=str(scratch),
            hf_model_config_path=str(actor / "huggingface"),
            trust_remote_code=True,
        )
        log.info("merging verl FSDP shards %s into %s (verl.model_merger)", actor, target)
        merger = FSDPModelMerger(config)
        merger.merge_and_save()
        merger.cleanup()
        for source in (actor / "huggingface").iterdir():
            if source.is_file() and not (scratch / source.name).exists():
                shutil.copy2(source, scratch / source.name)
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSample:
    id: str
    task: str  # the task type accuracy is reported under
    messages: list[dict[str, Any]]  # engine messages (image parts in place of <image>)
    images: list[Any]  # PIL images, in order
    ground_truth: str
    data_source: Optional[str] = None
    verifier: Optional[str] = None


def _parquet_files(data: Path) -> list[str]:
    if not data.is_dir():
        return [str(data)]
    found = sorted(glob.glob(str(data / "**" / "*.parquet"), recursive=True))
    return [f for f in found if not Path(f).name.startswith(("_", "."))]


def _is_verl_parquet(files: Sequence[str]) -> bool:
    import pyarrow.parquet as pq

    if not files or not all(f.endswith(".parquet") for f in files):
        return False
    names = set(pq.read_schema(files[0]).names)
    return {"prompt", "reward_model"} <= names


def verl_messages(prompt: Sequence[dict[str, Any]], multimodal: bool) -> list[dict[str, Any]]:
    """verl's chat prompt as the policy saw it, split the way ``RLHFDataset._build_messages`` splits it:
    in a row with images every text turn becomes parts, ``<image>`` an image part, text kept verbatim
    and empty pieces dropped."""
    if not multimodal:
        return [{"role": t["role"], "content": t["content"]} for t in prompt]
    out = []
    for turn in prompt:
        content = turn["content"]
        if isinstance(content, str):
            content = [
                {"type": "image"} if p == "<image>" else {"type": "text", "text": p}
                for p in _SEGMENT.split(content)
                if p != ""
            ]
        out.append({"role": turn["role"], "content": content})
    return out


def _get(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, with ``a.b`` reaching into dict columns (``extra_info.task``)."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _verl_task(row: dict[str, Any], task_key: Optional[str]) -> Optional[str]:
    """The task of a verl row: ``task_key`` if given, else the task GRPO's reward graded it as
    (``rl.reward``'s routing: extra_info.task, extra_info.ability, data_source)."""
    from rl.reward import grader_route

    if task_key:
        value = _get(row, task_key)
        return None if value is None else str(value)
    route = grader_route(row.get("data_source"), row.get("extra_info") or {})
    return route[0] if route else None


def _verl_samples(files: Sequence[str], task_key: Optional[str], errors: list[str]) -> Iterator[EvalSample]:
    import pyarrow.parquet as pq
    from PIL import Image

    from curate.images import ImageError, decode_image
    from curate.io.paths import ImageRoot, PathError

    for file in files:
        root = ImageRoot.at(os.path.dirname(os.path.abspath(file)))
        for batch in pq.ParquetFile(file).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                info = row.get("extra_info") or {}
                sample_id = str(info.get("id") or f"{Path(file).stem}:{info.get('index')}")
                try:
                    images = []
                    for item in row.get("images") or []:
                        item = item if isinstance(item, dict) else {"bytes": None, "path": item}
                        if item.get("bytes"):
                            images.append(decode_image(item["bytes"]))
                        else:
                            with Image.open(root.resolve(item["path"])) as im:
                                images.append(im.convert("RGB"))
                    task = _verl_task(row, task_key)
                    if task is None:
                        where = task_key or "extra_info.task, extra_info.ability, data_source"
                        raise ValueError(f"no task a grader serves in {where} (see --task-key)")
                    yield EvalSample(
                        sample_id,
                        task,
                        verl_messages(row["prompt"], bool(images)),
                        images,
                        str((row.get("reward_model") or {}).get("ground_truth")),
                        row.get("data_source"),
                        info.get("verifier"),
                    )
                except (ImageError, PathError, OSError, ValueError, KeyError, TypeError) as err:
                    errors.append(f"{sample_id}: {err}")


def selection_prompt(data: Path) -> Optional[Any]:
    """The prompt a ``python -m curate select`` export used, from the manifest above ``data``."""
    from curate.config import PromptConfig

    for parent in list(data.resolve().parents)[:3]:
        manifest = parent / "manifest.json"
        if manifest.is_file():
            recorded = json.loads(manifest.read_text()).get("prompt") or {}
            known = PromptConfig.__dataclass_fields__
            return PromptConfig(**{k: v for k, v in recorded.items() if k in known})
    return None


def _corpus_samples(
    corpus: Any, prompt: Any, task_key: Optional[str], errors: list[str]
) -> Iterator[EvalSample]:
    from curate import schema as S
    from curate.images import decode_image
    from curate.scoring.prompts import PromptError, build_messages

    for table in corpus.iter_tables(64):
        for row in table.to_pylist():
            if row[S.STATUS] != S.STATUS_OK:
                errors.append(f"{row[S.ID]}: {row[S.ERROR]}")
                continue
            try:
                images = [decode_image(b) for b in row[S.IMAGES] or []]
                messages = build_messages(row[S.QUESTION], len(images), prompt)
            except (PromptError, ValueError) as err:
                errors.append(f"{row[S.ID]}: {err}")
                continue
            task = _get(row, task_key) if task_key else row[S.TASK]
            yield EvalSample(
                row[S.ID],
                str(task),
                messages,
                images,
                row[S.GROUND_TRUTH],
                row[S.DATA_SOURCE],
                row[S.VERIFIER],
            )


def load_samples(
    data: str, *, task_key: Optional[str] = None, prompt: Any = None, errors: Optional[list[str]] = None
) -> tuple[str, Iterator[EvalSample]]:
    """(how prompts are built, samples): verl parquet keeps its prompts; other layouts get ``prompt``."""
    path = Path(data)
    if not path.exists():
        raise EvalError(f"data not found: {data}")
    errors = errors if errors is not None else []
    files = _parquet_files(path)
    if _is_verl_parquet(files):
        return "verl prompt column", _verl_samples(files, task_key, errors)
    from curate.config import DataConfig, PromptConfig
    from curate.io import open_corpus

    if prompt is not None:
        source = "--system-prompt"
    else:
        prompt = selection_prompt(path)
        source = "selection manifest" if prompt is not None else "curate default"
        prompt = prompt or PromptConfig()
    corpus = open_corpus(DataConfig(format="auto", path=str(path)))  # layout errors surface here
    return source, _corpus_samples(corpus, prompt, task_key, errors)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def grade_response(sample: EvalSample, response: str, options: Any = None) -> dict[str, Any]:
    """Correctness (the grader's δ) and the GRPO reward of one response, judged with ``options``
    (``curate.grading.GradingOptions``; the defaults when None) against the sample's image size."""
    from curate.grading import GradingOptions, UnknownTaskError, grade
    from rl.reward import compute_score

    options = options or GradingOptions()
    size = sample.images[0].size if sample.images else None
    try:
        result = grade(sample.task, response, sample.ground_truth, sample.verifier, options=options, image_size=size)
        correct, score, extracted = result.correct, result.score, result.extracted
    except UnknownTaskError as err:
        correct, score, extracted = False, 0.0, f"(no grader: {err})"
    info = {"task": sample.task, "verifier": sample.verifier, "image_size": size}
    reward = compute_score(sample.data_source, response, sample.ground_truth, info, **dataclasses.asdict(options))
    return {
        "correct": bool(correct),
        "acc": float(score),
        "format": float(reward["format"]),
        "reward": float(reward["score"]),
        "extracted": extracted,
    }


@dataclass(frozen=True)
class SampledEval:
    """``n`` responses per row sampled with ``params`` beside the main answer (``--sampled``)."""

    n: int
    params: Any  # curate.engines.SamplingParams


def evaluate(
    engine: Any,
    samples: Iterator[EvalSample],
    params: Any,
    *,
    limit: Optional[int] = None,
    seed: int = 0,
    chunk: int = 256,
    options: Any = None,
    sampled: Optional[SampledEval] = None,
) -> list[dict[str, Any]]:
    """Generate and grade ``samples`` (at most ``limit``), ``chunk`` requests per engine call, with
    grading ``options`` (``curate.grading.GradingOptions``). With ``sampled`` each record also gets
    ``sampled``: how many of its ``n`` sampled responses were correct, and their mean reward (a response
    the engine could not produce counts as wrong, reward 0)."""
    from curate.engines import GenerationRequest

    records: list[dict[str, Any]] = []
    pending: list[EvalSample] = []

    def flush() -> None:
        requests = [GenerationRequest(messages=s.messages, images=s.images, seed=seed) for s in pending]
        chunk_records = []
        for sample, result in zip(pending, engine.generate(requests, params)):
            record = {"id": sample.id, "task": sample.task, "ground_truth": sample.ground_truth}
            if result.ok and result.completions:
                text = result.completions[0].text
                record.update(
                    response=text,
                    finish_reason=result.completions[0].finish_reason,
                    **grade_response(sample, text, options),
                )
            else:  # counted as wrong: a checkpoint that cannot answer scores nothing
                record.update(
                    response=None,
                    error=result.error or "no completion",
                    correct=False,
                    acc=0.0,
                    format=0.0,
                    reward=0.0,
                    extracted=None,
                )
            chunk_records.append(record)
        if sampled is not None:
            requests = [GenerationRequest(s.messages, s.images, seed=seed, n=sampled.n) for s in pending]
            results = engine.generate(requests, sampled.params)
            for sample, record, result in zip(pending, chunk_records, results):
                completions = result.completions[: sampled.n] if result.ok else []
                graded = [grade_response(sample, c.text, options) for c in completions]
                record["sampled"] = {
                    "n": sampled.n,
                    "correct": sum(g["correct"] for g in graded),
                    "reward": sum(g["reward"] for g in graded) / sampled.n,
                }
        records.extend(chunk_records)
        pending.clear()

    for sample in samples:
        if limit is not None and len(records) + len(pending) >= limit:
            break
        pending.append(sample)
        if len(pending) >= chunk:
            flush()
    if pending:
        flush()
    return records


def _stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    return {
        "n": n,
        "accuracy": sum(r["correct"] for r in records) / n if n else None,
        "mean_acc_reward": sum(r["acc"] for r in records) / n if n else None,
        "format_rate": sum(r["format"] >= 1.0 for r in records) / n if n else None,
        "mean_reward": sum(r["reward"] for r in records) / n if n else None,
        "generation_errors": sum(1 for r in records if r.get("error")),
        **_sampled_stats(records),
    }


def _sampled_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """avg@n (mean over rows of the correct share of their sampled responses) and pass@n."""
    draws = [r["sampled"] for r in records if "sampled" in r]
    if not draws:
        return {}
    return {
        "sampled_n": draws[0]["n"],
        "sampled_accuracy": sum(d["correct"] / d["n"] for d in draws) / len(draws),
        "pass_at_n": sum(d["correct"] > 0 for d in draws) / len(draws),
        "sampled_mean_reward": sum(d["reward"] for d in draws) / len(draws),
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, mean accuracy reward, format rate and mean reward per task type and overall."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    return {"per_task": {t: _stats(rs) for t, rs in sorted(by_task.items())}, "overall": _stats(records)}


def table(summary: dict[str, Any]) -> str:
    rows = [*summary["per_task"].items(), ("overall", summary["overall"])]
    width = max(7, *(len(t) for t, _ in rows))
    n_sampled = summary["overall"].get("sampled_n")
    sampled_head = f" {f'avg@{n_sampled}':>9} {f'pass@{n_sampled}':>9}" if n_sampled else ""
    head = f"{'task':<{width}} {'n':>6} {'accuracy':>9} {'acc_rew':>8} {'format':>7} {'reward':>7}"
    lines = [head + sampled_head]
    for task, s in rows:
        if s["n"]:
            sampled = f" {s['sampled_accuracy']:>9.4f} {s['pass_at_n']:>9.4f}" if n_sampled else ""
            lines.append(
                f"{task:<{width}} {s['n']:>6} {s['accuracy']:>9.4f} {s['mean_acc_reward']:>8.4f} "
                f"{s['format_rate']:>7.4f} {s['mean_reward']:>7.4f}{sampled}"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="HF model dir, a toy preset (toy, toy-study), verl global_step_N or its actor/ dir"
    )
    parser.add_argument("data", help="held-out data: verl parquet (our exports) or any layout curate reads")
    parser.add_argument(
        "--task-key",
        default=None,
        help="field naming the task type (e.g. ability, data_source, extra_info.task); "
        "default: the task GRPO's reward graded the row as (rl.reward), the canonical task otherwise",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N usable rows")
    parser.add_argument("--out", default=None, help="write the summary and every sample here (JSON)")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per engine batch")
    parser.add_argument("--max-tokens", type=int, default=1024, help="max new tokens (the paper's 1024)")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampled",
        type=int,
        default=0,
        metavar="N",
        help="also sample N responses per row and report their mean accuracy (avg@N) and pass@N",
    )
    parser.add_argument(
        "--sampled-temperature", type=float, default=1.0, help="temperature of --sampled (GRPO rollouts: 1.0)"
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop string (repeatable); default none: like verl's rollout, stop at EOS",
    )
    parser.add_argument("--max-pixels", type=int, default=None, help="image pixel cap (1254400 in the paper)")
    parser.add_argument(
        "--system-prompt",
        default=None,
        help="system prompt for non-verl data (default: the selection's, else curate's)",
    )
    parser.add_argument(
        "--merged-dir", default=None, help=f"where verl shards are merged (<actor>/{MERGED_DIR})"
    )


def main(args: argparse.Namespace) -> int:
    from curate.config import EngineConfig, PromptConfig
    from curate.engines import SamplingParams, create_engine
    from curate.grading import GradingOptions
    from curate.grading.boxes import box_format_for_model
    from curate.storage import is_uri, stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.limit is not None and args.limit <= 0:
        print("python -m rl eval: --limit must be positive", file=sys.stderr)
        return 2
    if args.sampled < 0 or (args.sampled and args.sampled_temperature <= 0):
        print("python -m rl eval: --sampled needs N >= 0 and --sampled-temperature > 0", file=sys.stderr)
        return 2
    started = time.monotonic()
    read_errors: list[str] = []
    try:
        model_path = resolve_checkpoint(args.checkpoint, args.merged_dir)
        prompt = PromptConfig(system_prompt=args.system_prompt) if args.system_prompt is not None else None
        # A URI (s3://..., gs://...) is read from a local copy (curate.storage.stage).
        prompt_source, samples = load_samples(
            stage(args.data, "data"), task_key=args.task_key, prompt=prompt, errors=read_errors
        )
    except (EvalError, ValueError) as err:
        print(f"python -m rl eval: {err}", file=sys.stderr)
        return 2
    engine_cfg = EngineConfig(
        backend=args.backend,
        model=model_path,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
    )
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, stop=tuple(args.stop)
    )
    sampled = None
    if args.sampled:
        sampled = SampledEval(args.sampled, dataclasses.replace(params, temperature=args.sampled_temperature))
    options = GradingOptions(answer_box_format=box_format_for_model(model_path))  # as curation judged it
    with create_engine(engine_cfg) as engine:
        records = evaluate(
            engine, samples, params, limit=args.limit, seed=args.seed, options=options, sampled=sampled
        )
    summary = summarize(records)
    print(table(summary))
    if read_errors:
        print(f"{len(read_errors)} row(s) could not be read and were left out (first: {read_errors[0]})")
    if args.out:
        result = {
            "checkpoint": args.checkpoint,
            "model_path": model_path,
            "data": args.data if is_uri(args.data) else os.path.abspath(args.data),
            "prompt": prompt_source,
            "engine": dataclasses.asdict(engine_cfg),
            "sampling": dataclasses.asdict(params),
            "sampled": {"n": sampled.n, **dataclasses.asdict(sampled.params)} if sampled else None,
            "summary": summary,
            "read_errors": read_errors,
            "seconds": round(time.monotonic() - started, 1),
            "samples": records,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0
