"""Grounding and detection: boxes in the answer against the true boxes.

Answers are read without evaluating anything: ``[{"bbox_2d": [x1, y1, x2, y2], "label": "dog"}, …]``
in JSON or Python-literal quoting (Orsta's ground truths use single quotes), a single such dict, a
bare ``[x1, y1, x2, y2]`` or a list of them, or Qwen2-VL's ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``;
``bbox`` and ``box`` are accepted as key names. Corners given in the other order describe the same
rectangle.

``correct`` (a strict judge, AP50's criterion): the predicted boxes match the true boxes one to one
(an optimal assignment, scipy's Hungarian solver) each at IoU >= ``GradingOptions.box_iou`` (0.5),
with no true box missed and no predicted box left over (duplicates are extras), and for detection
the same label on both (labels compared in lower case; a prediction without labels is accepted
only when every true box has the same label). The released plugin scored area-weighted IoU from
a 0.2 match and called >= 0.5 correct, so a missed small object, an extra box or a wrong label
could still pass.

``partial`` (a separate reward option, never ``correct``): the same one-to-one assignment over every
overlapping pair (no threshold, so a near miss still earns its IoU), Σ IoU / (true boxes + unmatched
predicted boxes): the mean IoU over the union of both sides.

Coordinates: both sides are brought to the same convention before IoU. ``pixel`` (Qwen2.5-VL's
absolute pixels), ``norm1000`` (Qwen2-VL, InternVL: 0–1000) and ``norm1`` (0–1) are told apart by the
options and, for ``auto``, by the values (all within [0, 1]: norm1); pixel ↔ normalised needs the
image size, without it those two are compared as written. Degenerate boxes (zero area, NaN/inf)
match nothing. An empty truth (``[]``) is matched only by an answer without boxes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from curate.grading.extract import FinalAnswer, answer_text
from curate.grading.verdict import GradeContext, GradingOptions, Verdict

# At most this many boxes per side take part in the (quadratic) matching; further predicted boxes
# still count as unmatched, further true boxes as missed.
MAX_BOXES = 256
# Characters of the answer searched for boxes (~16 characters per box at least, so ≥ 4096 boxes).
MAX_BOX_TEXT = 64 * 1024

_NUM = r"[-+]?(?:\d{1,24}(?:\.\d{0,24})?|\.\d{1,24})(?:[eE][-+]?\d{1,4})?"
_NUM_RE = re.compile(_NUM)
_DICT = re.compile(r"\{[^{}]*\}")
_BOX_KEY = re.compile(r"""["']?\b(?:bbox_2d|bbox|box)["']?\s*:\s*\[([^\[\]]*)\]""")
_LABEL = re.compile(r"""["']?\blabel["']?\s*:\s*(?:"([^"]*)"|'([^']*)')""")
# A bare box, optionally named on its line: "dog: [x1, y1, x2, y2]".
_BARE = re.compile(
    r"(?:(?:^|\n|[;,])\s*+[-*]?\s*+([A-Za-z][A-Za-z _-]{0,30}?)\s*+[:=]\s*+)?"
    r"\[\s*+(%s)\s*+,\s*+(%s)\s*+,\s*+(%s)\s*+,\s*+(%s)\s*+\]" % ((_NUM,) * 4)
)
_EMPTY_LIST = re.compile(r"\[\s*\]")
# Qwen2-VL: "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>".
_QWEN2_BOX = re.compile(r"(?:<\|object_ref_start\|>([^<]{1,64})<\|object_ref_end\|>\s*)?(?:<\|box_start\|>)?\(\s*(%s)\s*,\s*(%s)\s*\)\s*,\s*\(\s*(%s)\s*,\s*(%s)\s*\)" % ((_NUM,) * 4))


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @staticmethod
    def of(coords: list[float], label: str | None = None) -> Box:
        """The box spanned by two corners given in any order."""
        x1, y1, x2, y2 = coords
        return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2), label)

    def scaled(self, sx: float, sy: float) -> Box:
        return replace(self, x1=self.x1 * sx, y1=self.y1 * sy, x2=self.x2 * sx, y2=self.y2 * sy)

    @property
    def area(self) -> float:
        """Positive finite area, or 0.0 for a degenerate box."""
        w, h = self.x2 - self.x1, self.y2 - self.y1
        area = w * h if w > 0 and h > 0 else 0.0
        return area if math.isfinite(area) else 0.0

    def iou(self, other: Box) -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        if not (w > 0 and h > 0):
            return 0.0
        inter = w * h
        return min(1.0, inter / (self.area + other.area - inter))


def _coords(text: str) -> list[float] | None:
    parts = text.split(",")
    if len(parts) != 4 or not all(_NUM_RE.fullmatch(p.strip()) for p in parts):
        return None
    return [float(p) for p in parts]


def _label(text: str) -> str | None:
    m = _LABEL.search(text)
    if m is None:
        return None
    return " ".join((m.group(1) if m.group(1) is not None else m.group(2)).lower().split())


def _bare_label(name: str | None) -> str | None:
    return " ".join(name.lower().split()) if name else None


def parse_boxes(text: str) -> list[Box] | None:
    """Every box written in ``text``; ``[]`` for an explicit empty list; None when there is neither."""
    text = text[:MAX_BOX_TEXT]
    boxes = []
    for d in _DICT.finditer(text):
        key = _BOX_KEY.search(d.group())
        coords = _coords(key.group(1)) if key else None
        if coords is not None:
            boxes.append(Box.of(coords, label=_label(d.group())))
    if not boxes:
        boxes = [Box.of([float(v) for v in m.groups()[1:]], _bare_label(m.group(1))) for m in _BARE.finditer(text)]
    if not boxes:
        boxes = [Box.of([float(v) for v in m.groups()[1:]], _bare_label(m.group(1))) for m in _QWEN2_BOX.finditer(text)]
    if boxes:
        return boxes
    return [] if _EMPTY_LIST.search(text) else None


_ANY_OVERLAP = 1e-12


def match(pred: list[Box], truth: list[Box], min_iou: float, use_labels: bool) -> list[tuple[int, int, float]]:
    """A one-to-one matching at IoU >= ``min_iou`` with the most pairs, then the most IoU:
    ``[(pred index, truth index, iou)]``. Pairs with different labels never match (``use_labels``)."""
    if not pred or not truth:
        return []
    iou = np.zeros((len(pred), len(truth)))
    for i, p in enumerate(pred):
        for j, t in enumerate(truth):
            if not (use_labels and p.label is not None and t.label is not None and p.label != t.label):
                iou[i, j] = p.iou(t)
    eligible = iou >= min_iou
    # Each eligible pair is worth more than any number of IoU points, so the count comes first.
    weight = np.where(eligible, iou + (min(len(pred), len(truth)) + 1), 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols) if eligible[i, j]]


def judge_boxes(pred: list[Box], truth: list[Box], min_iou: float, use_labels: bool) -> tuple[bool, float]:
    """``(correct, partial)`` as the module docstring defines them."""
    pred = [b for b in pred if b.area > 0][:MAX_BOXES]
    truth = [b for b in truth if b.area > 0][:MAX_BOXES]
    if not truth:
        return not pred, float(not pred)
    if use_labels and any(b.label is None for b in pred):
        labels = {b.label for b in truth}
        if len(labels) > 1 or any(b.label is not None for b in pred):
            return False, 0.0
        use_labels = False  # one class on the truth side: an unlabelled answer names it
    correct = len(pred) == len(truth) == len(match(pred, truth, min_iou, use_labels))
    overlapping = match(pred, truth, _ANY_OVERLAP, use_labels)
    partial = sum(i for _, _, i in overlapping) / (len(truth) + len(pred) - len(overlapping))
    return correct, min(1.0, max(0.0, partial)) if math.isfinite(partial) else 0.0


# The coordinates a model family writes its boxes in (model cards / reports), by a part of its hub
# name or its config's model_type.
_MODEL_BOX_FORMATS = (
    ("qwen2.5-vl", "pixel"),
    ("qwen2_5_vl", "pixel"),
    ("qwen2.5vl", "pixel"),
    ("qwen2-vl", "norm1000"),
    ("qwen2_vl", "norm1000"),
    ("internvl", "norm1000"),
)


def box_format_for_model(model: str) -> str:
    """``pixel`` for Qwen2.5-VL, ``norm1000`` for Qwen2-VL and InternVL, else ``auto``; a local
    checkpoint directory is known by its config.json's ``model_type``."""
    names = [model.lower()]
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            names.insert(0, str(json.loads(config.read_text()).get("model_type", "")).lower())
        except (OSError, ValueError):
            pass
    for name in names:
        for part, fmt in _MODEL_BOX_FORMATS:
            if part in name:
                return fmt
    return "auto"


def _format(boxes: list[Box], declared: str, fallback: str) -> str:
    if declared != "auto":
        return declared
    coords = [abs(v) for b in boxes for v in (b.x1, b.y1, b.x2, b.y2)]
    return "norm1" if coords and max(coords) <= 1.0 else fallback


def to_unit_square(boxes: list[Box], fmt: str, image_size: tuple[int, int] | None) -> list[Box] | None:
    """``boxes`` in [0, 1] coordinates, or None when a pixel box has no image size to divide by."""
    if fmt == "norm1":
        return boxes
    if fmt == "norm1000":
        return [b.scaled(1e-3, 1e-3) for b in boxes]
    if image_size is None or min(image_size) <= 0:
        return None
    return [b.scaled(1 / image_size[0], 1 / image_size[1]) for b in boxes]


def _same_convention(pred: list[Box], truth: list[Box], ctx: GradeContext) -> tuple[list[Box], list[Box]]:
    options: GradingOptions = ctx.options
    truth_fmt = _format(truth, options.truth_box_format, "pixel")
    pred_fmt = _format(pred, options.answer_box_format, truth_fmt)
    if pred_fmt == truth_fmt:
        return pred, truth
    pred_unit = to_unit_square(pred, pred_fmt, ctx.image_size)
    truth_unit = to_unit_square(truth, truth_fmt, ctx.image_size)
    if pred_unit is None or truth_unit is None:
        return pred, truth  # a pixel side without an image size: compared as written
    return pred_unit, truth_unit


def _truth_boxes(ground_truth: str) -> list[Box] | None:
    boxes = parse_boxes(answer_text(ground_truth))
    if boxes is None or (boxes and not any(b.area > 0 for b in boxes)):
        return None
    return boxes


def _describe(boxes: list[Box], use_labels: bool) -> str:
    shown = [
        {"bbox_2d": [b.x1, b.y1, b.x2, b.y2], **({"label": b.label} if use_labels and b.label else {})}
        for b in boxes[:32]
    ]
    return json.dumps(shown) + (f" (+{len(boxes) - 32} more)" if len(boxes) > 32 else "")


def _grade(answer: FinalAnswer, ground_truth: str, ctx: GradeContext, use_labels: bool) -> Verdict:
    truth = _truth_boxes(ground_truth)
    pred = parse_boxes(answer.text) if answer.text is not None else None
    pred = pred or []
    extracted = _describe(pred, use_labels) if pred else None
    if truth is None or (answer.text is None and truth):
        return Verdict(False, 0.0, extracted)
    pred, truth = _same_convention(pred, truth, ctx)
    correct, partial = judge_boxes(pred, truth, ctx.options.box_iou, use_labels)
    return Verdict(correct, partial, extracted)


def grade_grounding(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    return _grade(answer, ground_truth, ctx, use_labels=False)


def grade_detection(answer: FinalAnswer, ground_truth: str, ctx: GradeContext) -> Verdict:
    return _grade(answer, ground_truth, ctx, use_labels=True)


def check_boxes_truth(ground_truth: str) -> str | None:
    if _truth_boxes(ground_truth) is None:
        return "box ground truth has no valid [x1, y1, x2, y2] box (and is not an empty list [])"
    return None
