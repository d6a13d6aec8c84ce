"""Reading training images without trusting them: sizes are checked from the header before any
pixel is decoded, and the decode is complete and strict, so truncated or corrupt files fail.

Pillow's JPEG decoder hides libjpeg's warnings: a JPEG whose middle bytes are damaged decodes
as garbage without an error. JPEGs are therefore decoded by libjpeg-turbo through simplejpeg
in strict mode (every libjpeg warning raises; the pixels equal Pillow's). Other formats are
checked with Pillow's ``verify`` (PNG chunk checksums) and then fully loaded.
"""
from __future__ import annotations

import io

import simplejpeg
from PIL import Image

MAX_ASPECT = 4.0
"""Wider or taller than this, the crop to a bucket (at most 2:1) would lose most of the picture."""
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
"""Pillow's decompression-bomb threshold (about 89 MP)."""
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What reading a bad image raises (Pillow's UnidentifiedImageError is an OSError)."""


class ImageRefused(ValueError):
    """An image the trainer will not use; the message says why."""


def size_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused, or None."""
    if width < 1 or height < 1:
        return f"size {width}x{height} has no pixels"
    ratio = max(width / height, height / width)
    if ratio > MAX_ASPECT:
        return f"size {width}x{height}: aspect ratio {ratio:.1f}:1 is beyond {MAX_ASPECT:g}:1"
    if width * height > MAX_PIXELS:
        return f"size {width}x{height} ({width * height / 1e6:.0f} MP) is beyond {MAX_PIXELS / 1e6:.0f} MP"
    return None


def check_size(im: Image.Image) -> tuple[int, int]:
    """The size an opened (header-only) image declares; ImageRefused if it is extreme."""
    problem = size_problem(*im.size)
    if problem:
        raise ImageRefused(problem)
    return im.size


def decode_image(data: bytes) -> Image.Image:
    """The whole image as RGB; raises one of ``IMAGE_ERRORS`` for extreme sizes (from the
    header, before decoding), truncated files and corrupt data."""
    with Image.open(io.BytesIO(data)) as im:
        check_size(im)
        if im.format == "JPEG" and im.mode != "CMYK":
            return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True))
        if im.format == "JPEG":
            simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True)
        else:
            im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")
