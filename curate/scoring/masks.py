"""PISM's image masks (method.md §1): each realization is a pure function of its inputs.

``mask_image(image, ratio, kind, sample_id=..., k=..., seed=...)`` blacks out a ``ratio`` share of the
image. The random draw comes from a PCG64 stream seeded by a hash of (sample id, ratio, k, seed, image
index), never from global state, so the same inputs give the same pixels on any machine and in any
process — which is what lets early-exit and full-grid PISM see the same realizations, and a resumed
run reproduce an interrupted one.

Kinds:
- ``block`` (the released code's, default): one black rectangle of W·√λ × H·√λ at a uniformly random
  position.
- ``pixel`` (the paper's text): exactly round(λ·W·H) random pixels set to black.
- ``patch``: round(λ·cells) random cells of a grid of ``patch_size``-pixel cells (28 px = one merged
  Qwen2.5-VL visual token), i.e. masking aligned with what the model actually sees.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image

MASK_KINDS = ("block", "pixel", "patch")


def _stream(*key: object) -> np.random.Generator:
    digest = hashlib.blake2b("|".join(map(str, key)).encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))


def derived_seed(*key: object) -> int:
    """A stable 31-bit seed from ``key`` (room left for ``seed + i`` sample offsets)."""
    digest = hashlib.blake2b("|".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def _ratio_key(ratio: float) -> str:
    return f"{ratio:.6f}"


def mask_image(
    image: Image.Image,
    ratio: float,
    kind: str = "block",
    *,
    sample_id: str,
    k: int,
    seed: int,
    image_index: int = 0,
    patch_size: int = 28,
) -> Image.Image:
    """A copy of ``image`` with a ``ratio`` share blacked out; ``ratio == 0`` returns it untouched."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    if ratio == 0.0:
        return image
    rng = _stream("mask", kind, sample_id, _ratio_key(ratio), k, seed, image_index)
    pixels = np.array(image.convert("RGB"))
    height, width = pixels.shape[:2]
    if kind == "block":
        w = min(width, max(1, round(width * math.sqrt(ratio))))
        h = min(height, max(1, round(height * math.sqrt(ratio))))
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        pixels[y0 : y0 + h, x0 : x0 + w] = 0
    elif kind == "pixel":
        chosen = rng.choice(width * height, size=round(ratio * width * height), replace=False)
        pixels.reshape(-1, pixels.shape[-1])[chosen] = 0
    else:
        rows_, cols = _grid(height, patch_size), _grid(width, patch_size)
        cells = (len(rows_) - 1) * (len(cols) - 1)
        for cell in rng.choice(cells, size=round(ratio * cells), replace=False):
            r, c = divmod(int(cell), len(cols) - 1)
            pixels[rows_[r] : rows_[r + 1], cols[c] : cols[c + 1]] = 0
    return Image.fromarray(pixels)


def _grid(length: int, patch_size: int) -> list[int]:
    """Cell boundaries: round(length / patch_size) near-equal cells (at least one)."""
    cells = max(1, round(length / patch_size))
    return [round(i * length / cells) for i in range(cells + 1)]


def realization_id(image_id: str, ratio: float, kind: str, k: int, seed: int, patch_size: int) -> str:
    """A content id for a masked image: equal ids ⇔ equal pixels (the original's id plus the draw)."""
    if ratio == 0.0:
        return image_id
    extra = f":{patch_size}" if kind == "patch" else ""
    return f"{image_id}:{kind}{extra}:{_ratio_key(ratio)}:{k}:{seed}"
