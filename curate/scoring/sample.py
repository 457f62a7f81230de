"""One canonical row as the scorers see it: the question, the decoded images and the reference answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from curate import schema
from curate.grading import check_ground_truth
from curate.images import ImageOptions, decode_image


@dataclass
class Sample:
    """What every scorer needs of one canonical row, with its images decoded."""

    id: str
    images: list[Image.Image]
    question: str
    task: str
    ground_truth: str
    verifier: str | None = None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the first image: what box answers are measured against."""
        return self.images[0].size if self.images else None


def row_sample(row: dict[str, Any], image_options: ImageOptions) -> Sample:
    """The scoring sample of a canonical row; ``ValueError`` names what makes the row unusable."""
    images = row[schema.IMAGES] or []
    decoded = []
    for j, data in enumerate(images):
        try:
            decoded.append(decode_image(data, image_options))
        except ValueError as err:
            raise ValueError(f"image {j}: {err}") from None
    if not decoded:
        raise ValueError("the sample has no image")
    if not (row[schema.QUESTION] or "").strip():
        raise ValueError("empty question")
    if row[schema.GROUND_TRUTH] is None:
        raise ValueError("no ground truth")
    problem = check_ground_truth(row[schema.TASK] or "", row[schema.GROUND_TRUTH], row[schema.VERIFIER])
    if problem:
        raise ValueError(f"ground truth unusable by the {row[schema.TASK]!r} grader: {problem}")
    return Sample(
        id=row[schema.ID],
        images=decoded,
        question=row[schema.QUESTION],
        task=row[schema.TASK],
        ground_truth=row[schema.GROUND_TRUTH],
        verifier=row[schema.VERIFIER],
    )
