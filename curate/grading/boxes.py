"""Grounding and detection: boxes in the answer against the true boxes.

Answers are read without evaluating anything: ``[{"bbox_2d": [x1, y1, x2, y2], "label": "dog"}, …]``
in JSON or Python-literal quoting (Orsta's ground truths use single quotes), a single such dict, a
bare ``[x1, y1, x2, y2]`` or a list of them; ``bbox`` and ``box`` are accepted as key names.

Score (continuous, what GRPO rewards): boxes are matched one-to-one greedily by best IoU first,
pairs below ``MATCH_IOU_THRESHOLD`` stay unmatched, and

    score = Σ_matched IoU · area(true box) / (Σ area(true boxes) + Σ area(unmatched predicted boxes))

i.e. the released plugin's area-weighted mean IoU over the true boxes, with two fixes: a true box
nobody matched counts as IoU 0 (the plugin left it out of the mean, so predicting one easy box out
of five scored 1.0), and unmatched predicted boxes weigh in with IoU 0 (else spraying boxes would
only ever help). Detection matches only boxes with the same label when both carry one; grounding
ignores labels. Degenerate boxes (x2 ≤ x1, y2 ≤ y1, NaN/inf, area overflow) match nothing and weigh
nothing. An empty truth (``[]``) is matched only by an answer without boxes.

IoU is continuous (no "+1 pixel" convention): coordinates are Qwen2.5-VL's absolute pixels or any
normalised grid, the same for answer and truth.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from curate.grading.extract import answer_region, answer_text

# Pairs with a lower IoU are not matched. The released plugin declares 0.2; Orsta matches at 0.5.
MATCH_IOU_THRESHOLD = 0.2
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
_BARE = re.compile(r"\[\s*(%s)\s*,\s*(%s)\s*,\s*(%s)\s*,\s*(%s)\s*\]" % ((_NUM,) * 4))
_EMPTY_LIST = re.compile(r"\[\s*\]")


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

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


def parse_boxes(text: str) -> list[Box] | None:
    """Every box written in ``text``; ``[]`` for an explicit empty list; None when there is neither."""
    text = text[:MAX_BOX_TEXT]
    boxes = []
    for d in _DICT.finditer(text):
        key = _BOX_KEY.search(d.group())
        coords = _coords(key.group(1)) if key else None
        if coords is not None:
            boxes.append(Box(*coords, label=_label(d.group())))
    if not boxes:
        boxes = [Box(*map(float, m.groups())) for m in _BARE.finditer(text)]
    if boxes:
        return boxes
    return [] if _EMPTY_LIST.search(text) else None


def _matches(pred: list[Box], truth: list[Box], match_iou: float, use_labels: bool):
    """Greedy one-to-one matching, best IoU first: ``[(pred index, truth index, iou)]``."""
    pairs = []
    for i, p in enumerate(pred):
        for j, t in enumerate(truth):
            if use_labels and p.label is not None and t.label is not None and p.label != t.label:
                continue
            iou = p.iou(t)
            if iou > 0 and iou >= match_iou:
                pairs.append((-iou, i, j))
    pairs.sort()
    used_pred, used_truth, out = set(), set(), []
    for neg_iou, i, j in pairs:
        if i not in used_pred and j not in used_truth:
            used_pred.add(i)
            used_truth.add(j)
            out.append((i, j, -neg_iou))
    return out


def box_score(
    pred: list[Box], truth: list[Box], match_iou: float = MATCH_IOU_THRESHOLD, use_labels: bool = False
) -> float:
    """The area-weighted IoU score above, in [0, 1]. ``truth`` must hold a valid box or be empty."""
    pred = [b for b in pred if b.area > 0]
    truth = [b for b in truth if b.area > 0]
    if not truth:
        return float(not pred)
    matched = _matches(pred[:MAX_BOXES], truth[:MAX_BOXES], match_iou, use_labels)
    hit = sum(iou * truth[j].area for _, j, iou in matched)
    matched_pred = {i for i, _, _ in matched}
    spare = sum(b.area for i, b in enumerate(pred) if i not in matched_pred)
    total = sum(b.area for b in truth) + spare
    score = hit / total if total > 0 and math.isfinite(total) else 0.0
    return min(1.0, max(0.0, score))


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


def _grade(response: str, ground_truth: str, use_labels: bool) -> tuple[float, str | None]:
    truth = _truth_boxes(ground_truth)
    region, _ = answer_region(response)
    pred = parse_boxes(region) or []
    extracted = _describe(pred, use_labels) if pred else None
    if truth is None:
        return 0.0, extracted
    return box_score(pred, truth, use_labels=use_labels), extracted


def grade_grounding(response: str, ground_truth: str) -> tuple[float, str | None]:
    return _grade(response, ground_truth, use_labels=False)


def grade_detection(response: str, ground_truth: str) -> tuple[float, str | None]:
    return _grade(response, ground_truth, use_labels=True)


def check_boxes_truth(ground_truth: str) -> str | None:
    if _truth_boxes(ground_truth) is None:
        return "box ground truth has no valid [x1, y1, x2, y2] box (and is not an empty list [])"
    return None
