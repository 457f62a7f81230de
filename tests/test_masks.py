"""PISM masks: reproducible from (sample id, λ, k, seed) and of the requested area."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from curate.scoring.masks import mask_image, realization_id

# A pinned draw (x0, y0, x1, y1): it changes only if the stream definition (hash → PCG64) changes.
GOLDEN_BLOCK = (23, 50, 72, 99)


def _image(w: int = 112, h: int = 84) -> Image.Image:
    rng = np.random.default_rng(0)
    # Strictly positive pixels, so every black pixel is one the mask made.
    return Image.fromarray(rng.integers(1, 256, size=(h, w, 3), dtype=np.uint8))


def _black(img: Image.Image) -> np.ndarray:
    return (np.asarray(img) == 0).all(axis=-1)


@pytest.mark.parametrize("kind", ["block", "pixel", "patch"])
def test_same_inputs_same_pixels_and_k_changes_them(kind):
    img = _image()
    a = mask_image(img, 0.3, kind, sample_id="s1", k=2, seed=7)
    b = mask_image(img.copy(), 0.3, kind, sample_id="s1", k=2, seed=7)
    assert a.tobytes() == b.tobytes()
    others = [mask_image(img, 0.3, kind, sample_id=s, k=k, seed=e) for s, k, e in
              [("s1", 3, 7), ("s2", 2, 7), ("s1", 2, 8)]]
    assert all(o.tobytes() != a.tobytes() for o in others)


def test_zero_ratio_is_untouched():
    img = _image()
    for kind in ("block", "pixel", "patch"):
        assert mask_image(img, 0.0, kind, sample_id="s", k=0, seed=0).tobytes() == img.tobytes()


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_block_area_within_one_row_or_column(ratio):
    w, h = 112, 84
    black = _black(mask_image(_image(w, h), ratio, "block", sample_id="s", k=1, seed=0))
    ys, xs = np.nonzero(black)
    # one solid rectangle
    assert black[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].all()
    assert abs(black.sum() - ratio * w * h) <= max(w, h)
    assert abs((xs.max() - xs.min() + 1) - w * math.sqrt(ratio)) <= 0.5
    assert abs((ys.max() - ys.min() + 1) - h * math.sqrt(ratio)) <= 0.5


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_pixel_mask_is_exact(ratio):
    black = _black(mask_image(_image(), ratio, "pixel", sample_id="s", k=0, seed=3))
    assert black.sum() == round(ratio * 112 * 84)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75])
def test_patch_mask_masks_whole_cells(ratio):
    img = _image(112, 112)  # a 4 × 4 grid of 28-px cells, one per merged Qwen2.5-VL token
    black = _black(mask_image(img, ratio, "patch", sample_id="s", k=0, seed=1, patch_size=28))
    cells = black.reshape(4, 28, 4, 28).transpose(0, 2, 1, 3).reshape(16, -1)
    full = cells.all(axis=1)
    assert (cells.any(axis=1) == full).all()  # cells are all-or-nothing
    assert full.sum() == round(ratio * 16)


def test_realization_is_stable_across_machines():
    black = _black(mask_image(_image(100, 100), 0.25, "block", sample_id="golden", k=0, seed=0))
    ys, xs = np.nonzero(black)
    assert (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) == GOLDEN_BLOCK


def test_realization_ids_distinguish_draws():
    ids = {realization_id("img", r, "block", k, 0, 28) for r in (0.1, 0.2) for k in range(3)}
    assert len(ids) == 6
    assert realization_id("img", 0.0, "block", 5, 0, 28) == "img"

