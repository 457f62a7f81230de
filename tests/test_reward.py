"""The verl reward hook: the toy corpus' answers, adversarial strings, and verl's own loader."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.grading import mathexpr
from rl.reward import compute_score

pytestmark = pytest.mark.timeout(300)


def toy(reasoning: str, answer: str) -> str:
    """How the toy model writes a response (curate.toy: <think>reasoning</think><answer>answer</answer>)."""
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


# The toy corpus' five tasks, with ground truths in its formats.
TOY = [
    ("counting", "3", toy("I count them.", "3"), toy("I count them.", "4")),
    ("color", "yellow", toy("I look at its color.", "yellow"), toy("I look at its color.", "red")),
    ("arithmetic", "6", toy("1+2+3", "6"), toy("1+2+3", "7")),
    ("ocr", "YZXT", toy("I read the text.", "YZXT"), toy("I read the text.", "QQ")),
    (
        "grounding",
        '[{"bbox_2d": [87, 3, 109, 25]}]',
        toy("I find it.", '[{"bbox_2d": [87, 3, 109, 25]}]'),
        toy("I find it.", '[{"bbox_2d": [0, 0, 22, 22]}]'),
    ),
]


@pytest.mark.parametrize("task, truth, right, wrong", TOY, ids=[t[0] for t in TOY])
def test_toy_answers(task, truth, right, wrong):
    info = {"task": task, "index": 0}
    assert compute_score(f"toy/{task}", right, truth, info) == {"score": 2.0, "acc": 1.0, "format": 1.0}
    assert compute_score(f"toy/{task}", wrong, truth, info) == {"score": 1.0, "acc": 0.0, "format": 1.0}
    bare = right.split("<answer>")[1].removesuffix("</answer>")  # right answer, no template
    assert compute_score(f"toy/{task}", bare, truth, info) == {"score": 1.0, "acc": 1.0, "format": 0.0}


def test_partial_credit_is_a_named_option():
    # OCR: LCS 2 of 4 + 2 characters; boxes: IoU 242/726 (22x22 box shifted by 11 px)
    ocr_args = ("toy/ocr", toy("r", "YZ"), "YZXT", {"task": "ocr"})
    box_args = ("toy/grounding", toy("r", "[98, 3, 120, 25]"), "[[87, 3, 109, 25]]", {"task": "grounding"})
    assert compute_score(*ocr_args)["acc"] == 0.0  # by default the strict judge's 0/1
    assert compute_score(*box_args)["acc"] == 0.0
    assert compute_score(*ocr_args, partial_credit=True)["acc"] == pytest.approx(4 / 6)
    box = compute_score(*box_args, partial_credit=True)
    assert box["acc"] == pytest.approx(242 / 726)
    assert box["score"] == pytest.approx(242 / 726 + 1.0)
    with pytest.raises(ValueError, match="partial_credit"):
        compute_score(*ocr_args, partial_credit="yes")


def test_grading_options_come_from_reward_kwargs():
    args = ("toy/grounding", toy("r", "[0, 0, 10, 10]"), "[[0, 0, 10, 16]]", {"task": "grounding"})  # IoU 0.625
    assert compute_score(*args)["acc"] == 1.0
    assert compute_score(*args, box_iou=0.7)["acc"] == 0.0
    with pytest.raises(ValueError, match="reward_kwargs.*box_iou"):
        compute_score(*args, box_iou=2.0)
    norm1000 = ("toy/grounding", toy("r", "[100, 100, 300, 300]"), "[[100, 50, 300, 150]]")
    info = {"task": "grounding", "image_size": [1000, 500]}
    assert compute_score(*norm1000, info, answer_box_format="norm1000")["acc"] == 1.0
    assert compute_score(*norm1000, info)["acc"] == 0.0


def test_weights_come_from_reward_kwargs():
    args = ("toy/counting", toy("r", "3"), "3", {"task": "counting"})
    assert compute_score(*args, format_weight=0.0)["score"] == 1.0  # the released scripts: accuracy only
    assert compute_score(*args, acc_weight=1 / 1.1, format_weight=0.1 / 1.1)["score"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reward_kwargs.acc_weight"):
        compute_score(*args, acc_weight="heavy")
    with pytest.raises(ValueError, match="reward_kwargs.format_weight"):
        compute_score(*args, format_weight=float("nan"))


@pytest.mark.parametrize(
    "data_source, extra_info, expected_acc",
    [
        ("toy/counting", {"task": "counting"}, 1.0),
        ("anything", {"ability": "counting"}, 1.0),  # verl's ability when the task is absent
        ("counting", None, 1.0),  # data_source last
        ("v3det_train", {"verifier": "mathverify"}, 1.0),  # Orsta's per-sample verifier
        ("anything", {"task": "not_a_task", "ability": "counting"}, 1.0),
    ],
)
def test_routing(data_source, extra_info, expected_acc):
    assert compute_score(data_source, toy("r", "\\boxed{3}"), "3", extra_info)["acc"] == expected_acc


def test_unknown_task_scores_zero_and_warns_once(caplog):
    info = {"task": "interpretive_dance"}
    with caplog.at_level(logging.WARNING):
        results = [compute_score("mystery_source", toy("r", "3"), "3", info) for _ in range(3)]
    assert results == [{"score": 0.0, "acc": 0.0, "format": 1.0}] * 3
    warnings = [r for r in caplog.records if "interpretive_dance" in r.getMessage()]
    assert len(warnings) == 1 and "mystery_source" in warnings[0].getMessage()


ADVERSARIAL = [
    "",
    "\x00",
    "<answer>",
    "</answer><answer>",
    "\\boxed{" * 100_000,
    "9" * 1_000_000,
    "<answer>__import__('os').system('echo pwned')</answer>",
    "<answer>" + "{" * 10_000,
    "<think>" * 50_000,
    "<answer>[1e999, nan, -inf, 0]</answer>",
    "\ud800\udfff" * 1000,
]


TASKS = ["counting", "color", "arithmetic", "ocr", "grounding", "math", "cv_grounding"]


# A deadline exception that lands in a GC callback (hypothesis installs one) is swallowed there,
# reported as "unraisable", and raised again: that is the deadline working, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("task", TASKS)
def test_adversarial_strings(task, monkeypatch):
    # a truth of 1000 "{" keeps math-verify busy until the deadline: make that short here
    monkeypatch.setattr(mathexpr, "MATH_TIMEOUT_S", 0.25)
    for text in ADVERSARIAL:
        result = compute_score("src", text, "3", {"task": task})
        assert set(result) == {"score", "acc", "format"}
        assert all(isinstance(v, float) for v in result.values())
        assert 0.0 <= result["acc"] <= 1.0 and result["format"] == 0.0
        assert 0.0 <= compute_score("src", "<answer>3</answer>", text, {"task": task})["acc"] <= 1.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data_source=st.one_of(st.none(), st.text(max_size=20), st.integers()),
    solution=st.one_of(st.text(max_size=200), st.none()),
    truth=st.one_of(st.text(max_size=100), st.integers(), st.lists(st.integers(), max_size=4), st.none()),
    extra_info=st.one_of(
        st.none(),
        st.text(max_size=5),
        st.fixed_dictionaries(
            {},
            optional={
                "task": st.one_of(
                    st.sampled_from(["counting", "ocr", "grounding", "math", "x"]), st.integers()
                ),
                "ability": st.text(max_size=10),
                "verifier": st.one_of(st.sampled_from(["mathverify", "detection", "??"]), st.none()),
            },
        ),
    ),
)
def test_never_raises(data_source, solution, truth, extra_info):
    result = compute_score(data_source, solution, truth, extra_info)
    assert set(result) == {"score", "acc", "format"}
    assert 0.0 <= result["acc"] <= 1.0 and result["format"] in (0.0, 1.0)
    assert result["score"] == pytest.approx(result["acc"] + result["format"]) or result["score"] == 0.0


def test_verl_loads_and_calls_it_like_its_reward_loop():
    """verl 0.9.1's own loader (pkg:// path, reward_kwargs merged), called as its naive reward
    manager does: keyword arguments, in an executor thread, numpy-typed extra_info values."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://rl.reward",
                    "name": "compute_score",
                    "reward_kwargs": {"format_weight": 0.5},
                }
            }
        }
    )
    reward_fn = get_custom_reward_fn(config)

    async def run_single(solution: str, truth: str, task: str) -> dict:
        extra_info = {
            "task": np.str_(task),
            "index": np.int64(3),
            "num_turns": None,
            "rollout_reward_scores": {},
        }
        return await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: reward_fn(
                data_source="toy/" + task, solution_str=solution, ground_truth=truth, extra_info=extra_info
            ),
        )

    async def run_all() -> list[dict]:
        return await asyncio.gather(
            run_single(toy("r", "0.5"), "\\frac{1}{2}", "arithmetic"),  # sympy, off the main thread
            run_single(toy("r", "[87, 3, 109, 25]"), '[{"bbox_2d": [87, 3, 109, 25]}]', "grounding"),
            run_single("no template 4", "3", "counting"),
        )

    assert asyncio.run(run_all()) == [
        {"score": 1.5, "acc": 1.0, "format": 1.0},
        {"score": 1.5, "acc": 1.0, "format": 1.0},
        {"score": 0.0, "acc": 0.0, "format": 0.0},
    ]
