"""A font for the grids that shows Chinese, Japanese, Korean and Cyrillic prompt text.

Looked up at run time among the fonts the system already has (nothing is shipped or downloaded):
Noto Sans CJK, WenQuanYi, Droid Sans Fallback, Windows' Microsoft YaHei and SimSun, macOS'
PingFang and Hiragino, then DejaVu Sans (Cyrillic, no CJK). Without any, Pillow's default font
is used and a warning says that CJK text will show as boxes.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

FONT_FILES = ("NotoSansCJK-Regular.ttc", "NotoSansCJKsc-Regular.otf", "NotoSansSC-Regular.otf",
              "wqy-microhei.ttc", "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf", "msyh.ttc", "msyh.ttf",
              "simsun.ttc", "PingFang.ttc", "Hiragino Sans GB.ttc", "Arial Unicode.ttf", "DejaVuSans.ttf")
"""In order of preference: the CJK fonts first (all of them also show Cyrillic), DejaVu last."""


def font_folders() -> list[Path]:
    """The usual font folders of Linux, Windows and macOS."""
    home = Path.home()
    folders = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), home / ".local/share/fonts", home / ".fonts",
               Path(os.environ.get("WINDIR", r"C:\Windows")) / "Fonts", Path("/System/Library/Fonts"),
               Path("/Library/Fonts"), home / "Library/Fonts"]
    local = os.environ.get("LOCALAPPDATA")
    if local:
        folders.append(Path(local) / "Microsoft/Windows/Fonts")
    return [f for f in folders if f.is_dir()]


@functools.lru_cache(maxsize=1)
def find_font(folders: tuple[Path, ...] | None = None) -> Path | None:
    """The most preferred of :data:`FONT_FILES` found in ``folders`` (default: :func:`font_folders`)."""
    found: dict[str, Path] = {}
    for folder in folders if folders is not None else font_folders():
        for root, _dirs, files in os.walk(folder):
            for name in files:
                found.setdefault(name, Path(root) / name)
    return next((found[name] for name in FONT_FILES if name in found), None)


def load_font(size: int, folders: tuple[Path, ...] | None = None) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of :func:`find_font` at ``size`` pixels, or Pillow's default with a warning."""
    path = find_font(folders)
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError as e:
            log.warning("could not read the font %s (%s)", path, e)
    log.warning("no font with CJK and Cyrillic found (looked for %s in %s): the grids use Pillow's default font, "
                "in which CJK text shows as boxes", ", ".join(FONT_FILES[:6]),
                ", ".join(map(str, folders if folders is not None else font_folders())))
    return ImageFont.load_default(size)
