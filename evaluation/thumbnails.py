"""Small JPEG copies of the evaluation images for the report page, and which images are blank.

A thumbnail is written once, to ``<out>/thumbs/<method>/<lang>/<id>_<k>.jpg`` beside
``<out>/images/``, and made again only when its image is newer (an image remade in place). An
image is blank when its pixels are near-constant (an all-black or all-grey result): it is flagged
in the report rather than ranked like any other.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps, ImageStat

from adapters.file_format import atomic_write

BLANK_STD = 2.0
"""Standard deviation of the grey levels (0-255) of a thumbnail below which its image is blank."""
QUALITY = 85


def thumbnail_path(image: Path, out: Path) -> Path:
    rel = Path(os.path.relpath(image, out / "images"))
    if rel.parts[0] == os.pardir:
        rel = Path(image.name)
    return out / "thumbs" / rel.with_suffix(".jpg")


def _is_fresh(thumb: Path, image: Path) -> bool:
    return thumb.is_file() and thumb.stat().st_mtime_ns >= image.stat().st_mtime_ns


def is_blank(image: Image.Image) -> bool:
    """Whether ``image``'s pixels are near-constant."""
    return ImageStat.Stat(image.convert("L")).stddev[0] < BLANK_STD


def thumbnail(image: Path, out: Path, size: int) -> tuple[Path, bool]:
    """The thumbnail of ``image`` (at most ``size`` pixels a side; made if missing or stale) and
    whether the image is blank."""
    thumb = thumbnail_path(image, out)
    if _is_fresh(thumb, image):
        with Image.open(thumb) as small:
            return thumb, is_blank(small)
    with Image.open(image) as im:
        small = ImageOps.contain(im.convert("RGB"), (size, size))
    atomic_write(thumb, lambda tmp: small.save(tmp, format="JPEG", quality=QUALITY))
    return thumb, is_blank(small)


def add_thumbnails(records: list[dict], out: Path, size: int) -> list[dict]:
    """``records`` with ``thumb`` (its thumbnail's path) and ``blank`` added."""
    made = []
    for r in records:
        thumb, blank = thumbnail(Path(r["path"]), out, size)
        made.append({**r, "thumb": thumb, "blank": blank})
    return made
