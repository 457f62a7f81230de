"""The graders against a strict judge: a labelled corpus of realistic VLM-RL responses.

``tests/data/grading/*.jsonl`` holds 1,992 hand-written cases (OCR, counting, boxes, multiple choice and
yes/no, math with units, MathVista/ChartQA-style reasoning, Orsta outputs with verifier hints, and
reward hacks), each labelled with the verdict of a careful human judge and the rule behind it
(``note``). The ``heldout_*`` files were written later by people who had not read the graders; where
they disagreed, the graders were fixed if the rule generalised. The graders must agree on at least 97%
of the cases overall and per class, and every reward-hack attempt must score 0.
``benchmarks/bench_graders.py`` runs the same corpus through the peers' graders.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from curate.grading import GradingOptions, grade

CORPUS = Path(__file__).parent / "data" / "grading"
REQUIRED = {"id", "task", "response", "ground_truth", "correct", "klass", "style", "note"}
KLASSES = {"ocr", "counting", "boxes", "choice", "math", "units", "boxed", "routing", "verifier_hint", "hedge",
           "yes_no", "format", "plain"}
STYLES = {"mathvista", "chartqa", "ocrbench", "countbench", "refcoco", "orsta", "generic"}
MIN_AGREEMENT = 0.97


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                case = json.loads(line)
                case["file"] = f"{path.name}:{number}"
                cases.append(case)
    return cases


def judge(case: dict) -> bool:
    """The graders' verdict on one case, with the case's coordinate conventions when it has them."""
    context = case.get("context") or {}
    options = GradingOptions(
        answer_box_format=context.get("answer_box_format", "auto"),
        truth_box_format=context.get("truth_box_format", "auto"),
    )
    size = tuple(context["image_size"]) if "image_size" in context else None
    result = grade(case["task"], case["response"], case["ground_truth"], case.get("verifier"),
                   options=options, image_size=size)
    assert result.score == float(result.correct)
    return result.correct


CASES = load_cases()


def test_the_corpus_is_well_formed():
    assert len(CASES) >= 500
    assert len({c["id"] for c in CASES}) == len(CASES)
    for case in CASES:
        assert REQUIRED <= case.keys(), case["file"]
        assert case["klass"] in KLASSES and case["style"] in STYLES, case["file"]
        assert not (case.get("hack") and case["correct"]), f"{case['file']}: a hack labelled correct"
    klasses, styles = Counter(c["klass"] for c in CASES), Counter(c["style"] for c in CASES)
    assert min(klasses[k] for k in KLASSES) >= 25, klasses
    assert min(styles[s] for s in STYLES) >= 25, styles
    assert sum(bool(c.get("hack")) for c in CASES) >= 50
    assert 0.35 <= sum(c["correct"] for c in CASES) / len(CASES) <= 0.65  # both verdicts well represented


def test_agreement_with_the_judge():
    disagreements = [c for c in CASES if judge(c) != c["correct"]]
    by_klass: Counter[str] = Counter(c["klass"] for c in CASES)
    wrong_by_klass: Counter[str] = Counter(c["klass"] for c in disagreements)
    report = "\n".join(f"{c['file']} {c['id']} judge={c['correct']}: {c['note']}" for c in disagreements)
    assert 1 - len(disagreements) / len(CASES) >= MIN_AGREEMENT, report
    for klass, n in by_klass.items():
        assert 1 - wrong_by_klass[klass] / n >= MIN_AGREEMENT, f"{klass}:\n{report}"


@pytest.mark.parametrize("case", [c for c in CASES if c.get("hack")], ids=lambda c: c["id"])
def test_reward_hacks_score_zero(case):
    assert not judge(case), case["note"]
