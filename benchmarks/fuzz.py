"""Nightly-style fuzzing: many more hypothesis examples than CI runs, with the figures kept.

    python -m benchmarks.fuzz graders --examples 10000   # benchmarks/fuzz_graders.py's contract
    python -m benchmarks.fuzz readers --examples 10000   # benchmarks/fuzz_readers.py's contract

Each run draws ``--examples`` cases (``--seed`` fixes them), stops at the first broken contract
(hypothesis then shrinks it and prints the smallest failing case; exit status 1) and otherwise
prints and writes to ``benchmarks/results/fuzz_<target>.json`` how many cases ran and the
distribution of their times (for graders: against ``curate.grading.GRADE_TIME_LIMIT_S``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

RESULTS = Path(__file__).parent / "results"


def _graders(examples: int, times: list[float]) -> Callable[[], None]:
    from benchmarks.fuzz_graders import GRADER_NAMES, RESPONSES, TRUTHS, check_grade

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(grader=st.sampled_from(GRADER_NAMES), response=RESPONSES, truth=TRUTHS)
    def run(grader: str, response: str, truth: str) -> None:
        times.append(check_grade(grader, response, truth))

    return run


def _readers(examples: int, times: list[float]) -> Callable[[], None]:
    from benchmarks.fuzz_readers import LAYOUTS, LINES, ReaderWorld, check_reader

    world = ReaderWorld()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(lines=LINES, layout=st.sampled_from(LAYOUTS))
    def run(lines: list[bytes], layout: str) -> None:
        times.append(check_reader(world, lines, layout))

    return run


TARGETS = {"graders": _graders, "readers": _readers}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS), help="what to fuzz")
    parser.add_argument("--examples", type=int, default=10_000, help="hypothesis examples to draw [10000]")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed, for a repeatable run [0]")
    parser.add_argument("--out", type=Path, default=None, help="result JSON [benchmarks/results/fuzz_<target>.json]")
    args = parser.parse_args(argv)

    times: list[float] = []
    run = seed(args.seed)(TARGETS[args.target](args.examples, times))
    started = time.perf_counter()
    try:
        run()
    except Exception as err:  # hypothesis has printed the shrunk failing case
        print(f"fuzz {args.target}: contract broken after {len(times)} cases: {err}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    result = {
        "target": args.target,
        "command": f"python -m benchmarks.fuzz {args.target} --examples {args.examples} --seed {args.seed}",
        "cases": len(times),
        "failures": 0,
        "wall_s": round(wall, 1),
        "case_s": {
            "median": round(statistics.median(times), 5),
            "p99": round(_percentile(times, 0.99), 4),
            "max": round(max(times), 4),
        },
    }
    if args.target == "graders":
        from curate.grading import GRADE_TIME_LIMIT_S

        result["limit_s"] = GRADE_TIME_LIMIT_S
        result["over_half_the_limit"] = sum(t > GRADE_TIME_LIMIT_S / 2 for t in times)
    out = args.out or RESULTS / f"fuzz_{args.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
