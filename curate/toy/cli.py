"""The offline toy world: a synthetic multimodal corpus and a tiny Qwen2.5-VL trained on it.

  corpus OUT.parquet  write N toy samples in the canonical schema (deterministic from --seed)
  model [--preset P]  print a trained toy model's directory (trains and caches it on first use);
                      --background: start that training in a detached process and return
  eval                greedy accuracy per task, unmasked and under PISM block masks of each ratio

The toy model trains once per machine (a few minutes on one CPU core) into $HARDMODE_CACHE
(default ~/.cache/hardmode), keyed by a hash of its architecture, training settings and code.
Use it anywhere a model is expected with engine.model=toy. Presets (curate.toy.presets): ``toy`` (the
default, nearly saturated) and ``toy-study`` (3 layers, an early checkpoint: partly competent), each
usable by name wherever ``toy`` is.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from curate.toy.corpus import TASKS
from curate.toy.presets import DEFAULT_PRESET, PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    corpus = sub.add_parser("corpus", help="write a toy corpus (canonical schema) to a Parquet file")
    corpus.add_argument("output", type=Path, help="Parquet file to write")
    corpus.add_argument("--num-samples", type=int, default=200, help="rows to write (default: 200)")
    corpus.add_argument("--seed", type=int, default=0, help="corpus seed; same seed, same bytes (default: 0)")
    corpus.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                        help=f"tasks, assigned round-robin (default: all of {', '.join(TASKS)})")

    model = sub.add_parser("model", help="print the toy model directory, training it if needed")
    model.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $HARDMODE_CACHE)")
    model.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                       help=f"which toy model (default: {DEFAULT_PRESET}); "
                       + "; ".join(f"{n}: {p.summary}" for n, p in PRESETS.items()))
    model.add_argument("--background", action="store_true",
                       help="train in a detached process (one thread, logged in the cache) and return "
                       "at once; nothing happens when the model is cached or already training")

    evaluate = sub.add_parser("eval", help="accuracy per task, unmasked and masked (held-out samples)")
    evaluate.add_argument("--num-samples", type=int, default=250, help="held-out samples (default: 250)")
    evaluate.add_argument("--seed", type=int, default=0, help="corpus seed of the held-out samples (default: 0)")
    evaluate.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 0.9],
                          help="block-mask area ratios λ (default: 0 0.25 0.5 0.75 0.9)")
    evaluate.add_argument("--realizations", type=int, default=3, help="masks per sample and ratio (default: 3)")
    evaluate.add_argument("--model", default=DEFAULT_PRESET,
                          help=f"model directory or toy preset ({', '.join(PRESETS)}; "
                          f"default: {DEFAULT_PRESET})")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")


def _corpus(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from curate.toy.corpus import generate_corpus

    table = generate_corpus(args.num_samples, seed=args.seed, tasks=args.tasks)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.output)
    print(f"wrote {table.num_rows} toy samples to {args.output}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from curate.toy.cache import cached_toy_model, toy_model_path, train_in_background

    if not args.background:
        print(toy_model_path(args.cache_dir, preset=args.preset))
    elif (started := train_in_background(args.cache_dir, preset=args.preset)) is not None:
        process, log = started
        print(f"toy model {args.preset}: training in the background (pid {process.pid}, log {log})")
    elif (cached := cached_toy_model(args.cache_dir, preset=args.preset)) is not None:
        print(f"toy model {args.preset}: cached at {cached}")
    else:
        print(f"toy model {args.preset}: another process is training it")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from curate.modeling import load_model, load_processor, resolve_model_path
    from curate.toy.corpus import iter_samples
    from curate.toy.evaluate import evaluate

    path = resolve_model_path(args.model)
    model, processor = load_model(path, device="cpu"), load_processor(path)
    samples = list(iter_samples(args.num_samples, seed=args.seed))
    result = evaluate(model, processor, samples, ratios=args.ratios, realizations=args.realizations)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    return {"corpus": _corpus, "model": _model, "eval": _eval}[args.toy_command](args)
