"""Run a study's steps: skip what is finished, run the rest as child processes (or Ray tasks), log.

Every step's output goes to ``logs/<step>.log``; the console gets one line per step. A failed step
stops its arm and seed (later steps of that chain need its output) and the study goes on with the
others; the exit status says whether everything finished. After each selection the study checks that
no held-out id is in the arm's data: a leak fails that arm loudly instead of inflating its score.
Stopped (Ctrl-C, SIGTERM: ``kill``, a scheduler's stop), the study stops its running steps' processes
and Ray tasks before it exits, so none goes on writing into the study; they rerun on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from rl.study.config import StudyConfig
from rl.study.plan import Step, StudyLayout, base_model, latest_checkpoint

__all__ = ["HeldoutLeak", "StudyRun", "arm_training_ids", "heldout_ids", "stale_steps"]


class HeldoutLeak(RuntimeError):
    """An arm's selection holds rows of the held-out split."""


def _marker_path(layout: StudyLayout, name: str) -> Path:
    return layout.steps / f"{name}.json"


def read_marker(layout: StudyLayout, name: str) -> Optional[dict]:
    path = _marker_path(layout, name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stale_steps(steps: Sequence[Step], layout: StudyLayout) -> set[str]:
    """Names of the steps that must run: no marker, another command, a dependency that changed or runs,
    or outputs a step that runs needs and that are gone (then that producer runs again too)."""
    by_name = {s.name: s for s in steps}
    markers = {s.name: read_marker(layout, s.name) for s in steps}
    stale: set[str] = set()
    changed = True
    while changed:
        changed = False
        for step in steps:  # forward: a step is stale if it or what it depends on is
            if step.name in stale:
                continue
            marker = markers[step.name]
            current = (
                marker is not None
                and not any(d in stale for d in step.deps)
                and marker.get("deps") == {d: (markers[d] or {}).get("token") for d in step.deps}
                and step.command(False) == marker.get("definition")
            )
            if not current:
                stale.add(step.name)
                changed = True
        for step in reversed(steps):  # backward: a stale step needs its dependencies' outputs
            if step.name not in stale:
                continue
            for dep in step.deps:
                if dep not in stale and not by_name[dep].outputs_present():
                    stale.add(dep)
                    changed = True
    return stale


def _read_ids(parquet: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {str(i) for i in pq.read_table(parquet, columns=["id"]).column("id").to_pylist()}


def heldout_ids(cfg: StudyConfig, layout: StudyLayout) -> set[str]:
    """Ids of the held-out rows: the drawn split's, or those ``rl eval`` read from an external set."""
    if cfg.heldout.path is None:
        return _read_ids(layout.heldout_ids())
    samples = json.loads(layout.base_eval.read_text())["samples"]
    return {str(s["id"]) for s in samples}


def _canonical_files(selection: Path) -> list[Path]:
    """Every canonical Parquet file of a written selection (each subset's train and val splits)."""
    manifest = json.loads((selection / "manifest.json").read_text())
    return [selection / relative for subset in manifest["subsets"].values()
            for relative in subset.get("files", {}).get("canonical", {}).values()]


def arm_training_ids(selection: Path) -> set[str]:
    """Ids of every row any subset of a written selection holds (train and val splits)."""
    return set().union(*map(_read_ids, _canonical_files(selection)))


def _content_ids(parquet: Path) -> dict[bytes, str]:
    """A row id per content key (curate.schema.content_keys) of a canonical Parquet file."""
    import pyarrow.parquet as pq

    from curate import schema as S

    table = pq.read_table(parquet, columns=[S.ID, S.QUESTION, S.IMAGES])
    return dict(zip(S.content_keys(table), map(str, table.column(S.ID).to_pylist())))


def check_disjoint(cfg: StudyConfig, layout: StudyLayout, arm: str, seed: int) -> None:
    """No held-out row in an arm's selection: by id, and (for a drawn split) by content, since a
    corpus may hold one sample under two ids."""
    selection = layout.selection(arm, seed)
    leaked = heldout_ids(cfg, layout) & arm_training_ids(selection)
    if leaked:
        raise HeldoutLeak(f"arm {arm!r} seed {seed}: {len(leaked)} held-out row(s) in its selection, "
                          f"e.g. {sorted(leaked)[0]!r}")
    if cfg.heldout.path is not None:  # rl eval's record of an external set has ids, not contents
        return
    held = _content_ids(layout.heldout_ids())
    for parquet in _canonical_files(selection):
        trained = _content_ids(parquet)
        copies = sorted(held.keys() & trained.keys())
        if copies:
            raise HeldoutLeak(
                f"arm {arm!r} seed {seed}: {len(copies)} held-out row(s) repeated in its selection under "
                f"another id (same question and images), e.g. held-out {held[copies[0]]!r} = "
                f"{trained[copies[0]]!r} in {parquet}")


@dataclass
class StudyRun:
    """Runs the stale steps of a study in order."""

    cfg: StudyConfig
    layout: StudyLayout
    steps: list[Step]
    # Prints one line per event (the console); the full output of each step goes to its log file.
    say: Callable[[str], None] = print
    failed: dict[str, str] = field(default_factory=dict)
    # What the running steps started: child processes (each its own process group) and Ray tasks.
    _children: set[subprocess.Popen] = field(default_factory=set, repr=False)
    _tasks: set = field(default_factory=set, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    def run(self) -> bool:
        """True when every step is finished (now or before).

        Up to ``parallel`` steps run at once, started in plan order as soon as the steps they need are
        finished; a failed step stops what depends on it only.
        """
        self.layout.steps.mkdir(parents=True, exist_ok=True)
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        stale = stale_steps(self.steps, self.layout)
        todo = [s for s in self.steps if s.name in stale]
        self.say(f"study {self.layout.root}: {len(self.steps)} steps, {len(self.steps) - len(todo)} finished "
                 f"before, {len(todo)} to run" + (f", {self.cfg.parallel} at a time" if self.cfg.parallel > 1
                                                  else ""))
        number = {step.name: f"[{index}/{len(todo)}]" for index, step in enumerate(todo, 1)}
        pending = list(todo)
        blocked: set[str] = set()
        running: dict[Future, tuple[Step, float]] = {}
        with ThreadPoolExecutor(max_workers=self.cfg.parallel) as pool, self._stop_on_signals():
            while pending or running:
                # what a step may still have to wait for (a step started below stays in it this pass)
                unfinished = {s.name for s in pending} | {s.name for s, _ in running.values()}
                for step in list(pending):
                    if len(running) >= self.cfg.parallel:
                        break
                    if any(d in blocked or d in self.failed for d in step.deps):
                        pending.remove(step)
                        blocked.add(step.name)
                        self.say(f"{number[step.name]} {step.name}: skipped (a step it needs failed)")
                    elif unfinished.isdisjoint(step.deps):
                        pending.remove(step)
                        self.say(f"{number[step.name]} {step.name} ...")
                        running[pool.submit(self._run_step, step)] = (step, time.monotonic())
                if not running:
                    continue  # everything left was skipped in this pass
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    step, started = running.pop(future)
                    error, seconds = future.result(), time.monotonic() - started
                    if error is None:
                        self.say(f"{number[step.name]} {step.name}: done in {seconds:.0f} s")
                    else:
                        self.failed[step.name] = error
                        self.say(f"{number[step.name]} {step.name}: FAILED after {seconds:.0f} s: {error}")
        return not self.failed and not blocked

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM exits like Ctrl-C; either way, the running steps are stopped before the pool waits
        for them. (Signal handlers belong to the main thread: elsewhere, only the cleanup applies.)"""

        def terminate(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, terminate) if main else None
        try:
            yield
        except BaseException:
            self._stop_running_steps()
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def _stop_running_steps(self, grace: float = 30.0) -> None:
        """SIGTERM to each running step's process group, SIGKILL after ``grace`` s; cancel Ray tasks."""
        self._stopping.set()
        children = list(self._children)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        if self._tasks:
            import ray

            for task in list(self._tasks):
                ray.cancel(task, force=True)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
        if children or self._tasks:
            self.say(f"stopped {len(children)} running step process(es), {len(self._tasks)} Ray task(s)")

    def _run_step(self, step: Step) -> Optional[str]:
        command = step.command(True)
        for owned in step.owns:
            shutil.rmtree(owned, ignore_errors=True)
        _marker_path(self.layout, step.name).unlink(missing_ok=True)
        if step.kind == "train":  # verl's file logger opens its file without creating the folder
            Path(step.env["VERL_FILE_LOGGER_PATH"]).parent.mkdir(parents=True, exist_ok=True)
        log = self.layout.logs / f"{step.name}.log"
        started = time.monotonic()
        rc = self._execute(step, command, log)
        if rc != 0:
            return f"exit code {rc} (log: {log})"
        try:
            if step.kind == "select":
                check_disjoint(self.cfg, self.layout, step.arm, step.seed)
        except HeldoutLeak as err:
            return str(err)
        if step.kind == "sft":
            self._restore_processor(step)
        if step.kind == "eval" and step.arm is not None and not self.cfg.train.keep_checkpoints:
            shutil.rmtree(self.layout.checkpoints(step.arm, step.seed), ignore_errors=True)
        tokens = {d: (read_marker(self.layout, d) or {}).get("token") for d in step.deps}
        _write_json(_marker_path(self.layout, step.name), {
            "definition": step.command(False), "command": command, "deps": tokens, "token": uuid.uuid4().hex,
            "seconds": round(time.monotonic() - started, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        return None

    def _restore_processor(self, step: Step) -> None:
        """verl's SFT checkpoint drops a remote-code processor (the toy model's: its module and the
        ``auto_map`` naming it) and GRPO starts from that checkpoint: give it the base model's processor
        files back, as ``rl iterate`` does. A hub id has no local files and a standard processor."""
        from curate.modeling import resolve_model_path, restore_processor_files

        base = Path(resolve_model_path(base_model(self.cfg)))
        last = latest_checkpoint(self.layout.sft(step.arm, step.seed))
        if base.is_dir() and last is not None and (last / "huggingface").is_dir():
            restore_processor_files(base, last / "huggingface")

    def _execute(self, step: Step, command: list[str], log: Path) -> int:
        argv = [sys.executable, *command[1:]] if command[0] == "python" else command
        env = {**os.environ, **step.env}
        if step.num_gpus > 0:
            return _on_ray(argv, step.env, log, step.num_gpus, self._tasks)
        with open(log, "w") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            if self._stopping.is_set():  # a step the pool started while the study was stopping
                return -signal.SIGTERM
            # Its own process group: a stop reaches everything the step started (verl's Ray, workers).
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
            self._children.add(child)
            if self._stopping.is_set():  # the stop came while it started: it missed the stop's list
                os.killpg(child.pid, signal.SIGTERM)
            try:
                return child.wait()
            finally:
                self._children.discard(child)


def _write_json(path: Path, value: dict) -> None:
    """Write then rename: a marker is whole or absent."""
    scratch = path.with_name(f".{path.name}.partial")
    scratch.write_text(json.dumps(value, indent=2))
    os.replace(scratch, path)


_RAY_INIT = threading.Lock()


def _on_ray(argv: list[str], extra_env: dict[str, str], log: Path, num_gpus: float, tasks: set) -> int:
    """Run ``argv`` in a Ray task that reserves ``num_gpus`` on the study's cluster; its output comes back
    to ``log``. The task's node sees the study's paths (shared storage, as for every Ray job); it keeps
    its own environment (Ray's CUDA_VISIBLE_DEVICES for the GPUs it reserved) plus ``extra_env``."""
    import ray

    if not os.environ.get("RAY_ADDRESS"):
        raise RuntimeError("eval.num_gpus > 0 runs evaluations as Ray tasks: run the study on a Ray cluster "
                           "(RAY_ADDRESS, as `ray job submit` sets it) or set eval.num_gpus=0")
    with _RAY_INIT:  # steps running at once would otherwise race to connect
        ray.init(ignore_reinit_error=True, log_to_driver=False)

    @ray.remote(num_gpus=num_gpus)
    def run(argv: list[str], extra_env: dict[str, str]) -> tuple[int, str]:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **extra_env})
        return done.returncode, done.stdout

    task = run.remote(argv, extra_env)
    tasks.add(task)  # cancelled if the study is stopped
    try:
        rc, output = ray.get(task)
    finally:
        tasks.discard(task)
    log.write_text("$ " + " ".join(argv) + "\n" + output)
    return rc

