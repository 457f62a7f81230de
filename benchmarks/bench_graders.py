"""Grader agreement: how often each grader's verdict matches a human label, per task type.

Every grader judges the same labelled VLM-RL responses; the table gives, per task type and per
failure class, the share of cases where its verdict equals the human label `correct`, and how many
reward-hack attempts (`hack: true`, which must earn nothing) it still pays. A reward that disagrees
with people on a task type teaches the wrong thing there, and a paid hack is a reward the policy
will learn to farm, so these two numbers are what tells graders apart.

Corpus (JSONL, one case a line; default tests/data/grading/*.jsonl): id, task, verifier (optional),
response, ground_truth, correct (the human label), hack (optional), klass (failure class), style,
note, context (optional: a box case's coordinate conventions and image size, which a run states in
its grading config; only our grader has such options, the peers compare boxes as written).

Graders, and the function each applies per task ("n/a": the grader has nothing for the task; its
agreement is over the cases it covers, and the coverage row says how many that is):

  ours       curate.grading.grade(task, response, ground_truth, verifier, options from context): every
             task.
  verl       verl 0.9.1 as installed in .venv (verl.utils.reward_score):
               math, chart, science, puzzle -> math_verify.compute_score(response, gt): Math-Verify,
                 which verl's default_compute_score recommends over its string-matching MATH
                 scorer; not math_dapo, which reads only "Answer: ..." lines or compares the last
                 \\boxed{} by exact string, i.e. it grades DAPO's prompt format, not the answer;
               multiple_choice, yes_no, short_answer, counting, ocr ->
                 default_compute_score("hiyouga/geometry3k", response, gt): geo3k.compute_score,
                 the reward of verl's VLM example (mathruler's grade_answer on the last \\boxed{});
               grounding, detection -> n/a (verl has no box reward).
  easyr1     EasyR1 examples/reward_function/, loaded from the file as EasyR1's reward manager
             does. EasyR1 ties each reward to the format prompt that asks for it (math.jinja asks
             for \\boxed{}, r1v.jinja for <answer>), and the corpus does not keep prompts, so the
             response's own format stands for its prompt: a response with \\boxed{ -> math.py,
             any other -> r1v.py, for every task but grounding and detection (n/a: no box reward).
  difficulty_sampling
             the released ms-swift plugin of the paper (DifficultySampling PISM/reward_fn/plugin.py,
             the same file as CMAB/reward_fn/plugin.py), under the registry names its training
             scripts pass to --reward_funcs:
               counting, ocr, grounding, detection -> "visual_perception_accuracy" (its VPT runs;
                 the plugin itself picks box / OCR / counting scoring from the ground truth);
               every other task -> "external_r1v_acc" (its VRT runs: math-verify, then exact
                 <answer> string match).
  orsta      Orsta / V-Triune's reward server verifiers (One-RL-to-See-Them-All
             reward_server/verify.py), chosen as Orsta's data does, by the sample's verifier name:
             a case whose `verifier` is "mathverify" or "detection" uses it; otherwise grounding,
             detection -> "detection" and every other task -> "mathverify". Detection runs with
             DET_IOU_THRESHOLD=0.5 (the server script's "dynamic" is a training schedule, IoU 0.85
             then 0.99), det_verifier_normalized off (answer and truth share coordinates) and
             det_reward_ratio {iou_max_label_first: 1, iou_completeness: 0.3, others 0}, the values
             of Orsta's own example payload (verl/workers/reward_manager/remote_proxy.py, 2de4b12).

Box cases whose ground truth is not a list of labelled {'bbox_2d': [...], 'label': ...} dicts (bare
[x1, y1, x2, y2] boxes, as in RefCOCO-style grounding, or an empty list) are n/a for Orsta and the
plugin: both match boxes by label and drop or fail on anything else, so such a truth has no grader
there (their data, Orsta's, labels every box).

Ground truths reach Orsta and the plugin in Orsta's `reward_model.ground_truth` form, the form the
plugin's data came in (its README: the data is Orsta's; its grpo_sft.py strips \\boxed{} from
solutions): boxes wrapped as "<answer>\\n...\\n</answer>", anything else as "\\boxed{...}", each
unless already so. Everyone else gets the corpus's ground truth as is.

Accuracy part and "correct". Format rewards are left out; a verdict is "correct" when the accuracy
part is >= 0.5, and a hack is "paid" when it is > 0:
  ours: .correct, and .score for hacks.
  verl: math_verify returns the accuracy (0/1). geo3k returns 0.9*acc + 0.1*format with acc and
    format in {0, 1}, so the score is one of 0, 0.1, 0.9, 1 and acc = 1 exactly when it is >= 0.5.
  easyr1: the "accuracy" entry of its score dict (0/1).
  difficulty_sampling: the ORM's value: 0/1, or the area-weighted mean IoU for boxes.
  orsta: verify_accuracy (mathverify: 0/1; detection: its "final_score", a continuous IoU score).

Isolation. Each grader runs in its own worker process (benchmarks.common.run_worker); ours and
verl in this project's environment, the peers in a throwaway environment. Inside a worker, every
call runs in a forked child under a deadline (--timeout): a call that raises, hangs or kills its
child counts as "incorrect" for that case (and is counted as an error or timeout), and a fresh
child takes over. Nothing here evaluates model output; the peers' code is loaded from the
checkouts at run time and is never copied into this repository.

Setup (once; GitHub for the checkouts, PyPI for the environment):

  # 1. the throwaway environment, made from the project's Python: verl's geo3k imports mathruler,
  #    which verl does not install, so the verl worker borrows it from here (same Python only)
  .venv/bin/python -m venv /tmp/hardmode-peers
  /tmp/hardmode-peers/bin/pip install mathruler==0.1.0 pylatexenc==2.10 tqdm==4.67.1 \\
      math-verify==0.9.0 word2number==1.1 regex==2026.11.19 sympy==1.14.0 \\
      numpy==2.4.6 matplotlib==3.11.2 pycocotools==2.0.11
  # 2. the peers' code at the pinned commits, one checkout per directory under --peers
  P=/tmp/hardmode-peers/src; mkdir -p $P
  git clone https://github.com/hiyouga/EasyR1 $P/EasyR1
  git -C $P/EasyR1 checkout b44b311b669bf1fd1aa2fc36f2251482ba33cb16
  git clone https://github.com/qijianyu277/DifficultySampling $P/DifficultySampling
  git -C $P/DifficultySampling checkout 4e50e503342d62ad12b829a5614c6d72573b5e6e
  git clone https://github.com/MiniMax-AI/One-RL-to-See-Them-All $P/One-RL-to-See-Them-All
  git -C $P/One-RL-to-See-Them-All checkout 39bcf0d0537d7aa211d2f6ce73c8e51c396c1adb

The plugin imports ms-swift and torch at module level for classes not used here (reward models,
code sandboxes); when they are not installed, the worker registers empty stand-ins for those
modules (ms-swift's ORM base class and registries) instead of installing ms-swift 3.7.2 and torch.

Run (from the repository root, in the project environment):

  .venv/bin/python benchmarks/bench_graders.py                        # the default corpus, all graders
  .venv/bin/python benchmarks/bench_graders.py my_cases.jsonl --graders ours verl
  .venv/bin/python benchmarks/bench_graders.py --peers DIR --peer-python ENV/bin/python --json out.json

A grader that cannot be loaded (no checkout, no environment) is reported as unavailable and the
others still run. A checkout at another commit than the pinned one is used, with a warning.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, machine, run_worker, serve_worker, write_results

DEFAULT_CORPUS = "tests/data/grading/*.jsonl"
DEFAULT_PEER_ENV = Path("/tmp/hardmode-peers")
TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 300.0  # verl's math-verify starts 4 spawned processes that each import verl
MAX_ERROR_CHARS = 300

# The task types of the corpus, in table order.
MATH_FAMILY = ("math", "chart", "science", "puzzle")
ANSWER_TASKS = ("multiple_choice", "yes_no", "short_answer")
PERCEPTION = ("counting", "ocr")
BOX_TASKS = ("grounding", "detection")
TASKS = MATH_FAMILY + ANSWER_TASKS + PERCEPTION + BOX_TASKS
CORRECT_AT = 0.5  # accuracy part at which a peer's verdict counts as "correct"


@dataclass(frozen=True)
class Case:
    """One labelled response (the corpus fields the graders and the tables use)."""

    id: str
    task: str
    response: str
    ground_truth: str
    correct: bool
    verifier: str | None = None
    hack: bool = False
    klass: str = ""
    style: str = ""
    context: str = ""
    """JSON: box coordinate conventions and image size, as a run's grading config states them"""


def read_cases(path: str | Path) -> list[Case]:
    """The cases of one JSONL file; a line without a required field is an error naming it."""
    cases = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("id", "task", "response", "ground_truth", "correct") if k not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing {missing}")
        truth = row["ground_truth"]
        cases.append(
            Case(
                id=str(row["id"]),
                task=str(row["task"]),
                response=str(row["response"]),
                ground_truth=truth if isinstance(truth, str) else json.dumps(truth),
                correct=bool(row["correct"]),
                verifier=row.get("verifier") or None,
                hack=bool(row.get("hack", False)),
                klass=str(row.get("klass", "")),
                style=str(row.get("style", "")),
                context=row["context"] if isinstance(row.get("context"), str) else json.dumps(row.get("context") or {}),
            )
        )
    return cases


# ---- graders, as their authors' code applies them (worker side) --------------------------------


def _load_module(name: str, path: Path) -> types.ModuleType:
    """Import a peer's Python file by path under ``name`` (as EasyR1 loads reward files)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def orsta_solution(case: Case) -> str:
    """The ground truth as Orsta's data carries it in ``reward_model.ground_truth``."""
    truth = case.ground_truth.strip()
    if case.task in BOX_TASKS:
        return truth if "<answer>" in truth else f"<answer>\n{truth}\n</answer>"
    return truth if "\\boxed" in truth else f"\\boxed{{{truth}}}"


_LABELLED_BOX = re.compile(r"""['"]bbox_2d['"][^{}]*['"]label['"]|['"]label['"][^{}]*['"]bbox_2d['"]""")


def labelled_boxes(truth: str) -> bool:
    """Whether a box truth is a list of ``{'bbox_2d': [...], 'label': ...}``: the only form Orsta's
    and the plugin's box graders read (both match boxes by label)."""
    return _LABELLED_BOX.search(truth) is not None


class Grader:
    """A grader: which of its functions serves a case (``route``) and that function's verdict."""

    name: ClassVar[str]
    env: ClassVar[str]  # "project" (.venv) or "peer" (the throwaway environment)
    checkout: ClassVar[str | None] = None  # directory under --peers
    pinned: ClassVar[str | None] = None

    def __init__(self, peers: Path) -> None:
        """Load the grader's code; ``peers`` is the directory of the peers' checkouts."""

    def route(self, case: Case) -> str | None:
        """The function applied to ``case``, or None when the grader has none for its task."""
        raise NotImplementedError

    def score(self, case: Case, fn: str) -> tuple[float, bool]:
        """(accuracy part, correct) of ``fn`` on ``case``; may raise or hang (the sandbox copes)."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """One-off work in each fresh sandbox child, before the timed calls (default: none)."""


class Ours(Grader):
    name, env = "ours", "project"

    def __init__(self, peers: Path) -> None:
        from curate.grading import GradingOptions, grade

        self._grade, self._options = grade, GradingOptions

    def route(self, case: Case) -> str | None:
        return "curate.grading.grade"

    def score(self, case: Case, fn: str) -> tuple[float, bool]:
        context = json.loads(case.context or "{}")
        options = self._options(
            answer_box_format=context.get("answer_box_format", "auto"),
            truth_box_format=context.get("truth_box_format", "auto"),
        )
        size = tuple(context["image_size"]) if "image_size" in context else None
        result = self._grade(case.task, case.response, case.ground_truth, case.verifier, options=options,
                             image_size=size)
        return float(result.score), bool(result.correct)


class Verl(Grader):
    name, env = "verl", "project"
    MATH_VERIFY = "reward_score.math_verify.compute_score"
    GEO3K = "default_compute_score('hiyouga/geometry3k')"

    def __init__(self, peers: Path) -> None:
        import mathruler.grader  # noqa: F401  geo3k imports it when called: fail here, once
        from verl.utils.reward_score import default_compute_score, math_verify

        self._default_compute_score = default_compute_score
        self._math_verify = math_verify

    def route(self, case: Case) -> str | None:
        if case.task in MATH_FAMILY:
            return self.MATH_VERIFY
        if case.task in ANSWER_TASKS + PERCEPTION:
            return self.GEO3K
        return None

    def score(self, case: Case, fn: str) -> tuple[float, bool]:
        if fn == self.MATH_VERIFY:
            accuracy = float(self._math_verify.compute_score(case.response, case.ground_truth))
        else:  # 0.9 * acc + 0.1 * format, acc and format in {0, 1}
            reward = float(
                self._default_compute_score("hiyouga/geometry3k", case.response, case.ground_truth)
            )
            accuracy = 1.0 if reward >= CORRECT_AT else 0.0
        return accuracy, accuracy >= CORRECT_AT

    def warm_up(self) -> None:
        # math_verify.compute_score starts verl's process pool on first use; keep that out of the
        # per-call deadline
        self._math_verify.compute_score("\\boxed{1}", "1")


class EasyR1(Grader):
    name, env = "easyr1", "peer"
    checkout, pinned = "EasyR1", "b44b311b669bf1fd1aa2fc36f2251482ba33cb16"

    def __init__(self, peers: Path) -> None:
        functions = peers / self.checkout / "examples" / "reward_function"
        self._rewards = {
            "math.py": _load_module("easyr1_reward_math", functions / "math.py"),
            "r1v.py": _load_module("easyr1_reward_r1v", functions / "r1v.py"),
        }

    def route(self, case: Case) -> str | None:
        if case.task not in MATH_FAMILY + ANSWER_TASKS + PERCEPTION:
            return None
        return "math.py" if "\\boxed{" in case.response else "r1v.py"

    def score(self, case: Case, fn: str) -> tuple[float, bool]:
        reward = self._rewards[fn]
        # response_length is the token count in EasyR1; math.py and r1v.py do not read it
        given = {
            "response": case.response,
            "response_length": len(case.response),
            "ground_truth": case.ground_truth,
        }
        result = (
            reward.compute_score([given])[0] if reward.REWARD_TYPE == "batch" else reward.compute_score(given)
        )
        accuracy = float(result["accuracy"])
        return accuracy, accuracy >= CORRECT_AT


def _stand_in(name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _stand_in_for_ms_swift_and_torch() -> None:
    """Empty modules for what the plugin imports at module level but only its unused classes need."""
    if importlib.util.find_spec("swift") is None:

        class ORM:  # ms-swift's base class: __call__(completions, **dataset columns) -> rewards
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

        class NotInstalled:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("ms-swift is not installed in this environment")

        _stand_in("swift")
        _stand_in(
            "swift.llm",
            PtEngine=NotInstalled,
            RequestConfig=NotInstalled,
            Template=NotInstalled,
            to_device=NotInstalled,
        )
        _stand_in("swift.llm.infer")
        _stand_in("swift.llm.infer.protocol", ChatCompletionResponse=NotInstalled)
        _stand_in("swift.plugin", ORM=ORM, orms={}, rm_plugins={})
        _stand_in("swift.plugin.rm_plugin", DefaultRMPlugin=NotInstalled)
        _stand_in("swift.utils", get_logger=logging.getLogger)
    if importlib.util.find_spec("torch") is None:
        _stand_in("torch")


class DifficultySampling(Grader):
    name, env = "difficulty_sampling", "peer"
    checkout, pinned = "DifficultySampling", "4e50e503342d62ad12b829a5614c6d72573b5e6e"
    PERCEPTION_ORM, REASONING_ORM = "visual_perception_accuracy", "external_r1v_acc"

    def __init__(self, peers: Path) -> None:
        _stand_in_for_ms_swift_and_torch()
        plugin = _load_module(
            "difficulty_sampling_plugin", peers / self.checkout / "PISM" / "reward_fn" / "plugin.py"
        )
        self._orms = {name: plugin.orms[name]() for name in (self.PERCEPTION_ORM, self.REASONING_ORM)}

    def route(self, case: Case) -> str | None:
        if case.task in PERCEPTION or (case.task in BOX_TASKS and labelled_boxes(case.ground_truth)):
            return self.PERCEPTION_ORM
        if case.task in MATH_FAMILY + ANSWER_TASKS:
            return self.REASONING_ORM
        return None

    def score(self, case: Case, fn: str) -> tuple[float, bool]:
        accuracy = float(self._orms[fn](completions=[case.response], solution=[orsta_solution(case)])[0])
        return accuracy, accuracy >= CORRECT_AT


class Orsta(Grader):
    name, env = "orsta", "peer"
    checkout, pinned = "One-RL-to-See-Them-All", "39bcf0d0537d7aa211d2f6ce73c8e51c396c1adb"
    DET_REWARD_RATIO = {
        "iou_max_label_first": 1.0,
        "iou_max_iou_first": 0.0,
        "iou_completeness": 0.3,
        "map": 0.0,
        "map50": 0.0,
        "map75": 0.0,
    }

    def __init__(self, peers: Path) -> None:
        server = peers / self.checkout / "reward_server"
        sys.path.insert(0, str(server))  # verify.py imports its helpers as the top-level `utils`
        os.environ["DET_IOU_THRESHOLD"] = "0.5"  # read when a DetectionVerifier is made
        verify = _load_module("orsta_verify", server / "verify.py")
        step = {"is_training": False, "step": 0, "total_steps": 1}
        self._verifiers = {
            "mathverify": verify.Verifier.get("mathverify")(**step),
            "detection": verify.Verifier.get("detection")(
                **step, det_verifier_normalized=False, det_reward_ratio=dict(self.DET_REWARD_RATIO)
            ),
        }

    def route(self, case: Case) -> str | None:
        verifier = case.verifier if case.verifier in self._verifiers else None
        if verifier == "detection" or (verifier is None and case.task in BOX_TASKS):
            return "detection" if labelled_boxes(case.ground_truth) else None
        return verifier or ("mathverify" if case.task in TASKS else None)

    def score(self, case: Case, fn: str) -> tuple[float, bool]:
        result = self._verifiers[fn].verify_accuracy(case.response, orsta_solution(case))
        accuracy = float(result["final_score"] if isinstance(result, dict) else result)
        return accuracy, accuracy >= CORRECT_AT


GRADERS: dict[str, type[Grader]] = {g.name: g for g in (Ours, Verl, EasyR1, DifficultySampling, Orsta)}


# ---- isolation: one call at a time in a forked child, under a deadline -------------------------


def _serve_calls(conn: Connection, grader: Grader, cases: Sequence[Case]) -> None:
    """The sandbox child: answer ("warm_up" | (case index, function)) messages until None."""
    os.setpgrp()  # its own process group, so a kill also reaches processes a grader started
    os.dup2(2, 1)  # graders print; the worker's stdout carries only its JSON result
    while (message := conn.recv()) is not None:
        try:
            if message == "warm_up":
                grader.warm_up()
                conn.send(("ok", None))
            else:
                index, fn = message
                conn.send(("ok", grader.score(cases[index], fn)))
        except BaseException as error:  # whatever a grader raises (even SystemExit) is its verdict
            conn.send(("error", f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]))


class Sandbox:
    """Runs a grader's calls one at a time in a forked child with a deadline each.

    Forked, so the child starts with the grader already loaded; a call that hangs is ended by
    killing the child's process group (also any pool the grader started) and the next call gets a
    fresh child. Signal-based timeouts in the worker itself are not an option: math-verify uses
    SIGALRM for its own and would cancel ours.
    """

    def __init__(self, grader: Grader, cases: Sequence[Case], timeout_s: float, startup_s: float) -> None:
        self._grader, self._cases = grader, cases
        self._timeout_s, self._startup_s = timeout_s, startup_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _start(self) -> None:
        ours, theirs = multiprocessing.Pipe()
        # not a daemon: daemonic processes may not start children, and verl's math-verify does
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve_calls, args=(theirs, self._grader, self._cases)
        )
        self._process.start()
        theirs.close()
        self._conn = ours
        status, detail = self._exchange("warm_up", self._startup_s)
        if status != "ok":
            self._stop(graceful=False)
            raise RuntimeError(f"{self._grader.name} did not start: {status} {detail}")

    def _stop(self, graceful: bool = True) -> None:
        """End the child (asked to finish first when ``graceful``) and all its process group."""
        if self._process is None:
            return
        assert self._conn is not None
        if graceful:
            try:
                self._conn.send(None)
                self._process.join(timeout=5)
            except OSError:
                pass
        try:
            os.killpg(self._process.pid, signal.SIGKILL)  # leftovers: pools, a hung call
        except ProcessLookupError:
            pass
        self._process.join()
        self._conn.close()
        self._process = self._conn = None

    def _exchange(self, message: Any, deadline_s: float) -> tuple[str, Any]:
        assert self._conn is not None and self._process is not None
        self._conn.send(message)
        if not self._conn.poll(deadline_s):
            self._stop(graceful=False)
            return "timeout", f"no answer in {deadline_s:g} s"
        try:
            return self._conn.recv()
        except EOFError:
            self._process.join(timeout=5)
            code = self._process.exitcode
            self._stop(graceful=False)
            return "crash", f"the grader's process died (exit code {code})"

    def grade(self, index: int, fn: str) -> dict[str, Any]:
        """The verdict of ``fn`` on case ``index``; status "error", "timeout" or "crash" is a
        verdict too: incorrect, score None."""
        if self._process is None:
            self._start()
        started = time.perf_counter()
        status, detail = self._exchange((index, fn), self._timeout_s)
        verdict = {"fn": fn, "status": status, "seconds": round(time.perf_counter() - started, 4)}
        if status == "ok":
            score, correct = detail
            return {**verdict, "score": score, "correct": correct}
        return {**verdict, "score": None, "correct": False, "error": detail}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Grade every case with one grader; ``{"error": ...}`` when the grader cannot be loaded."""
    sys.path.extend(spec["borrowed_site_packages"])
    cases = read_cases(spec["cases"])
    try:
        grader = GRADERS[spec["grader"]](Path(spec["peers"]))
    except Exception as error:  # a missing checkout or package makes the grader unavailable
        return {"error": f"cannot load {spec['grader']}: {type(error).__name__}: {error}"}
    started = time.perf_counter()
    with Sandbox(grader, cases, spec["timeout_s"], spec["startup_s"]) as sandbox:
        verdicts = []
        for index, case in enumerate(cases):
            fn = grader.route(case)
            verdicts.append(sandbox.grade(index, fn) if fn else {"fn": None, "status": "n/a"})
    return {"verdicts": verdicts, "seconds": round(time.perf_counter() - started, 2)}


# ---- orchestration and tables (project environment) --------------------------------------------


def peer_site_packages(python: Path) -> tuple[str | None, str]:
    """The peer environment's site-packages if its Python is this one's minor version, else None
    (its compiled packages would not load here), with a note for the results."""
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import json, sys, sysconfig; "
            "print(json.dumps([sysconfig.get_paths()['purelib'], sys.version_info[:2]]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    site, version = json.loads(out.stdout)
    if tuple(version) != sys.version_info[:2]:
        return (
            None,
            f"peer Python {version} is not {list(sys.version_info[:2])}: verl cannot borrow mathruler",
        )
    return site, f"verl borrows mathruler from {site}"


def checkout_commit(path: Path) -> str | None:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or None


def run_grader(name: str, cases_path: Path, args: argparse.Namespace, borrowed: list[str]) -> dict[str, Any]:
    """One grader's worker run: its verdicts, or why it is unavailable."""
    cls = GRADERS[name]
    info: dict[str, Any] = {"env": cls.env}
    if cls.checkout:
        path = args.peers / cls.checkout
        commit = checkout_commit(path)
        info["source"] = {"path": str(path), "commit": commit, "pinned": cls.pinned}
        if commit and commit != cls.pinned:
            print(f"warning: {path} is at {commit}, not the pinned {cls.pinned}", file=sys.stderr)
    python = sys.executable if cls.env == "project" else str(args.peer_python)
    if not Path(python).exists():
        return {**info, "available": False, "error": f"no peer environment at {python} (see --help: Setup)"}
    spec = {
        "grader": name,
        "cases": str(cases_path),
        "peers": str(args.peers),
        "timeout_s": args.timeout,
        "startup_s": args.startup_timeout,
        "borrowed_site_packages": borrowed if cls.env == "project" else [],
    }
    try:
        result = run_worker(__file__, spec, python=python, what=f"grader {name}")
    except RuntimeError as error:
        return {**info, "available": False, "error": str(error)[-2000:]}
    if "error" in result:
        return {**info, "available": False, "error": result["error"]}
    return {**info, "available": True, **result}


def agreement(
    cases: Sequence[Case], verdicts: dict[str, list[dict[str, Any]]], key: Callable[[Case], str]
) -> dict[str, dict[str, Any]]:
    """Per group of ``key`` and "all": cases, and per grader the covered cases and agreements."""
    groups: dict[str, dict[str, Any]] = {}
    for index, case in enumerate(cases):
        for group in (key(case), "all"):
            row = groups.setdefault(group, {"cases": 0, **{g: {"covered": 0, "agree": 0} for g in verdicts}})
            row["cases"] += 1
            for grader, theirs in verdicts.items():
                correct = theirs[index].get("correct")
                if correct is not None:
                    row[grader]["covered"] += 1
                    row[grader]["agree"] += correct == case.correct
    for row in groups.values():
        for grader in verdicts:
            cell = row[grader]
            cell["agreement"] = cell["agree"] / cell["covered"] if cell["covered"] else None
    return groups


def paid_hacks(cases: Sequence[Case], verdicts: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per grader: covered hack cases, and the accuracy part of those it pays (> 0, however small:
    a hack must earn nothing)."""
    out = {}
    for grader, theirs in verdicts.items():
        covered = [
            (c, v) for c, v in zip(cases, theirs, strict=True) if c.hack and v.get("correct") is not None
        ]
        paid = {c.id: v["score"] for c, v in covered if (v.get("score") or 0.0) > 0}
        out[grader] = {"covered": len(covered), "paid": paid}
    return out


def functions_used(cases: Sequence[Case], theirs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per task: how often each function (or "n/a") was applied."""
    used: dict[str, Counter[str]] = {}
    for case, verdict in zip(cases, theirs, strict=True):
        used.setdefault(case.task, Counter())[verdict["fn"] or "n/a"] += 1
    return {task: dict(counts) for task, counts in used.items()}


def markdown(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def agreement_rows(
    groups: dict[str, dict[str, Any]], order: Sequence[str], graders: Sequence[str]
) -> list[list[Any]]:
    """Table rows: group, cases, and per grader "agreement% (covered cases)" or n/a."""

    def cell(c: dict[str, Any]) -> str:
        return f"{100 * c['agreement']:.1f}% ({c['covered']})" if c["covered"] else "n/a"

    return [
        [g if g != "all" else "**all**", groups[g]["cases"], *(cell(groups[g][x]) for x in graders)]
        for g in order
    ]


def task_order(present: Iterable[str]) -> list[str]:
    present = set(present)
    return [t for t in TASKS if t in present] + sorted(present - set(TASKS))


def print_report(
    cases: Sequence[Case],
    runs: dict[str, dict[str, Any]],
    by_task: dict[str, dict[str, Any]],
    by_klass: dict[str, dict[str, Any]],
    hacks: dict[str, dict[str, Any]],
) -> None:
    """The markdown tables (by task, with coverage, paid hacks and failed calls; by failure class),
    the functions each grader applied, and why any grader was unavailable."""
    graders = list(hacks)

    def errors(run: dict[str, Any]) -> int:
        return run["statuses"].get("error", 0) + run["statuses"].get("crash", 0)

    print("Agreement with the human labels by task (% of covered cases; covered cases in brackets)\n")
    n_hacks = sum(c.hack for c in cases)
    rows = agreement_rows(by_task, [*task_order(c.task for c in cases), "all"], graders) + [
        ["coverage", len(cases), *(f"{by_task['all'][g]['covered']}/{len(cases)}" for g in graders)],
        [
            "reward hacks paid (> 0)",
            n_hacks,
            *(f"{len(hacks[g]['paid'])}/{hacks[g]['covered']}" for g in graders),
        ],
        [
            "errors / timeouts",
            "",
            *(f"{errors(runs[g])} / {runs[g]['statuses'].get('timeout', 0)}" for g in graders),
        ],
    ]
    print(markdown(["task", "cases", *graders], rows))
    print("\nAgreement by failure class\n")
    klasses = sorted(k for k in by_klass if k != "all")
    print(markdown(["klass", "cases", *graders], agreement_rows(by_klass, [*klasses, "all"], graders)))
    print("\nFunctions applied")
    for name in graders:
        used: Counter[str] = Counter()
        for counts in runs[name]["functions"].values():
            used.update(counts)
        print(f"  {name}: " + ", ".join(f"{fn} ×{n}" for fn, n in used.most_common()))
    for name, run in runs.items():
        if not run["available"]:
            print(f"  {name}: unavailable ({run['error'].splitlines()[-1]})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "corpus", nargs="*", help=f"JSONL files or globs (default: {DEFAULT_CORPUS} in the repository)"
    )
    parser.add_argument("--graders", nargs="+", choices=list(GRADERS), default=list(GRADERS))
    parser.add_argument(
        "--peers", type=Path, default=DEFAULT_PEER_ENV / "src", help="directory of the peers' checkouts"
    )
    parser.add_argument(
        "--peer-python",
        type=Path,
        default=DEFAULT_PEER_ENV / "bin" / "python",
        help="the throwaway environment's Python",
    )
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per grading call")
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=STARTUP_TIMEOUT_S,
        help="seconds for a grader's one-off warm-up",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "graders.json", help="where the numbers go")
    args = parser.parse_args()
    if args.worker:
        return serve_worker(args.worker, worker)

    patterns = args.corpus or [str(ROOT / DEFAULT_CORPUS)]
    files = sorted({f for p in patterns for f in (glob.glob(p) or ([p] if Path(p).exists() else []))})
    if not files:
        parser.error(f"no corpus files match {patterns}")
    cases = [case for f in files for case in read_cases(f)]
    unknown = sorted({c.task for c in cases} - set(TASKS))
    if unknown:
        print(f"warning: tasks {unknown} have no peer routing; only ours grades them", file=sys.stderr)

    borrowed: list[str] = []
    peer_note = f"no peer environment at {args.peer_python}"
    if args.peer_python.exists():
        site, peer_note = peer_site_packages(args.peer_python)
        borrowed = [site] if site else []
    print(f"grader agreement: {len(cases)} cases from {len(files)} file(s); {peer_note}", flush=True)

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-graders-") as tmp:
        cases_path = Path(tmp) / "cases.jsonl"
        cases_path.write_text("".join(json.dumps(asdict(c)) + "\n" for c in cases), encoding="utf-8")
        for name in args.graders:
            runs[name] = run_grader(name, cases_path, args, borrowed)
            run = runs[name]
            state = (
                f"{run['seconds']:.1f} s"
                if run["available"]
                else f"unavailable: {run['error'].splitlines()[-1]}"
            )
            print(f"  {name:20s} {state}", flush=True)

    verdicts = {name: run.pop("verdicts") for name, run in runs.items() if run["available"]}
    graders = list(verdicts)
    for name in graders:
        runs[name]["functions"] = functions_used(cases, verdicts[name])
        runs[name]["statuses"] = dict(Counter(v["status"] for v in verdicts[name]))
    by_task = agreement(cases, verdicts, lambda c: c.task)
    by_klass = agreement(cases, verdicts, lambda c: c.klass or "(none)")
    hacks = paid_hacks(cases, verdicts)

    payload = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "corpus": {"files": files, "cases": len(cases)},
        "timeout_s": args.timeout,
        "peer_environment": peer_note,
        "graders": runs,
        "by_task": by_task,
        "by_klass": by_klass,
        "hacks": hacks,
        "cases": [
            {**asdict(c), "verdicts": {g: verdicts[g][i] for g in graders}} for i, c in enumerate(cases)
        ],
    }
    json_path = write_results(args.json.stem, payload, args.json.parent)

    print(f"\nresults: {json_path}\n")
    print_report(cases, runs, by_task, by_klass, hacks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
