"""``python -m rl study``: arm composition, resume, the statistics, held-out disjointness.

The statistics are checked against values computed by hand (Student-t quantiles from a table); the
resume rules against a study of real child processes that count how often each step ran; the
held-out rule against real ``curate select`` runs on a hand-built annotated dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest

from curate.config import ConfigError
from curate.toy.cache import METADATA_FILE
from rl.study import check_recipes, load_study
from rl.study.plan import Step, StudyLayout, build_steps, latest_checkpoint
from rl.study.report import _markdown, base_model_identity, collect, effective_ratio_per_step, summarize
from rl.study.runner import HeldoutLeak, StudyRun, arm_training_ids, check_disjoint, heldout_ids, stale_steps
from rl.study.stats import compare, interval

pytestmark = pytest.mark.toy_model  # tests/conftest.py: runs after the tests that need no model

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "study" / "toy.yaml"
ORSTA = REPO / "configs" / "study" / "orsta_qwen25vl7b.yaml"
SIGNAL = REPO / "configs" / "study" / "toy_signal.yaml"

# ---- statistics -------------------------------------------------------------------------------------


def test_interval_matches_a_hand_computed_t_interval():
    # values 0.5, 0.6, 0.7: mean 0.6, s = 0.1; t(0.975, 2) = 4.302653 (printed tables)
    iv = interval([0.5, 0.6, 0.7])
    assert iv.mean == pytest.approx(0.6)
    assert iv.half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert (iv.low, iv.high) == pytest.approx((0.6 - 0.248414, 0.6 + 0.248414), abs=1e-6)
    # five values: s = sqrt(sum((x - 3)^2) / 4) = sqrt(10 / 4); t(0.975, 4) = 2.776445
    iv = interval([1, 2, 3, 4, 5])
    assert iv.half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    single = interval([0.4])
    assert single.half is None and single.low is None and single.text() == "40.0 (n=1)"


def test_comparison_is_paired_by_seed_and_its_verdict_follows_the_interval():
    by_seed = {
        "mid": {0: 0.62, 1: 0.70, 2: 0.55},
        "random": {0: 0.60, 1: 0.66, 2: 0.52},  # mid is ahead by 0.02, 0.04, 0.03 on every seed
        "noisy": {0: 0.70, 1: 0.60, 2: 0.55},  # +0.10, -0.06, +0.03
        "worse": {0: 0.50, 1: 0.55, 2: 0.42, 3: 0.9},  # seed 3 has no control: left out
    }
    better = compare("mid", "random", by_seed)
    # differences 0.02, 0.04, 0.03: mean 0.03, s = 0.01, half = 4.302653 * 0.01 / sqrt(3)
    assert better.difference.mean == pytest.approx(0.03)
    assert better.difference.half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert better.verdict == "better"  # the arms' own intervals overlap widely; the paired one does not
    assert interval(list(by_seed["mid"].values())).low < interval(list(by_seed["random"].values())).high
    assert compare("noisy", "random", by_seed).verdict == "within noise"
    worse = compare("worse", "random", by_seed)
    assert worse.seeds == (0, 1, 2) and worse.verdict == "worse"
    assert compare("mid", "absent", by_seed) is None
    assert compare("mid", "random", {"mid": {0: 0.5}, "random": {0: 0.4}}).verdict == "unknown"


# ---- composition ------------------------------------------------------------------------------------


def _commands(steps: list[Step]) -> dict[str, list[str]]:
    return {s.name: s.command(False) for s in steps}


def test_toy_study_composes_every_arm_and_seed(tmp_path):
    cfg = load_study(str(TOY), [f"output={tmp_path}"])
    assert cfg.run == f"{tmp_path}/curate"  # ${output}/curate
    layout = StudyLayout(tmp_path)
    steps = build_steps(cfg, layout)
    names = [s.name for s in steps]
    assert names[:3] == ["curation", "heldout", "base.eval"]
    arms = list(cfg.arms)
    stages = {a: ("select", "sft", "train", "eval") if cfg.arms[a].sft_subset else ("select", "train", "eval")
              for a in arms}
    assert names[3:] == [f"{a}.seed{s}.{k}" for s in cfg.seeds for a in arms for k in stages[a]]
    assert stages["sft_hard_grpo_mid"][1] == "sft"  # the paper's hybrid runs on the toy world too
    commands = _commands(steps)
    for arm in arms:
        for seed in cfg.seeds:
            select = commands[f"{arm}.seed{seed}.select"]
            assert select[:5] == ["python", "-m", "curate", "select", "--config"]
            assert f"seed={seed}" in select and f"exclude_ids={layout.heldout_ids()}" in select
            assert f"output={layout.selection(arm, seed)}" in select
            train = commands[f"{arm}.seed{seed}.train"]
            assert train[:6] == ["python", "-m", "rl", "train", "--config", cfg.train.recipe]
            for key in ("data.seed", "actor_rollout_ref.rollout.seed", "actor_rollout_ref.actor.data_loader_seed"):
                assert f"{key}={seed}" in train
            start = (f"{layout.sft(arm, seed)}/global_step_LAST/huggingface" if cfg.arms[arm].sft_subset
                     else "toy-study")
            assert {"trainer.total_training_steps=20", f"actor_rollout_ref.model.path={start}"} <= set(train)
            assert f"data.train_files={layout.selection(arm, seed)}/grpo/verl/train.parquet" in train
            evaluation = commands[f"{arm}.seed{seed}.eval"]
            assert evaluation[4] == f"{layout.checkpoints(arm, seed)}/global_step_LAST"
            assert evaluation[5] == str(layout.heldout / "heldout" / "verl" / "train.parquet")
            assert evaluation[-4:] == ["--sampled", "8", "--sampled-temperature", "1.0"]
    assert "subsets.grpo.random.stratify_by_task=true" in commands["random.seed0.select"]
    # every evaluation, the base model's included, reads the same held-out file
    assert len({c[5] for n, c in commands.items() if n.endswith("eval")}) == 1


def test_quick_and_command_line_overrides(tmp_path):
    cfg = load_study(str(TOY), [f"output={tmp_path}", "train.steps=3"], quick=True)
    assert cfg.seeds == [0, 1] and cfg.train.steps == 3  # the command line wins over `quick`
    assert list(cfg.chosen_arms()) == ["mid_hard_pism", "random"]
    with pytest.raises(ConfigError, match="config key 'only'"):
        load_study(str(TOY), [f"output={tmp_path}", "only=[nope]"])
    with pytest.raises(ConfigError, match="config key 'control'"):
        load_study(str(TOY), [f"output={tmp_path}", "only=[full]"])
    with pytest.raises(ConfigError, match="config key 'arms.x.sft_subset'"):
        load_study(str(TOY), [f"output={tmp_path}", "arms.x.select=configs/select/full.yaml",
                              "arms.x.sft_subset=grpo"])


def test_sft_arms_train_grpo_from_the_sft_checkpoint(tmp_path):
    cfg = load_study(str(ORSTA), [f"output={tmp_path}"])
    layout = StudyLayout(tmp_path)
    commands = _commands(build_steps(cfg, layout))
    sft = commands["sft_hard_grpo_mid.seed1.sft"]
    assert sft[:6] == ["python", "-m", "rl", "sft", "--config", "configs/rl/qwen25vl7b_sft.yaml"]
    assert f"model.path={cfg.base_model}" in sft
    assert f"data.train_files={layout.selection('sft_hard_grpo_mid', 1)}/sft/verl_sft/train.parquet" in sft
    train = commands["sft_hard_grpo_mid.seed1.train"]
    assert f"actor_rollout_ref.model.path={layout.sft('sft_hard_grpo_mid', 1)}/global_step_LAST/huggingface" in train
    assert not any(a.startswith("trainer.total_training_steps") for a in train)  # one epoch, as in the paper
    assert "actor_rollout_ref.model.path=" + cfg.base_model in commands["random.seed1.train"]
    assert "curation" not in commands  # the run exists already on the cluster


def test_orsta_study_passes_verl_config_checks(tmp_path):
    """The GPU study's exact training and SFT commands pass verl's own config composition."""
    cfg = load_study(str(ORSTA), [f"output={tmp_path}"])
    check_recipes(cfg, StudyLayout(tmp_path))


def test_arms_may_train_with_their_own_recipe_and_overrides(tmp_path):
    """The signal-keeping study: one selection, four ways to train it; each command passes verl's checks."""
    # base_model=toy: the suite's model (resolving toy-study would train it, minutes on a fresh cache)
    cfg = load_study(str(SIGNAL), [f"output={tmp_path}", "base_model=toy"])
    check_recipes(cfg, StudyLayout(tmp_path))
    commands = _commands(build_steps(cfg, StudyLayout(tmp_path)))
    assert commands["signal.seed0.train"][5] == "configs/rl/toy_signal.yaml"
    assert commands["plain.seed0.train"][5] == commands["dapo.seed0.train"][5] == cfg.train.recipe
    dapo = commands["dapo.seed1.train"]
    # the arm's overrides come last (they win), after the study's own
    own = len(cfg.arms["dapo"].train_overrides)
    assert dapo[-own - len(cfg.train.overrides):] == [*cfg.train.overrides, *cfg.arms["dapo"].train_overrides]
    assert "actor_rollout_ref.rollout.temperature=1.0" in cfg.train.overrides
    assert not any("filter_groups" in a for a in commands["plain.seed1.train"])
    assert {commands[f"{arm}.seed2.select"][5] for arm in cfg.arms} == {"configs/select/full.yaml"}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs" / "study").glob("toy*.yaml")))
def test_every_toy_study_config_composes_and_passes_verls_checks(tmp_path, config):
    """Each shipped toy study: its curation recipe with its overrides loads (curate's own config check),
    every arm's selection defines what it trains on, and the training commands pass verl's checks."""
    from curate.config import load_config

    # base_model=toy: the suite's model (resolving toy-study would train it, minutes on a fresh cache)
    cfg = load_study(str(REPO / "configs" / "study" / config), [f"output={tmp_path}", "base_model=toy"])
    check_recipes(cfg, StudyLayout(tmp_path))
    curation = load_config(cfg.curation.config, cfg.curation.overrides)
    held_out = cfg.heldout.per_task * len(curation.data.toy.tasks)
    assert curation.data.format == "toy" and held_out <= curation.data.toy.num_samples / 2  # half trains
    # a study that curates its own rows curates them in its own output (two studies never share one run)
    assert cfg.run == f"{tmp_path}/curate"
    if config == "toy_reading.yaml":
        assert curation.data.toy.tasks == ["ocr"] and not curation.cmab.enabled
        assert not any(a.select.endswith("cmab.yaml") for a in cfg.arms.values())  # no CMAB scores here


def test_an_arm_selecting_by_a_score_the_curation_does_not_make_fails_before_anything_runs(tmp_path):
    """The reading study scores PISM only: a CMAB arm would fail at its selection, after the curation;
    the five-task study without RAP's scores fails on its RAP arm, and runs once that arm is left out."""
    reading = REPO / "configs" / "study" / "toy_reading.yaml"
    cfg = load_study(str(reading), [f"output={tmp_path}", "base_model=toy",
                                    "arms.by_cmab.select=configs/select/mid_hard_cmab.yaml"])
    with pytest.raises(ConfigError, match=r"'arms\.by_cmab\.select'.*reads cmab scores.*cmab\.enabled=true"):
        check_recipes(cfg, StudyLayout(tmp_path))
    no_rap = [f"output={tmp_path}", "base_model=toy", "curation.overrides=[data.toy.num_samples=2000]"]
    with pytest.raises(ConfigError, match=r"'arms\.rap_drm\.select'.*reads rap scores.*rap\.enabled=true"):
        check_recipes(load_study(str(TOY), no_rap), StudyLayout(tmp_path))
    check_recipes(load_study(str(TOY), [*no_rap, "only=[mid_hard_pism,random]"]), StudyLayout(tmp_path))


def test_a_subset_names_the_scores_it_reads():
    from curate.selection.config import SubsetConfig

    assert SubsetConfig().scores() == ("pism",)  # the rule: PISM's medium + hard
    assert SubsetConfig(kind="rap").scores() == ("rap",)
    assert SubsetConfig(kind="full").scores() == ()
    either = SubsetConfig(kind="random")
    either.rule.by = "either"
    assert either.scores() == ("pism", "cmab")  # as many rows as the rule selects
    either.random.size = 100
    assert either.scores() == ()  # a fixed size from every row reads no score
    either.random.pool = "outside_rule"
    assert either.scores() == ("pism", "cmab")
    quadmix = SubsetConfig(kind="quadmix")
    quadmix.quadmix.score = "cmab_rho"
    assert quadmix.scores() == ("cmab",)


def test_a_selection_without_the_trained_subset_fails_naming_the_arm(tmp_path):
    cfg = load_study(str(TOY), [f"output={tmp_path}", "arms.full.subset=sft"])
    with pytest.raises(ConfigError, match=r"arms\.full\.select.*no subset 'sft'"):
        check_recipes(cfg, StudyLayout(tmp_path))


# ---- resume -----------------------------------------------------------------------------------------


def _counting_step(name: str, root: Path, deps: list[str], tag: str = "v1", needs_output: bool = True) -> Step:
    """A real child process that appends to ``<name>.runs`` and writes ``<name>.out``."""
    out, runs = root / f"{name}.out", root / f"{name}.runs"
    code = f"import pathlib; pathlib.Path({str(runs)!r}).open('a').write('x'); pathlib.Path({str(out)!r}).write_text('ok')"
    return Step(name=name, command=lambda resolved: ["python", "-c", code, tag], deps=deps,
                outputs_present=(lambda: out.is_file()) if needs_output else (lambda: True))


def _runs(root: Path, name: str) -> int:
    path = root / f"{name}.runs"
    return len(path.read_text()) if path.exists() else 0


def _study(tmp_path: Path, steps: list[Step]) -> StudyRun:
    cfg = load_study(str(TOY), [f"output={tmp_path}"])
    return StudyRun(cfg, StudyLayout(tmp_path / "study"), steps, say=lambda _: None)


def test_resume_runs_only_what_changed_and_what_follows(tmp_path):
    def chain(b_tag="v1"):
        return [_counting_step("a", tmp_path, []), _counting_step("b", tmp_path, ["a"], b_tag),
                _counting_step("c", tmp_path, ["b"]), _counting_step("d", tmp_path, ["a"])]

    assert _study(tmp_path, chain()).run()
    assert [_runs(tmp_path, n) for n in "abcd"] == [1, 1, 1, 1]
    assert _study(tmp_path, chain()).run()  # finished: nothing runs again
    assert [_runs(tmp_path, n) for n in "abcd"] == [1, 1, 1, 1]
    assert _study(tmp_path, chain("v2")).run()  # b's command changed: b and c run, a and d do not
    assert [_runs(tmp_path, n) for n in "abcd"] == [1, 2, 2, 1]
    # c must run again (its marker is gone) and b's output it reads was deleted: b runs too
    (tmp_path / "study" / "steps" / "c.json").unlink()
    (tmp_path / "b.out").unlink()
    assert stale_steps(chain("v2"), StudyLayout(tmp_path / "study")) == {"b", "c"}
    assert _study(tmp_path, chain("v2")).run()
    assert [_runs(tmp_path, n) for n in "abcd"] == [1, 3, 3, 1]
    # a deleted output nobody needs now (c is finished) costs nothing
    (tmp_path / "c.out").unlink()
    assert stale_steps(chain("v2"), StudyLayout(tmp_path / "study")) == set()


def test_a_failed_step_blocks_its_chain_only(tmp_path):
    bad = Step(name="bad", command=lambda resolved: ["python", "-c", "raise SystemExit(3)"])
    steps = [bad, _counting_step("after_bad", tmp_path, ["bad"]), _counting_step("other", tmp_path, [])]
    study = _study(tmp_path, steps)
    assert not study.run()
    assert "exit code 3" in study.failed["bad"]
    assert _runs(tmp_path, "after_bad") == 0 and _runs(tmp_path, "other") == 1
    log = (tmp_path / "study" / "logs" / "bad.log").read_text()
    assert log.startswith("$ python -c raise SystemExit(3)")


def _timed_step(name: str, root: Path, deps: list[str], code: str = "pass") -> Step:
    """A child process that records when it started and ended in ``<name>.span`` (after ``code``)."""
    span = root / f"{name}.span"
    body = (f"import pathlib, time; t = time.time(); time.sleep(1.5); {code}; "
            f"pathlib.Path({str(span)!r}).write_text(f'{{t}} {{time.time()}}')")
    return Step(name=name, command=lambda resolved: ["python", "-c", body], deps=deps)


def test_parallel_steps_overlap_and_keep_each_chain_in_order(tmp_path):
    """parallel=2: two chains run side by side, each in its own order; one step's failure stops only
    what needs it."""
    steps = [_timed_step("a1", tmp_path, []), _timed_step("a2", tmp_path, ["a1"]),
             _timed_step("b1", tmp_path, [], "raise SystemExit(3)"), _timed_step("b2", tmp_path, ["b1"]),
             _timed_step("c1", tmp_path, [])]
    lines = []
    cfg = load_study(str(TOY), [f"output={tmp_path}", "parallel=2"])
    study = StudyRun(cfg, StudyLayout(tmp_path / "study"), steps, say=lines.append)
    assert not study.run()
    assert set(study.failed) == {"b1"} and not (tmp_path / "b2.span").exists()
    assert any("b2: skipped" in line for line in lines)
    span = {n: tuple(map(float, (tmp_path / f"{n}.span").read_text().split())) for n in ("a1", "a2", "c1")}
    assert span["a1"][1] <= span["a2"][0]  # a chain stays in order
    assert span["c1"][0] < span["a2"][1] and span["a2"][0] < span["c1"][1]  # side by side
    # a1, b1 and c1 could all start at once: c1 waited until a1 or b1 (1.5 s each) had finished
    assert span["c1"][0] >= span["a1"][0] + 1.4
    assert "2 at a time" in lines[0]
    with pytest.raises(ConfigError, match="parallel"):
        load_study(str(TOY), [f"output={tmp_path}", "parallel=0"])


def test_a_stopped_study_stops_its_running_steps(tmp_path):
    """SIGTERM to `rl study` (kill, a scheduler's stop): the running steps' processes, and what they
    started, end with it; no step is marked finished, so a resume reruns them."""
    import os
    import signal
    import subprocess
    import time

    pids = tmp_path / "pids"
    # each step starts a grandchild (as verl starts its Ray) and records both pids, then waits
    body = ("import os, subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
            f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}} {{child.pid}}\\n'); time.sleep(300)")
    runner = tmp_path / "runner.py"
    runner.write_text(
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from pathlib import Path\n"
        "from rl.study import load_study\n"
        "from rl.study.plan import Step, StudyLayout\n"
        "from rl.study.runner import StudyRun\n"
        f"cfg = load_study({str(TOY)!r}, ['output={tmp_path}', 'parallel=2'])\n"
        f"steps = [Step(name=n, command=lambda resolved: ['python', '-c', {body!r}]) for n in ('a', 'b')]\n"
        f"StudyRun(cfg, StudyLayout(Path({str(tmp_path / 'study')!r})), steps).run()\n"
    )
    study = subprocess.Popen([sys.executable, str(runner)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 60
    while len(pids.read_text().split()) < 4 if pids.exists() else True:
        assert time.monotonic() < deadline and study.poll() is None, study.stdout.read()
        time.sleep(0.2)
    started = [int(p) for p in pids.read_text().split()]
    study.send_signal(signal.SIGTERM)
    assert study.wait(timeout=60) == 128 + signal.SIGTERM
    assert "stopped 2 running step process(es)" in study.stdout.read()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 10
    while any(map(alive, started)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, started)), "a step's process outlived the stopped study"
    assert not list((tmp_path / "study" / "steps").glob("*.json"))  # nothing marked finished


def test_grpo_after_sft_gets_the_base_models_processor_back(tmp_path):
    """verl's SFT save drops a remote-code processor: the study restores it before GRPO reads the
    checkpoint (here an SFT step that writes what verl writes, without the processor's module)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "processing_mine.py").write_text("# the processor's module")
    (base / "processor_config.json").write_text('{"auto_map": {"AutoProcessor": "processing_mine.P"}}')
    (base / "model.safetensors").write_text("base weights")
    cfg = load_study(str(TOY), [f"output={tmp_path}", f"base_model={base}"])
    layout = StudyLayout(tmp_path / "study")
    saved = layout.sft("arm", 0) / "global_step_3" / "huggingface"
    code = (f"import pathlib; d = pathlib.Path({str(saved)!r}); d.mkdir(parents=True); "
            "(d / 'model.safetensors').write_text('sft weights'); "
            "(d / 'processor_config.json').write_text('{}'); "
            f"(d.parents[1] / 'latest_checkpointed_iteration.txt').write_text('3')")
    sft = Step(name="arm.seed0.sft", kind="sft", arm="arm", seed=0,
               command=lambda resolved: ["python", "-c", code])
    assert StudyRun(cfg, layout, [sft], say=lambda _: None).run()
    assert (saved / "processing_mine.py").read_text() == "# the processor's module"
    assert "auto_map" in (saved / "processor_config.json").read_text()
    assert (saved / "model.safetensors").read_text() == "sft weights"  # the weights stay SFT's


def test_latest_checkpoint_follows_verls_marker(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "global_step_4").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    assert latest_checkpoint(tmp_path) == tmp_path / "global_step_4"


# ---- what the report reads --------------------------------------------------------------------------


def test_effective_ratio_counts_groups_whose_rewards_differ(tmp_path):
    rows = {  # verl's dump: uid = {sample}_{rollout}_{output}; score = the sequence reward
        1: [("s1_0_0", 1.0), ("s1_0_1", 1.0), ("s2_0_0", 0.0), ("s2_0_1", 2.0), ("s3_0_0", 0.5), ("s3_0_1", 0.5)],
        2: [("s1_0_0", 2.0), ("s1_0_1", 0.0), ("s2_0_0", 1.0), ("s2_0_1", 0.0),
            # verl's padding row (a trajectory of the batch failed): not a group, not a generation
            (f"pad{'c' * 32}_0_0", 0.0)],
    }
    for step, items in rows.items():
        (tmp_path / f"{step}.jsonl").write_text("\n".join(
            json.dumps({"input": "q", "output": "a", "score": score, "step": step, "uid": uid})
            for uid, score in items))
    ratios, responses = effective_ratio_per_step(tmp_path)
    assert ratios == pytest.approx([1 / 3, 1.0]) and responses == 10


def _write_eval(path: Path, greedy: float, sampled: float, n: int = 4, temperature: float = 1.0) -> None:
    """``rl eval --sampled``'s summary: two tasks, the overall mean of them; its sampling settings."""
    stats = {"n": 10, "accuracy": greedy, "sampled_n": n, "sampled_accuracy": sampled, "pass_at_n": 1.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sampled": {"n": n, "temperature": temperature, "top_p": 1.0},
                                "summary": {"overall": stats, "per_task": {"a": stats, "b": stats}}}))


def test_report_compares_every_arm_with_the_control_and_the_base_on_both_metrics(tmp_path):
    cfg = load_study(str(TOY), [f"output={tmp_path}", "only=[mid_hard_pism,random]", "eval.sampled=4"])
    layout = StudyLayout(tmp_path)
    _write_eval(layout.base_eval, 0.50, 0.30)
    greedy = {"mid_hard_pism": [0.50, 0.52, 0.51], "random": [0.50, 0.51, 0.50]}
    sampled = {"mid_hard_pism": [0.40, 0.42, 0.44], "random": [0.35, 0.36, 0.36]}
    for arm in greedy:
        for seed, g, t in zip(cfg.seeds, greedy[arm], sampled[arm]):
            _write_eval(layout.eval(arm, seed), g, t)
    summary = summarize(cfg, layout, collect(cfg, layout))
    assert summary["sampled"] == {"n": 4, "temperature": 1.0}
    assert summary["base"]["sampled_accuracy"] == 0.30
    assert summary["arms"]["random"]["sampled_accuracy"]["mean"] == pytest.approx(1.07 / 3)
    found = {(c["metric"], c["arm"], c["control"]): c for c in summary["comparisons"]}
    pairs = (("mid_hard_pism", "random"), ("mid_hard_pism", "base"), ("random", "base"))
    assert set(found) == {(m, a, c) for m in ("accuracy", "sampled_accuracy") for a, c in pairs}
    # paired differences by hand: greedy (0, .01, .01), sampled (.05, .06, .08)
    greedy_diff = found["accuracy", "mid_hard_pism", "random"]
    sampled_diff = found["sampled_accuracy", "mid_hard_pism", "random"]
    assert greedy_diff["difference"]["mean"] == pytest.approx(0.02 / 3)
    assert sampled_diff["difference"]["mean"] == pytest.approx(0.19 / 3)
    assert (greedy_diff["verdict"], sampled_diff["verdict"]) == ("within noise", "better")
    # against the base (one value on every seed), the interval is the arm's own, shifted
    against_base = found["sampled_accuracy", "random", "base"]["difference"]
    own = summary["arms"]["random"]["sampled_accuracy"]
    assert against_base["mean"] == pytest.approx(own["mean"] - 0.30)
    assert against_base["half"] == pytest.approx(own["half"])
    assert any("avg@4 at temperature 1" in v and "beats random" in v for v in summary["verdict"])


def test_report_labels_avg_at_n_by_what_the_evaluations_sampled(tmp_path):
    """`--report` with a config whose eval.sampled changed since: the label is the evaluations' own;
    evaluations that sampled differently are not compared (the error names the keys)."""
    cfg = load_study(str(TOY), [f"output={tmp_path}", "only=[random]", "eval.sampled=8"])
    layout = StudyLayout(tmp_path)
    _write_eval(layout.base_eval, 0.5, 0.3)
    for seed in cfg.seeds:
        _write_eval(layout.eval("random", seed), 0.5, 0.35)
    assert summarize(cfg, layout, collect(cfg, layout))["sampled"] == {"n": 4, "temperature": 1.0}
    _write_eval(layout.eval("random", cfg.seeds[-1]), 0.5, 0.35, n=8, temperature=1.3)
    with pytest.raises(ConfigError, match=r"'eval.sampled' / 'eval.sampled_temperature'.*\(8, 1.3\)"):
        summarize(cfg, layout, collect(cfg, layout))


def test_report_names_the_base_models_weights(tmp_path):
    """A toy base is trained where it is asked for, and another CPU may train other weights under
    the same key: the report carries their digest; a hub model is named by its id alone."""
    cfg = load_study(str(TOY), [f"output={tmp_path}", "only=[random]", "eval.sampled=4"])
    layout = StudyLayout(tmp_path)
    model = tmp_path / "toy-model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / METADATA_FILE).write_text(json.dumps({"report": {"final_loss": 0.0789, "threads": 1}}))
    _write_eval(layout.base_eval, 0.5, 0.3)
    evaluation = json.loads(layout.base_eval.read_text())
    evaluation.update(checkpoint="toy-study", model_path=str(model))
    layout.base_eval.write_text(json.dumps(evaluation))
    summary = summarize(cfg, layout, collect(cfg, layout))
    digest = hashlib.sha256(b"weights").hexdigest()
    assert summary["base_model"] == {"model": "toy-study", "path": str(model), "weights_sha256": digest,
                                     "toy_training": {"final_loss": 0.0789, "threads": 1}}
    assert f"weights sha256 `{digest[:16]}`, toy training final loss 0.0789 on 1 thread" in _markdown(summary)
    hub = "Qwen/Qwen2.5-VL-7B-Instruct"
    assert base_model_identity({"checkpoint": hub, "model_path": hub}) == {"model": hub, "path": hub}


def test_an_arm_may_not_be_called_base(tmp_path):
    with pytest.raises(ConfigError, match="config key 'arms.base'"):
        load_study(str(TOY), [f"output={tmp_path}", "arms.base.select=configs/select/full.yaml"])


# ---- held-out disjointness --------------------------------------------------------------------------


def test_no_arm_selection_holds_a_heldout_row(tmp_path):
    from support.annotated import write_annotated

    run = write_annotated(tmp_path / "run")
    cfg = load_study(str(TOY), [f"output={tmp_path / 'study'}", f"run={run}", "heldout.per_task=5"])
    layout = StudyLayout(tmp_path / "study")
    commands = _commands(build_steps(cfg, layout))

    def select(command: list[str]) -> None:
        from curate.cli import run as cli_run

        assert cli_run("python -m curate", "", {"select": "curate.select"}, command[3:]) == 0

    select(commands["heldout"])
    held = heldout_ids(cfg, layout)
    assert len(held) == 15  # 5 per task, three tasks
    for arm in cfg.arms:
        for seed in cfg.seeds:
            select(commands[f"{arm}.seed{seed}.select"])
            check_disjoint(cfg, layout, arm, seed)
            assert not held & arm_training_ids(layout.selection(arm, seed))
    # the full arm takes every other usable row: exactly the complement of the held-out split
    assert len(arm_training_ids(layout.selection("full", 0))) == 72 - 15
    # without the exclusion, the check catches the leak
    leaky = [a for a in commands["full.seed0.select"] if not a.startswith("exclude_ids=")]
    select(leaky)
    with pytest.raises(HeldoutLeak, match="held-out row"):
        check_disjoint(cfg, layout, "full", 0)


def test_a_heldout_row_repeated_under_another_id_stays_out_of_every_arm(tmp_path):
    """A corpus that holds every sample twice under two ids (the toy generator draws a 2-letter code
    many times): the held-out rows' copies are never trained on, and the check finds them by content
    when a selection lets them in."""
    import pyarrow.parquet as pq
    from support.annotated import annotated_rows, write_annotated

    from curate import schema as S
    from curate.cli import run as cli_run

    rows = annotated_rows()
    run = write_annotated(tmp_path / "run", rows=rows + [{**r, S.ID: f"{r[S.ID]}-again"} for r in rows])
    cfg = load_study(str(TOY), [f"output={tmp_path / 'study'}", f"run={run}", "heldout.per_task=5"])
    layout = StudyLayout(tmp_path / "study")
    commands = _commands(build_steps(cfg, layout))

    def select(command: list[str]) -> None:
        assert cli_run("python -m curate", "", {"select": "curate.select"}, command[3:]) == 0

    def contents(parquet: Path) -> set[bytes]:
        return set(S.content_keys(pq.read_table(parquet, columns=[S.QUESTION, S.IMAGES])))

    select(commands["heldout"])
    held = contents(layout.heldout_ids())
    select(commands["full.seed0.select"])
    check_disjoint(cfg, layout, "full", 0)
    manifest = json.loads((layout.selection("full", 0) / "manifest.json").read_text())
    trained = set().union(*(contents(layout.selection("full", 0) / rel)
                            for rel in manifest["subsets"]["grpo"]["files"]["canonical"].values()))
    assert not held & trained and len(trained) == 72 - len(held)  # every other sample, once or twice
    select([*commands["full.seed0.select"], "exclude_duplicates=false"])
    with pytest.raises(HeldoutLeak, match="repeated in its selection under another id"):
        check_disjoint(cfg, layout, "full", 0)


# ---- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_toy_study_end_to_end_then_resumed(tmp_path):
    """The real commands on the demo model: curation, held-out split, base eval, an arm (selection,
    verl GRPO on CPU, eval), the report; run again, nothing runs twice. (One arm: a second is one more
    verl start, a minute on two cores; arms' composition, pairing and verdicts are tested above.)"""
    import subprocess

    out = tmp_path / "study"
    command = [
        sys.executable, "-m", "rl", "study", "--config", str(TOY), f"output={out}", "base_model=toy",
        "curation.config=configs/curate/toy.yaml",
        "curation.overrides=[data.toy.num_samples=60,cmab.enabled=false]",
        "seeds=[0]", "only=[mid_hard_pism]", "control=mid_hard_pism", "train.recipe=configs/rl/toy_cpu.yaml",
        "train.steps=2",
        "heldout.per_task=4", "eval.sampled=2",
    ]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    layout = StudyLayout(out)
    markers = {p.name: json.loads(p.read_text())["token"] for p in layout.steps.glob("*.json")}
    assert set(markers) == {f"{n}.json" for n in (
        "curation", "heldout", "base.eval", *(f"mid_hard_pism.seed0.{k}" for k in ("select", "train", "eval")))}
    summary = json.loads((layout.report / "study.json").read_text())
    assert summary["heldout_rows"] == 20  # 4 per task, five tasks
    base = summary["base_model"]  # the weights the base evaluation read
    assert base["model"] == "toy" and base["toy_training"]["threads"] == 1
    weights = Path(base["path"], "model.safetensors").read_bytes()
    assert base["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    for arm in ("mid_hard_pism",):
        a = summary["arms"][arm]
        assert a["seeds_done"] == [0] and len(a["reward_per_step"]) == 2
        assert len(a["effective_ratio_per_step"]) == 2
        # verl's dumps: 2 steps x train_batch_size 4 prompts x rollout.n 4
        assert a["training_generations"] == [2 * 4 * 4]
        assert not (layout.checkpoints(arm, 0)).exists()  # deleted once evaluated
        evaluation = json.loads(layout.eval(arm, 0).read_text())
        assert evaluation["summary"]["overall"]["n"] == 20
        assert [s["sampled"]["n"] for s in evaluation["samples"]] == [2] * 20
        assert a["sampled_accuracy"]["mean"] == evaluation["summary"]["overall"]["sampled_accuracy"]
    # the one arm is the control: it is compared with the base only, on one seed (no noise estimate)
    assert {(c["arm"], c["control"], c["verdict"]) for c in summary["comparisons"]} == {
        ("mid_hard_pism", "base", "unknown")}
    assert "avg@2" in (layout.report / "study.md").read_text()
    assert (layout.report / "accuracy.png").stat().st_size > 0 and "Verdict" in (layout.report / "study.md").read_text()

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "6 steps, 6 finished before, 0 to run" in again.stdout
    assert {p.name: json.loads(p.read_text())["token"] for p in layout.steps.glob("*.json")} == markers
