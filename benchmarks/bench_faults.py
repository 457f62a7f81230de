"""Fault counts for the README's Reliability section: bad-row kinds injected, faults survived, rows lost.

Writes the fault corpus (``curate.toy.faults``: every kind of bad row mixed into good toy rows) and
scores it, and its clean twin, with ``curate score``; then damages one committed shard on disk and
scores again (resume must redo exactly that shard). With ``--ray`` it also runs ``curate run`` on a
private Ray cluster, kills the driver with SIGKILL after a few commits, tears a committed shard,
leaves a commit interrupted between data write and checkpoint rename, kills a scoring actor with
SIGKILL during the rerun, and checks the result the same way. Prints one table; raw numbers in
``benchmarks/results/faults.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, machine, table, write_results


def _annotated(out: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.ParquetDataset(str(out / "annotated")).read().to_pylist()


def _score(faults: Any, data: Path, out: Path) -> dict[str, int]:
    from curate.config import load_config
    from curate.score import score_corpus
    from curate.toy.faults import SCORING

    return score_corpus(load_config(overrides=[f"data.path={data}", f"output.path={out}", *SCORING,
                                               "output.rows_per_shard=8"]))


def _tear(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _ray_faults(faults: Any, out: Path) -> dict[str, Any]:
    """kill -9 the driver, tear a shard, interrupt a commit, kill an actor: then finish."""
    from curate.toy.faults import SCORING

    args = [sys.executable, "-m", "curate", "run", "--no-report", f"data.path={faults.corpus}", f"output.path={out}",
            "ray.batch_size=2", "output.rows_per_shard=2", "ray.address=local", *SCORING]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    log = open(out.parent / "run.log", "w")
    checkpoint = out / "checkpoint"

    def start() -> subprocess.Popen:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def actors() -> list[int]:
        found = subprocess.run(["pgrep", "-f", "ScoringActor"], capture_output=True, text=True).stdout.split()
        return [int(p) for p in found]

    first = start()
    while first.poll() is None and len([p for p in checkpoint.glob("*.parquet") if ".pending" not in p.name]) < 3:
        time.sleep(0.3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    committed = sorted(p for p in checkpoint.glob("*.parquet") if ".pending" not in p.name)
    _tear(next(f for f in sorted((out / "annotated").glob("*.parquet")) if f.name.startswith(committed[0].stem)))
    committed[1].rename(committed[1].with_name(committed[1].stem + ".pending.parquet"))
    second = start()
    while second.poll() is None and not actors():
        time.sleep(0.3)
    time.sleep(2)
    killed = actors()[:1]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    code = second.wait(timeout=600)
    return {"exit": code, "driver_kills": 1, "actor_kills": len(killed), "torn_shards": 1, "interrupted_commits": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ray", action="store_true", help="also the curate run scenario with kills (~1 min)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    from curate.toy.faults import tally, write_fault_corpus

    results: dict[str, Any] = {"machine": machine()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        faults = write_fault_corpus(Path(tmp) / "root")
        _score(faults, faults.clean, Path(tmp) / "clean")
        clean = {r["id"]: r for r in _annotated(Path(tmp) / "clean")}
        out = Path(tmp) / "score"
        _score(faults, faults.corpus, out)
        first = tally(_annotated(out), faults, clean)
        shards = sorted((out / "annotated").glob("*.parquet"))
        _tear(shards[len(shards) // 2])
        redo = _score(faults, faults.corpus, out)
        torn = tally(_annotated(out), faults, clean)
        scenarios = [("curate score", first, {}), ("curate score, torn shard resumed", torn, {"rows_redone": redo["rows"]})]
        if args.ray:
            extra = _ray_faults(faults, Path(tmp) / "run")
            scenarios.append(("curate run, kills + torn shard + interrupted commit",
                              tally(_annotated(Path(tmp) / "run"), faults, clean), extra))
        for name, t, extra in scenarios:
            results[name] = {**vars(t), "rows_lost": t.rows_lost, **extra}
            rows.append([name, t.bad_kinds, f"{t.bad_rows_explained}/{t.bad_kinds}", t.lines, t.rows_out,
                         t.rows_lost, f"{t.good_rows_equal}/{len(clean)}", len(t.problems)])
    path = write_results("faults", results, args.out_dir)
    print(f"raw numbers: {path}")
    print(table(["scenario", "bad kinds", "explained", "rows in", "rows out", "lost", "good = clean", "problems"],
                rows))
    return 0 if all(not r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
