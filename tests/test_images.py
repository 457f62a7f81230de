"""Image decoding: the pixels every consumer sees are the right ones, whatever the file's mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.images import ImageError, ImageOptions, decode_image, normalize_image


def _encode(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def test_16_bit_grayscale_keeps_its_tones():
    values = np.array([[0, 257 * 10, 257 * 128], [257 * 200, 65535, 1000]], dtype=np.uint16)
    data = _encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    got = np.asarray(decode_image(data))
    assert got.shape == (2, 3, 3) and (got[..., 0] == got[..., 2]).all()
    np.testing.assert_array_equal(got[..., 0], np.round(values / 257).astype(np.uint8))
    # What a plain convert("RGB") gives, the bug being fixed: nearly everything white.
    assert (np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) == 255).mean() > 0.5
    normalized, notes = normalize_image(data)
    assert notes == ["I;16 grayscale scaled to 8 bits"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(normalized)).convert("RGB")), got)


@pytest.mark.parametrize("background,expected", [("white", (255, 255, 255)), ("#000000", (0, 0, 0))])
def test_transparency_is_composited_on_the_stated_background(background, expected):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, hidden where alpha is 0
    rgba[:2, :, 3] = 255  # top half opaque
    rgba[2:, :, 3] = 0
    rgba[3, 3, 3] = 128  # one half-transparent pixel
    data = _encode(Image.fromarray(rgba, "RGBA"))
    got = np.asarray(decode_image(data, ImageOptions(background=background)))
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[2, 0]) == expected
    bg = np.array(expected, float)
    want = np.round(np.array([255, 0, 0]) * 128 / 255 + bg * (1 - 128 / 255))
    assert np.abs(got[3, 3].astype(float) - want).max() <= 1
    assert normalize_image(data, ImageOptions(background=background))[1] == [
        f"transparency composited on {background}"
    ]


def test_palette_with_a_transparent_index():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255] + [255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    data = _encode(img, transparency=0)
    got = np.asarray(decode_image(data))
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 1]) == (255, 0, 0)


def test_opaque_rgba_and_plain_files_are_kept_byte_for_byte():
    plain = _encode(Image.new("RGB", (3, 3), (1, 2, 3)))
    assert normalize_image(plain) == (plain, [])
    gray = _encode(Image.new("L", (3, 3), 9))
    assert normalize_image(gray) == (gray, [])
    opaque = _encode(Image.new("RGBA", (3, 3), (1, 2, 3, 255)))
    data, notes = normalize_image(opaque)
    assert notes == [] and np.asarray(decode_image(data)).tolist() == [[[1, 2, 3]] * 3] * 3


def test_animated_image_uses_the_first_frame_and_says_so():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    got, notes = normalize_image(data)
    assert notes == ["3-frame image: the first frame is used"]
    assert tuple(np.asarray(decode_image(got))[0, 0]) == (255, 0, 0)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    data = _encode(img, "PNG", exif=exif)
    got = np.asarray(decode_image(data))
    assert got.shape[:2] == (4, 2)  # portrait now
    assert tuple(got[0, 1]) == (255, 255, 255)  # the marker moved to the top-right
    assert normalize_image(data)[1] == ["EXIF orientation 6 applied"]


def test_limits_are_row_errors_naming_their_key():
    sliver = _encode(Image.new("RGB", (300, 1)))
    with pytest.raises(ImageError, match="data.images.max_aspect_ratio"):
        decode_image(sliver)
    assert decode_image(sliver, ImageOptions(max_aspect_ratio=400)).size == (300, 1)
    big = _encode(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="data.images.max_pixels"):
        decode_image(big, ImageOptions(max_pixels=9999))
    with pytest.raises(ImageError, match="data.images.max_bytes"):
        decode_image(big, ImageOptions(max_bytes=len(big) - 1))
