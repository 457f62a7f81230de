"""The toy corpus: deterministic, canonical, and its answers agree with what is drawn."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.config import PromptConfig
from curate.images import content_id, decode_image
from curate.schema import CANONICAL_SCHEMA, IMAGE_PLACEHOLDER
from curate.scoring.prompts import build_messages
from curate.toy.corpus import (
    COLORS,
    COUNTING_TARGET,
    GROUNDING_TARGET,
    IMAGE_SIZE,
    OCR_ALPHABET,
    TASKS,
    generate_corpus,
    iter_samples,
    make_sample,
)

# blake2b of the pixels of samples 0..9 of seed 0: changes only when the drawing code changes.
GOLDEN_PIXELS = "043c5471ad8a219161d9c74cfd420a93"


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean image, each as an array of (y, x) pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    components = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        components.append(np.array(pixels))
    return components


def _fill_ratio(component: np.ndarray) -> float:
    """Area over bounding-box area: 1 for squares, ~0.79 for discs, ~0.5 for triangles."""
    h = component[:, 0].max() - component[:, 0].min() + 1
    w = component[:, 1].max() - component[:, 1].min() + 1
    return len(component) / (h * w)


def _of_color(pixels: np.ndarray, color: str) -> np.ndarray:
    return (pixels == np.array(COLORS[color], dtype=np.uint8)).all(axis=-1)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b = generate_corpus(25, seed=7), generate_corpus(25, seed=7)
    assert a.equals(b)
    assert a.column("images").to_pylist() == b.column("images").to_pylist()
    c = generate_corpus(25, seed=8)
    assert a.column("images").to_pylist() != c.column("images").to_pylist()


def test_pixels_are_pinned_across_machines():
    images = [decode_image(row[0]) for row in generate_corpus(10, seed=0).column("images").to_pylist()]
    assert content_id(images) == GOLDEN_PIXELS


def test_rows_are_canonical_and_usable():
    table = generate_corpus(50, seed=1)
    assert table.schema.equals(CANONICAL_SCHEMA)
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == 50
    assert Counter(r["task"] for r in rows) == {t: 10 for t in TASKS}
    for r in rows:
        assert r["data_source"] == f"toy/{r['task']}"
        assert r["status"] == "ok" and r["error"] is None and r["verifier"] is None
        assert r["image_paths"] == [None] and len(r["images"]) == 1
        assert decode_image(r["images"][0]).size == (IMAGE_SIZE, IMAGE_SIZE)
        assert r["question"].count(IMAGE_PLACEHOLDER) == 1
        messages = build_messages(r["question"], 1, PromptConfig())
        assert [p["type"] for p in messages[-1]["content"]] == ["text", "image"]


def test_answers_follow_the_grading_formats():
    for s in iter_samples(100, seed=2):
        if s.task in ("counting", "arithmetic"):
            assert s.answer == str(int(s.answer))
        if s.task == "counting":
            assert 0 <= int(s.answer) <= 5
        elif s.task == "color":
            assert s.answer in COLORS
        elif s.task == "arithmetic":
            assert int(s.answer) == sum(int(d) for d in s.reasoning.split("+"))
        elif s.task == "ocr":
            assert 2 <= len(s.answer) <= 5 and set(s.answer) <= set(OCR_ALPHABET)
        else:
            (entry,) = json.loads(s.answer)
            x1, y1, x2, y2 = entry["bbox_2d"]
            assert 0 <= x1 < x2 <= IMAGE_SIZE and 0 <= y1 < y2 <= IMAGE_SIZE


def test_counting_answer_is_the_number_of_red_discs_drawn():
    color, _ = COUNTING_TARGET
    for s in iter_samples(60, seed=3, tasks=("counting",)):
        discs = [c for c in _components(_of_color(s.image, color)) if 0.65 < _fill_ratio(c) < 0.9]
        assert len(discs) == int(s.answer), s.id


def test_color_answer_is_the_color_of_the_only_square():
    for s in iter_samples(40, seed=4, tasks=("color",)):
        squares = {name for name in COLORS
                   for c in _components(_of_color(s.image, name)) if _fill_ratio(c) == 1.0}
        assert squares == {s.answer}, s.id


def test_grounding_box_is_tight_around_the_target():
    color, _ = GROUNDING_TARGET
    for s in iter_samples(40, seed=5, tasks=("grounding",)):
        (entry,) = json.loads(s.answer)
        x1, y1, x2, y2 = entry["bbox_2d"]
        matches = [c for c in _components(_of_color(s.image, color))
                   if (c[:, 1].min(), c[:, 0].min(), c[:, 1].max() + 1, c[:, 0].max() + 1) == (x1, y1, x2, y2)]
        assert len(matches) == 1 and 0.4 < _fill_ratio(matches[0]) < 0.65, s.id  # one triangle, exactly boxed


def test_difficulty_varies_within_each_task():
    samples = list(iter_samples(300, seed=6))
    by_task = {t: [s for s in samples if s.task == t] for t in TASKS}
    assert {s.answer for s in by_task["counting"]} == {str(n) for n in range(6)}
    assert {len(s.answer) for s in by_task["ocr"]} == {2, 3, 4, 5}
    sides = {json.loads(s.answer)[0]["bbox_2d"][2] - json.loads(s.answer)[0]["bbox_2d"][0]
             for s in by_task["grounding"]}
    assert len(sides) == 2  # one-cell and 2×2-cell targets
    square_sides = set()
    for s in by_task["color"]:
        (square,) = [c for c in _components(_of_color(s.image, s.answer)) if _fill_ratio(c) == 1.0]
        square_sides.add(int(np.sqrt(len(square))))
    assert min(square_sides) <= 12 and max(square_sides) >= 44  # small to 2×2-cell squares


def test_bad_arguments_fail_naming_them():
    with pytest.raises(ValueError, match="'sudoku'"):
        generate_corpus(3, tasks=("counting", "sudoku"))
    with pytest.raises(ValueError, match="num_samples"):
        generate_corpus(-1)
    with pytest.raises(ValueError, match="empty"):
        generate_corpus(3, tasks=())


def test_sample_does_not_depend_on_corpus_size():
    assert make_sample(7, seed=9).answer == list(iter_samples(8, seed=9))[7].answer


def test_cli_writes_a_canonical_parquet(tmp_path: Path):
    from curate.__main__ import main

    out = tmp_path / "toy.parquet"
    assert main(["toy", "corpus", str(out), "--num-samples", "12", "--seed", "4", "--tasks", "ocr", "color"]) == 0
    table = pq.read_table(out)
    assert table.schema.equals(CANONICAL_SCHEMA)
    assert table.equals(generate_corpus(12, seed=4, tasks=("ocr", "color")))


def test_cli_help_explains_every_action(capsys):
    from curate.__main__ import main

    with pytest.raises(SystemExit):
        main(["toy", "--help"])
    out = capsys.readouterr().out
    for action in ("corpus", "model", "eval"):
        assert action in out
