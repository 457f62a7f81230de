"""The synthetic multimodal corpus of the offline demo: five perception tasks with checkable answers.

Every image is 112×112 px, a 4×4 grid of 28-px cells, and every object sits inside whole cells. A
28-px cell is exactly one merged visual token of Qwen2.5-VL (14-px patches merged 2×2), so nothing the
model must recognise is split across tokens. Together with a faint per-cell background tint (the
token's row and column, which Qwen2.5-VL's ViT has no embedding for) and questions that each ask about
one fixed kind of object, this is what lets a sub-million-parameter model learn the tasks on a CPU in
minutes; objects placed anywhere and questions naming arbitrary targets did not train (platform.md,
and our own trials).

Each question ends with its ``<image>`` placeholder, so the question is read before the image.
Difficulty comes from the content, so that a block mask breaks some samples at low λ and others only
at high λ:

- ``counting``   "How many red circles are there?" 0–5 red circles among 0–8 shapes of other colors;
                 every target must stay visible, so five targets fail early and zero never do.
- ``color``      "What color is the square?" one square, small / medium / 2×2-cell large, among
                 circles and triangles; a large square survives a big mask, a small one is easily hidden.
- ``arithmetic`` "What is the value of the sum in the image?" ``a+b`` of two digits written from the
                 top-left cell; the response transcribes the expression inside ``<think>``.
- ``ocr``        "What text is written in the image?" a 2–5 letter code from the top-left cell on,
                 wrapping to the next row; longer codes fail earlier.
- ``grounding``  "Where is the blue triangle? ..." one blue triangle (1×1 or 2×2 cells) among shapes
                 sharing its color or its shape; ground truth ``[{"bbox_2d": [x1, y1, x2, y2]}]`` in
                 pixels of the 112×112 image, end coordinates exclusive.

Answers follow the grading library's formats (first integer, short normalised string, math, fuzzy
text, boxes with IoU). Images are drawn with numpy from exact integer geometry and a built-in bitmap
font, so a seed gives the same pixels on every machine; the PNG bytes are identical wherever the same
Pillow/zlib encode them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from curate.images import encode_png
from curate.schema import CANONICAL_SCHEMA, IMAGE_PLACEHOLDER, STATUS_OK
from curate.toy.font import glyph

IMAGE_SIZE = 112
CELL = 28
GRID = IMAGE_SIZE // CELL  # 4 cells per side
# Paper white with a light tint per cell: red falls by row, blue by column. The tint is how a cell's
# token knows where it is, which grounding boxes and reading order need (with a step of 10 the first
# digit of a sum was misread in some training runs; 20 made reading reliable).
TINT_STEP = 20
INK = (30, 30, 30)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (230, 200, 20),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
OCR_ALPHABET = "ACEHKLMPRTXZ"
TASKS = ("counting", "color", "arithmetic", "ocr", "grounding")
# Each task asks about one fixed kind of object, so that the question only names the task: a tiny model
# learns a fixed detector in a few hundred steps, one conditioned on the question's words far slower.
COUNTING_TARGET = ("red", "circle")
COLOR_TARGET_SHAPE = "square"
GROUNDING_TARGET = ("blue", "triangle")
GROUNDING_MARGIN = 3  # px between a grounding target and its cells' edges: boxes are a function of the cells
GLYPH_SCALE = 3  # 5×7 font pixels drawn 3×3: 15×21-px characters, one per 28-px cell

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass(frozen=True)
class ToySample:
    id: str
    task: str
    question: str
    image: np.ndarray  # (112, 112, 3) uint8
    answer: str
    reasoning: str  # what the trained model writes inside <think>…</think>

    def response(self) -> str:
        """The completion the toy model is trained to produce (before its end-of-turn token)."""
        return f"<think>{self.reasoning}</think><answer>{self.answer}</answer>"


class _Canvas:
    """A white 112×112 RGB image drawn with exact integer geometry (pixel centres at +0.5)."""

    def __init__(self) -> None:
        ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
        self.pixels = np.stack([255 - TINT_STEP * (ys // CELL), np.full_like(ys, 255),
                                255 - TINT_STEP * (xs // CELL)], axis=-1).astype(np.uint8)
        self._x = xs + 0.5
        self._y = ys + 0.5

    def shape(self, kind: str, color: str, box: Box) -> Box:
        """Fill ``kind`` inscribed in ``box``; returns the tight box of the pixels drawn."""
        x0, y0, x1, y1 = box
        inside = (self._x >= x0) & (self._x < x1) & (self._y >= y0) & (self._y < y1)
        if kind == "circle":
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
            inside &= (self._x - cx) ** 2 + (self._y - cy) ** 2 <= r * r
        elif kind == "triangle":  # apex up, base on the bottom edge
            cx, half = (x0 + x1) / 2, (x1 - x0) / 2
            inside &= np.abs(self._x - cx) <= (self._y - y0) / (y1 - y0) * half + 0.5
        elif kind != "square":
            raise ValueError(f"unknown shape {kind!r}")
        self.pixels[inside] = COLORS[color]
        ys, xs = np.nonzero(inside)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def text(self, chars: str, first_cell: int, scale: int) -> None:
        """Write ``chars`` one per cell in reading order from ``first_cell``, centred in each cell."""
        for offset, char in enumerate(chars):
            row, col = divmod(first_cell + offset, GRID)
            ink = glyph(char, scale)
            h, w = ink.shape
            top, left = row * CELL + (CELL - h) // 2, col * CELL + (CELL - w) // 2
            self.pixels[top : top + h, left : left + w][ink] = INK


def _cell_box(rng: np.random.Generator, cell: int, extent: int) -> Box:
    """A square box of side ``extent`` placed at a random offset inside one cell (1 px margin)."""
    row, col = divmod(cell, GRID)
    dx, dy = (int(d) for d in rng.integers(1, CELL - extent - 1, size=2, endpoint=True))
    x0, y0 = col * CELL + dx, row * CELL + dy
    return x0, y0, x0 + extent, y0 + extent


def _block_box(top_left_cell: int, cells: int, margin: int) -> Box:
    """The box of a ``cells``×``cells`` block of cells, shrunk by ``margin`` px on every side."""
    row, col = divmod(top_left_cell, GRID)
    x0, y0 = col * CELL + margin, row * CELL + margin
    side = cells * CELL - 2 * margin
    return x0, y0, x0 + side, y0 + side


def _block_cells(top_left_cell: int, cells: int) -> list[int]:
    row, col = divmod(top_left_cell, GRID)
    return [(row + r) * GRID + col + c for r in range(cells) for c in range(cells)]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _lookalike(rng: np.random.Generator, color: str, shape: str) -> tuple[str, str]:
    """A distractor that shares the target's color or its shape (or neither), never both."""
    other_colors = [c for c in COLORS if c != color]
    other_shapes = [s for s in SHAPES if s != shape]
    kind = int(rng.integers(3))
    if kind == 0:
        return color, _pick(rng, other_shapes)
    if kind == 1:
        return _pick(rng, other_colors), shape
    return _pick(rng, other_colors), _pick(rng, other_shapes)


def _distract(rng: np.random.Generator, canvas: _Canvas, free: Sequence[int], count: int,
              kind: Callable[[], tuple[str, str]]) -> None:
    for cell in free[:count]:
        color, shape = kind()
        canvas.shape(shape, color, _cell_box(rng, int(cell), int(rng.integers(10, 24, endpoint=True))))


def _counting(rng: np.random.Generator) -> tuple[str, _Canvas, str, str]:
    targets = int(rng.integers(0, 5, endpoint=True))
    distractors = int(rng.integers(0, 8, endpoint=True))
    cells = rng.permutation(GRID * GRID)
    canvas = _Canvas()
    color, shape = COUNTING_TARGET
    other_colors = [c for c in COLORS if c != color]
    _distract(rng, canvas, cells[:targets], targets, lambda: COUNTING_TARGET)
    _distract(rng, canvas, cells[targets:], distractors, lambda: (_pick(rng, other_colors), _pick(rng, SHAPES)))
    return f"How many {color} {shape}s are there?", canvas, str(targets), "I count them."


def _color(rng: np.random.Generator) -> tuple[str, _Canvas, str, str]:
    color, shape = _pick(rng, list(COLORS)), COLOR_TARGET_SHAPE
    size = int(rng.integers(3))  # 0 small, 1 medium (one cell), 2 large (2×2 cells)
    canvas = _Canvas()
    if size == 2:
        corner = int(rng.integers(GRID - 1)) * GRID + int(rng.integers(GRID - 1))
        canvas.shape(shape, color, _block_box(corner, 2, int(rng.integers(2, 5, endpoint=True))))
        used = _block_cells(corner, 2)
    else:
        cell = int(rng.integers(GRID * GRID))
        extent = int(rng.integers(8, 13, endpoint=True) if size == 0 else rng.integers(16, 25, endpoint=True))
        canvas.shape(shape, color, _cell_box(rng, cell, extent))
        used = [cell]
    free = [c for c in rng.permutation(GRID * GRID) if c not in used]
    other_shapes = [s for s in SHAPES if s != shape]
    _distract(rng, canvas, free, int(rng.integers(0, 8, endpoint=True)),
              lambda: (_pick(rng, list(COLORS)), _pick(rng, other_shapes)))
    return f"What color is the {shape}?", canvas, color, "I look at its color."


def _arithmetic(rng: np.random.Generator) -> tuple[str, _Canvas, str, str]:
    digits = rng.integers(0, 9, size=2, endpoint=True)
    expression = "+".join(str(int(d)) for d in digits)
    canvas = _Canvas()
    canvas.text(expression, 0, scale=GLYPH_SCALE)
    text_rows = -(-len(expression) // GRID)
    free = [c for c in rng.permutation(GRID * GRID) if c >= text_rows * GRID]
    _distract(rng, canvas, free, int(rng.integers(0, 3, endpoint=True)),
              lambda: (_pick(rng, list(COLORS)), _pick(rng, SHAPES)))
    return "What is the value of the sum in the image?", canvas, str(int(digits.sum())), expression


def _ocr(rng: np.random.Generator) -> tuple[str, _Canvas, str, str]:
    length = int(rng.integers(2, 5, endpoint=True))
    code = "".join(_pick(rng, OCR_ALPHABET) for _ in range(length))
    canvas = _Canvas()
    canvas.text(code, 0, scale=GLYPH_SCALE)
    return "What text is written in the image?", canvas, code, "I read the text."


def _grounding(rng: np.random.Generator) -> tuple[str, _Canvas, str, str]:
    color, shape = GROUNDING_TARGET
    cells = 1 + int(rng.integers(2))
    corner = int(rng.integers(GRID - cells + 1)) * GRID + int(rng.integers(GRID - cells + 1))
    canvas = _Canvas()
    box = canvas.shape(shape, color, _block_box(corner, cells, GROUNDING_MARGIN))
    used = _block_cells(corner, cells)
    free = [c for c in rng.permutation(GRID * GRID) if c not in used]
    _distract(rng, canvas, free, int(rng.integers(0, 7, endpoint=True)), lambda: _lookalike(rng, color, shape))
    answer = json.dumps([{"bbox_2d": list(box)}])
    return f"Where is the {color} {shape}? Answer with its bbox_2d in JSON.", canvas, answer, "I find it."


_TASK_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[str, _Canvas, str, str]]] = {
    "counting": _counting,
    "color": _color,
    "arithmetic": _arithmetic,
    "ocr": _ocr,
    "grounding": _grounding,
}
assert tuple(_TASK_BUILDERS) == TASKS


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("toy corpus: tasks must not be empty")
    unknown = [t for t in tasks if t not in _TASK_BUILDERS]
    if unknown:
        raise ValueError(f"toy corpus: unknown task(s) {unknown}; choose from {list(TASKS)}")
    return tasks


def make_sample(index: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> ToySample:
    """Sample ``index`` of the corpus of ``seed``: task ``tasks[index % len(tasks)]``, own random stream."""
    tasks = _check_tasks(tasks)
    task = tasks[index % len(tasks)]
    rng = np.random.default_rng([seed, index])
    question, canvas, answer, reasoning = _TASK_BUILDERS[task](rng)
    return ToySample(id=f"toy-{seed}-{index:06d}", task=task, question=f"{question}\n{IMAGE_PLACEHOLDER}", image=canvas.pixels,
                     answer=answer, reasoning=reasoning)


def iter_samples(num_samples: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> Iterator[ToySample]:
    if num_samples < 0:
        raise ValueError(f"toy corpus: num_samples must be >= 0, got {num_samples}")
    tasks = _check_tasks(tasks)
    for index in range(num_samples):
        yield make_sample(index, seed, tasks)


def generate_corpus(num_samples: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> pa.Table:
    """``num_samples`` toy samples in the canonical schema (PNG bytes inline, tasks round-robin)."""
    rows = [
        {
            "id": s.id,
            "data_source": f"toy/{s.task}",
            "task": s.task,
            "question": s.question,
            "images": [encode_png(Image.fromarray(s.image))],
            "image_paths": [None],
            "ground_truth": s.answer,
            "verifier": None,
            "status": STATUS_OK,
            "error": None,
        }
        for s in iter_samples(num_samples, seed, tasks)
    ]
    return pa.Table.from_pylist(rows, schema=CANONICAL_SCHEMA)
