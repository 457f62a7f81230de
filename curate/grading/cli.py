"""Grade model responses in a JSONL file: audit what the reward and the difficulty scores count as correct.

Each input line is {"task", "response", "ground_truth"} (optionally "verifier", and any other keys,
which are kept). Each output line is the input object plus "score" (the accuracy reward in [0, 1]),
"correct" (δ for PISM/CMAB), "partial" (partial credit: OCR similarity, mean box IoU), "format" (the
format reward), "grader", "route" (why that grader) and "extracted" (what the grader read from the
response). A line that cannot be graded is written back with an "error" field, never
dropped: unparseable JSON becomes {"line", "raw", "error"}. A summary goes to stderr; the exit status
is 1 when some line had an error.

  python -m curate grade responses.jsonl -o graded.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="input JSONL ('-' for stdin)")
    parser.add_argument("-o", "--output", default="-", help="output JSONL (default: stdout)")


def grade_record(record: Any) -> dict[str, Any]:
    """The graded copy of one parsed JSON line, or the line with an "error" field."""
    from curate.grading import UnknownTaskError, format_score, grade

    if not isinstance(record, dict):
        return {"raw": record, "error": f"expected a JSON object, got {type(record).__name__}"}
    missing = [key for key in ("task", "response", "ground_truth") if record.get(key) is None]
    if missing:
        return {**record, "error": f"missing field(s): {', '.join(missing)}"}
    if not isinstance(record["response"], str):
        return {**record, "error": f"response must be a string, got {type(record['response']).__name__}"}
    try:
        result = grade(record["task"], record["response"], record["ground_truth"], record.get("verifier"))
    except UnknownTaskError as exc:
        return {**record, "error": str(exc)}
    return {
        **record,
        "score": result.score,
        "correct": result.correct,
        "partial": result.partial,
        "format": format_score(record["response"]),
        "grader": result.grader,
        "route": result.route,
        "extracted": result.extracted,
    }


def grade_lines(lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield {"line": number, "raw": line.rstrip("\r\n"), "error": f"invalid JSON: {exc}"}
            continue
        except RecursionError:
            yield {"line": number, "raw": line.rstrip("\r\n"), "error": "invalid JSON: nested too deeply to read"}
            continue
        yield grade_record(record)


def encode(out: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(JSON line, record written)``: ``out``, or an error record when a kept field is nested too
    deeply to write back."""
    try:
        text = json.dumps(out, ensure_ascii=False)
    except RecursionError:
        out = {k: out[k] for k in ("line", "task", "ground_truth") if isinstance(out.get(k), (str, int))}
        out["error"] = "a field is nested too deeply to write back"
        text = json.dumps(out, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: keep it escaped
            text = json.dumps(out)
    return text, out


class Summary:
    def __init__(self) -> None:
        self.lines = self.errors = 0
        self.scores: dict[str, list[float]] = defaultdict(list)
        self.correct: dict[str, int] = defaultdict(int)

    def add(self, out: dict[str, Any]) -> None:
        self.lines += 1
        if "error" in out:
            self.errors += 1
            return
        task = str(out["task"])
        self.scores[task].append(out["score"])
        self.correct[task] += bool(out["correct"])

    def write(self, stream: IO[str]) -> None:
        graded = sum(len(v) for v in self.scores.values())
        mean = sum(sum(v) for v in self.scores.values()) / graded if graded else float("nan")
        print(
            f"lines {self.lines}  graded {graded}  errors {self.errors}  mean score {mean:.4f}", file=stream
        )
        for task in sorted(self.scores):
            n, accuracy = len(self.scores[task]), self.correct[task] / len(self.scores[task])
            mean = sum(self.scores[task]) / n
            print(f"  {task:<20} n={n:<7} accuracy {accuracy:.4f}  mean score {mean:.4f}", file=stream)


def main(args: argparse.Namespace) -> int:
    summary = Summary()
    with contextlib.ExitStack() as files:
        source = sys.stdin
        if args.file != "-":
            source = files.enter_context(open(args.file, encoding="utf-8", errors="replace"))
        sink = sys.stdout
        if args.output != "-":
            sink = files.enter_context(open(args.output, "w", encoding="utf-8"))
        for out in grade_lines(source):
            line, written = encode(out)
            sink.write(line + "\n")
            summary.add(written)
    summary.write(sys.stderr)
    return 1 if summary.errors else 0
