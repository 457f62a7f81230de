"""What a grader returns, and the options that tune grading (one ``grading`` config section)."""

from __future__ import annotations

from dataclasses import dataclass, field

BOX_FORMATS = ("auto", "pixel", "norm1000", "norm1")


@dataclass
class GradingOptions:
    """Grading settings a run may change; the defaults are a strict judge's.

    The curation config's ``grading`` section and the reward's ``reward_kwargs`` build one of these,
    so difficulty and reward are judged alike. Not frozen: OmegaConf merges overrides into it.
    """

    ocr_typo_min_chars: int = 30
    """OCR truths at least this long (normalised) tolerate typos; shorter ones must be exact"""
    ocr_typo_per_chars: int = 30
    """one tolerated edit per this many characters of such a truth"""
    box_iou: float = 0.5
    """a predicted box matches a true box at IoU >= this"""
    answer_box_format: str = "auto"
    """coordinates the model writes: pixel (Qwen2.5-VL), norm1000 (Qwen2-VL, InternVL), norm1, or
    auto (norm1 when every coordinate is within [0, 1], else the truth's convention)"""
    truth_box_format: str = "auto"
    """coordinates of the ground truth, as answer_box_format (auto: norm1 within [0, 1], else pixel)"""

    def __post_init__(self) -> None:
        for key in ("answer_box_format", "truth_box_format"):
            if getattr(self, key) not in BOX_FORMATS:
                raise ValueError(f"grading.{key}: {getattr(self, key)!r} is not one of {list(BOX_FORMATS)}")
        if not 0.0 < self.box_iou <= 1.0:
            raise ValueError(f"grading.box_iou: {self.box_iou!r} is not in (0, 1]")
        for key in ("ocr_typo_min_chars", "ocr_typo_per_chars"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"grading.{key}: {value!r} is not a positive integer")


@dataclass(frozen=True)
class GradeContext:
    options: GradingOptions = field(default_factory=GradingOptions)
    image_size: tuple[int, int] | None = None
    """(width, height) of the image the answer refers to: converts box conventions"""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    """the strict judge's verdict"""
    partial: float
    """partial credit in [0, 1] (OCR similarity, mean IoU); float(correct) for exact graders"""
    extracted: str | None
    """what was read from the response (None: no answer found)"""
    grader: str | None = None
    """the grader that decided, when a grader hands off by the answer's shape (math → choice)"""


def exact(correct: bool, extracted: str | None, grader: str | None = None) -> Verdict:
    return Verdict(correct, float(correct), extracted, grader)
