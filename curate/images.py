"""Decode and fingerprint the image bytes carried in the canonical ``images`` column."""

from __future__ import annotations

import hashlib
import io
from typing import Iterable

from PIL import Image, UnidentifiedImageError

# Refuse decompression bombs with a clear per-row error instead of PIL's warning or a huge allocation.
MAX_IMAGE_PIXELS = 64_000_000


class ImageError(ValueError):
    """An image that cannot be used: empty, corrupt, truncated or too large."""


def decode_image(data: bytes | None) -> Image.Image:
    """Bytes of an encoded image file → an RGB PIL image, fully loaded (errors surface here, not later)."""
    if data is None or len(data) == 0:
        raise ImageError("empty image (zero bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError(f"image too large: {w}x{h} pixels > {MAX_IMAGE_PIXELS}")
            if w == 0 or h == 0:
                raise ImageError(f"degenerate image size {w}x{h}")
            img.load()
            return img.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"cannot decode image ({len(data)} bytes): not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {err}") from None


def image_size(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header (nothing decoded), or None if it has none."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def content_id(images: Iterable[Image.Image], *salt: object) -> str:
    """A hash of the pixels (and size/mode) of ``images``: equal ids mean identical images."""
    h = hashlib.blake2b(digest_size=16)
    for s in salt:
        h.update(repr(s).encode())
    for img in images:
        h.update(f"{img.mode}:{img.size}".encode())
        h.update(img.tobytes())
    return h.hexdigest()
