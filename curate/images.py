"""Decode, normalise and fingerprint the image bytes carried in the canonical ``images`` column.

Every consumer (the scorer, exports, ``rl eval``, verl's own loaders) turns an image into RGB with a
plain ``convert("RGB")``, which is wrong for several real files: 16-bit grayscale clips to white,
transparent pixels take whatever colour they hide, a phone photo stays on its side (EXIF orientation)
and an animated GIF silently means its first frame. :func:`normalize_image` does it right once, at
read time: such an image is re-encoded as an 8-bit RGB PNG in the canonical row, with a note saying
what was done, so that everything downstream sees the same pixels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_ORIENTATION = 0x0112  # EXIF tag
_PLAIN_MODES = ("RGB", "L")
_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class ImageOptions:
    """Limits an image must meet (else its row is an error) and how transparency is flattened."""

    # Decoded size cap (a decompression bomb is a small file with a huge size in its header); PIL's
    # own guard still refuses more than twice PIL.Image.MAX_IMAGE_PIXELS.
    max_pixels: int = 64_000_000
    # Encoded size cap per image.
    max_bytes: int = 64 * 1024 * 1024
    # max(width, height) / min(width, height); Qwen2/2.5-VL's processor refuses more than 200.
    max_aspect_ratio: float = 200.0
    # Transparent pixels are composited on this colour (a PIL colour name or #rrggbb).
    background: str = "white"


DEFAULT_OPTIONS = ImageOptions()


class ImageError(ValueError):
    """An image that cannot be used: empty, corrupt, truncated, or over a limit."""


def _check_limits(data: bytes, size: tuple[int, int], options: ImageOptions) -> None:
    w, h = size
    if w == 0 or h == 0:
        raise ImageError(f"degenerate image size {w}x{h}")
    if w * h > options.max_pixels:
        raise ImageError(f"image too large: {w}x{h} pixels > {options.max_pixels} (data.images.max_pixels)")
    if max(w, h) / min(w, h) > options.max_aspect_ratio:
        raise ImageError(
            f"image aspect ratio {max(w, h) / min(w, h):.0f} ({w}x{h}) > {options.max_aspect_ratio:g} "
            "(data.images.max_aspect_ratio)"
        )


def _to_8bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """Wide integer and float grayscale as 8-bit L: 16-bit scaled by 1/257, floats by their range."""
    if img.mode in _WIDE_INT_MODES:
        values = np.asarray(img, dtype=np.float64)
        notes.append(f"{img.mode} grayscale scaled to 8 bits")
        return Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(values.min()), float(values.max())
        notes.append(f"float grayscale scaled from [{lo:g}, {hi:g}] to 8 bits")
        scaled = (values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)
        return Image.fromarray(scaled.round().astype(np.uint8), "L")
    return img


def _flatten_alpha(img: Image.Image, background: str, notes: list[str]) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            notes.append(f"transparency composited on {background}")
            base = Image.new("RGBA", rgba.size, background)
            return Image.alpha_composite(base, rgba).convert("RGB")
        return rgba.convert("RGB")
    return img


def _decode(data: bytes | None, options: ImageOptions) -> tuple[Image.Image, list[str], bool]:
    """(RGB image, notes, whether it differs from a plain ``convert("RGB")`` of the file)."""
    if data is None or len(data) == 0:
        raise ImageError("empty image (zero bytes)")
    if len(data) > options.max_bytes:
        raise ImageError(f"image file too large: {len(data)} bytes > {options.max_bytes} (data.images.max_bytes)")
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_limits(data, img.size, options)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                img.seek(0)
                notes.append(f"{frames}-frame image: the first frame is used")
            img.load()
            orientation = img.getexif().get(_ORIENTATION, 1)
            out = ImageOps.exif_transpose(img) if orientation not in (1, None) else img
            if out is not img:
                notes.append(f"EXIF orientation {orientation} applied")
            out = _flatten_alpha(_to_8bit(out, notes), options.background, notes)
            changed = bool(notes) or out.mode not in _PLAIN_MODES
            return (out if out.mode == "RGB" else out.convert("RGB")), notes, changed
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"cannot decode image ({len(data)} bytes): not a recognised image format") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large (PIL's decompression-bomb guard): {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"cannot decode image ({len(data)} bytes): {err}") from None


def decode_image(data: bytes | None, options: ImageOptions = DEFAULT_OPTIONS) -> Image.Image:
    """Bytes of an encoded image file → an RGB PIL image, fully loaded (errors surface here, not later)."""
    return _decode(data, options)[0]


def normalize_image(data: bytes | None, options: ImageOptions = DEFAULT_OPTIONS) -> tuple[bytes, list[str]]:
    """(bytes every consumer decodes right, notes): the file itself when a plain RGB conversion of it
    is already right, else its correct RGB pixels as PNG. Raises ``ImageError`` like ``decode_image``."""
    img, notes, changed = _decode(data, options)
    return (encode_png(img) if changed else bytes(data)), notes  # type: ignore[arg-type]


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
