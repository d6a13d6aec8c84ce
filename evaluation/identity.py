"""What a model file is, by its content: sha256 hashes, cached so a rerun does not rehash gigabytes.

A file is identified by the sha256 of its bytes. A folder (a language CLIP, a translation model,
a scoring CLIP) by the hashes of the files its loaders read: every file below it whose name ends
in one of :data:`MODEL_FILE_SUFFIXES` (configs, weights, tokenizer and vocabulary files), hidden
files and folders left out (a README or a ``.cache`` folder changes nothing). Where the files are
does not count: a moved folder with the same files is the same model.

Hashes are cached in ``<out>/file_hashes.json`` by resolved path, size and modification time
(``st_mtime_ns``): a file rewritten in place gets a new modification time and is hashed again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from adapters.file_format import atomic_write

from .errors import EvaluationError

MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".model", ".spm", ".txt",
                       ".tiktoken")
CACHE_NAME = "file_hashes.json"


class ContentIds:
    """Content identities of model files and folders, hashed once per size and modification time."""

    def __init__(self, out: Path):
        self.cache_path = Path(out) / CACHE_NAME
        try:
            self.cache: dict = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.cache = {}  # missing or damaged: hash again
        self.unsaved = False

    def sha256(self, path: Path) -> str:
        """The sha256 of ``path``'s bytes, from the cache where its size and mtime are unchanged."""
        key = str(path.resolve())
        stat = path.stat()
        seen = self.cache.get(key)
        if isinstance(seen, dict) and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
            return seen["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        self.cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
        self.unsaved = True
        return digest.hexdigest()

    def of(self, path: Path) -> dict:
        """``{"sha256": ...}`` for a file; ``{"files": {relative path: sha256}}`` for a folder; the
        cache file is written once, after a file or folder with new hashes."""
        path = Path(path)
        if not path.exists():
            raise EvaluationError(f"model file or folder not found: {path}")
        if path.is_file():
            identity = {"sha256": self.sha256(path)}
        else:
            identity = {"files": {rel: self.sha256(path / rel) for rel in model_files(path)}}
        if self.unsaved:
            data = json.dumps(self.cache, indent=1)
            atomic_write(self.cache_path, lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))
            self.unsaved = False
        return identity


def model_files(folder: Path) -> list[str]:
    """The files below ``folder`` a loader reads (see the module's docstring), as sorted relative paths."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files
                  if not f.startswith(".") and f.lower().endswith(MODEL_FILE_SUFFIXES)]
    return sorted(found)
