"""Reading the files of a model folder that may come from anyone: regular files only (never a
device, a named pipe or a folder), sizes bounded before reading, names that stay in the folder."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import EncoderLoadError

SMALL_FILE_LIMIT = 32 * 2**20
"""Largest config or tokenizer file read (a multilingual tokenizer.json is about 17 MB)."""


def regular_file(path: Path) -> os.stat_result:
    """``path``'s status (links followed); EncoderLoadError unless it is a regular file."""
    try:
        status = path.stat()
    except OSError as e:
        raise EncoderLoadError(f"{path} cannot be read: {e.strerror or e}") from e
    if not stat.S_ISREG(status.st_mode):
        raise EncoderLoadError(f"{path} is not a regular file (a device, a pipe or a folder?); refused")
    return status


def read_small_file(path: Path, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of the regular file ``path``, refused (EncoderLoadError) beyond ``limit`` bytes."""
    if regular_file(path).st_size > limit:
        raise EncoderLoadError(f"{path} is larger than {limit // 2**20} MiB, more than a config or tokenizer "
                               f"file holds; refused")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise EncoderLoadError(f"{path} cannot be read: {e.strerror or e}") from e
    if len(data) > limit:
        raise EncoderLoadError(f"{path} grew beyond {limit // 2**20} MiB while read; refused")
    return data


def stays_in(path: Path, folder: Path) -> bool:
    """Whether ``path``, its links followed, lies in ``folder``; in a snapshot folder of the Hugging
    Face cache (``models--org--name/snapshots/<hash>``), also in that model's ``blobs`` folder, where
    the cache's links point."""
    folder = folder.resolve()
    roots = [folder, folder.parent.parent / "blobs"] if folder.parent.name == "snapshots" else [folder]
    target = path.resolve()
    return any(target.is_relative_to(root) for root in roots)


def plain_name(name: object) -> bool:
    """Whether ``name`` is a file name without any folder part (``model-00001-of-00002.safetensors``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")

