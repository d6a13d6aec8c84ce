"""Reading a PyTorch pickle checkpoint safely: ``weights_only=True``, and sizes bounded first.

A zip-format checkpoint (``torch.save`` since torch 1.6) is a zip archive: ``data.pkl`` (the
pickle) and one record per tensor storage under ``data/``. ``torch.load`` reads each record into
memory at the size the archive declares, and a record may be compressed: a 3 MB file can declare
a 3 GB ``data.pkl`` (a decompression bomb). So the declared sizes are checked before ``torch.load``:
``data.pkl`` and every other non-storage record at most :data:`RECORD_LIMIT`, and the tensor
storages together at most :data:`STORAGE_EXPANSION` times the file's size (torch writes them
uncompressed, so a real checkpoint's storages never exceed the file).

A legacy pickle (before torch 1.6) is not compressed: its pickle is part of the file, and each
storage is read from the bytes present (torch checks the size the file records against the one the
pickle declares), so what it makes in memory is bounded by the file's size; it is read as is.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

RECORD_LIMIT = 64 * 2**20
"""Largest ``data.pkl`` (or other non-storage record) read: a state dict of 100k tensors pickles
to about 20 MB."""
STORAGE_EXPANSION = 4
"""The tensor storages may declare at most this many times the file's size, uncompressed."""


def check_zip_sizes(path: Path, error: type[Exception], label: str) -> None:
    """Refuse (``error``) a zip-format checkpoint whose declared record sizes exceed the bounds above."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise error(f"{label} cannot be read (truncated or damaged?): {e}") from e
    storages = 0
    for record in records:
        if record.filename.split("/")[1:2] == ["data"]:
            storages += record.file_size
        elif record.file_size > RECORD_LIMIT:
            raise error(f"{label} is refused: its record {record.filename!r} declares {record.file_size} bytes "
                        f"uncompressed (at most {RECORD_LIMIT} are read; a decompression bomb?)")
    if storages > STORAGE_EXPANSION * size:
        raise error(f"{label} is refused: its tensors declare {storages} bytes uncompressed, more than "
                    f"{STORAGE_EXPANSION}x the file's {size} bytes (a decompression bomb?)")


def load_pickle(path: str | Path, error: type[Exception], label: str | None = None, mmap: bool = False) -> object:
    """What a pickle checkpoint holds, read with ``torch.load(weights_only=True)`` on the CPU after
    :func:`check_zip_sizes`. Anything wrong is raised as ``error`` with ``label`` (default: the path)
    naming the file. With ``mmap`` a zip-format file's tensors map the file instead of being read."""
    path = Path(path)
    label = label or str(path)
    if zipfile.is_zipfile(path):
        check_zip_sizes(path, error, label)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise error(f"{label} holds Python objects besides tensors; refused for safety (only plain state "
                    f"dicts are loaded, with weights_only=True)") from e
    except Exception as e:  # truncated zip, bad header, failed allocation, ...: all mean a damaged file
        raise error(f"{label} cannot be read (truncated or damaged?): {e}") from e
