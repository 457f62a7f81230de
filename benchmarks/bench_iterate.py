"""Skywork R1V's iterative rejection-sampling SFT on the toy world: held-out accuracy per round.

Runs ``python -m rl iterate --config configs/rl/toy_iterate.yaml`` (generation on the toy model, verl's
SFT trainer on CPU, ``rl eval``) once per seed on the same training and held-out corpora, the seed
changing the sampled responses (``generation.seed``) and verl's SFT seed (``trainer.seed``). Prints,
per round, the mean ± 95% t-interval over seeds of the held-out accuracy, of the rows kept and of the
reference samples, and each round's change from round 0 paired by seed. Resumable: a finished seed's
rounds are not rerun. Raw numbers: ``benchmarks/results/iterate.json``.

    .venv/bin/python benchmarks/bench_iterate.py             # 3 seeds × 3 rounds, 64 training samples
    .venv/bin/python benchmarks/bench_iterate.py --quick     # 1 seed × 1 round, 16 samples
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, table, toy_corpus, write_results  # noqa: E402

RECIPE = ROOT / "configs" / "rl" / "toy_iterate.yaml"


def main() -> int:
    from rl.study.stats import interval

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed × 1 round on 16 samples")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "iterate"), help="work directory")
    args = parser.parse_args()
    seeds, rounds, train_n, heldout_n = ([0], 1, 16, 20) if args.quick else ([0, 1, 2], 3, 64, 100)
    work = Path(args.out) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    toy_corpus(work / "train.parquet", train_n, 11)
    toy_corpus(work / "heldout.parquet", heldout_n, 12)
    reports = {}
    for seed in seeds:
        out = work / f"seed{seed}"
        command = [
            sys.executable,
            "-m",
            "rl",
            "iterate",
            "--config",
            str(RECIPE),
            f"rounds={rounds}",
            f"train_files={work / 'train.parquet'}",
            f"heldout={work / 'heldout.parquet'}",
            f"output={out}",
            f"generation.seed={seed}",
            f"sft.overrides=[trainer.seed={seed}]",
        ]
        print(f"seed {seed}: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            return 1
        reports[seed] = json.loads((out / "report.json").read_text())

    def per_round(t: int, pick) -> list[float]:
        return [pick(reports[s]["rounds"][t]) for s in seeds]

    rows: list[list[Any]] = []
    summary: list[dict[str, Any]] = []
    for t in range(rounds + 1):
        acc = per_round(t, lambda r: r["eval"]["overall"]["accuracy"])
        base = per_round(0, lambda r: r["eval"]["overall"]["accuracy"])
        gain = interval([a - b for a, b in zip(acc, base)])
        kept = per_round(t, lambda r: sum(r["kept"]["kept_responses"].values())) if t else []
        ref = per_round(t, lambda r: sum(r["kept"]["reference_samples"].values())) if t else []
        rate = per_round(t, lambda r: r["kept"]["correct_rate"]) if t else []
        a = interval(acc)
        entry = {
            "round": t,
            "accuracy": acc,
            "accuracy_mean": a.mean,
            "accuracy_half": a.half,
            "gain_vs_round0": [x - y for x, y in zip(acc, base)],
            "gain_mean": gain.mean,
            "gain_half": gain.half,
            "kept_responses": kept,
            "reference_samples": ref,
            "correct_rate": rate,
        }
        summary.append(entry)
        rows.append(
            [
                t,
                f"{a.mean:.3f} ± {a.half:.3f}" if len(seeds) > 1 else f"{a.mean:.3f}",
                f"{gain.mean:+.3f} ± {gain.half:.3f}" if t and len(seeds) > 1 else "",
                f"{sum(rate) / len(rate):.3f}" if rate else "",
                f"{sum(kept) / len(kept):.1f}" if kept else "",
                f"{sum(ref) / len(ref):.1f}" if ref else "",
            ]
        )
    result = {
        "machine": machine(),
        "seeds": seeds,
        "rounds": rounds,
        "train_samples": train_n,
        "heldout_samples": heldout_n,
        "recipe": str(RECIPE.relative_to(ROOT)),
        "per_round": summary,
        "reports": reports,
    }
    path = write_results("iterate" + ("_quick" if args.quick else ""), result)
    print(
        f"\nheld-out accuracy per round ({len(seeds)} seed(s), {heldout_n} held-out samples, greedy); {path}"
    )
    print(
        table(
            [
                "round",
                "held-out acc",
                "change vs round 0 (paired)",
                "correct rate of K",
                "kept responses",
                "reference samples",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
