"""Damaging real model files the way downloads, diverged training runs and hostile uploads do."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import safetensors
import safetensors.torch
import torch

from adapters.encoders.single_file import PACK_KEY


def rewrite_safetensors(path: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> Path:
    """Replace every tensor ``t`` named ``k`` in a safetensors file by ``change(k, t)``, keeping its header."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: change(k, f.get_tensor(k)) for k in f.keys()}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


def _poisoned(tensor: torch.Tensor, value: float, everywhere: bool = False) -> torch.Tensor:
    tensor = torch.full_like(tensor, value) if everywhere else tensor.clone()
    tensor.view(-1)[3] = value
    return tensor


def poison_safetensors(path: Path, key: str, value: float, everywhere: bool = False) -> Path:
    """Set one value of the tensor ``key`` (or all of them) in a safetensors file."""
    return rewrite_safetensors(path, lambda k, t: _poisoned(t, value, everywhere) if k == key else t)


def poison_pickle(path: Path, key: str, value: float) -> Path:
    """Set one value of the tensor ``key`` in a pickled state dict."""
    state = torch.load(path, weights_only=True)
    state[key] = _poisoned(state[key], value)
    torch.save(state, path)
    return path


def repack(src: Path, dest: Path, edit: Callable[[dict], dict | str]) -> Path:
    """A copy of the packed language CLIP ``src`` whose header is ``edit(header)``: a dict, or raw text."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()[PACK_KEY])
    new = edit(header)
    safetensors.torch.save_file(tensors, str(dest), metadata={
        "format": "pt", PACK_KEY: new if isinstance(new, str) else json.dumps(new)})
    return dest


def with_member(name: str, text: str) -> Callable[[dict], dict]:
    """A header edit adding the packed file ``name``."""
    return lambda header: {**header, "files": {**header["files"], name: {"text": text}}}


class _ZerosDeflater:
    """Deflates ``data`` then zero chunks of one size, by repeating one compressed chunk (a full flush
    ends each, so copies chain): gigabytes of zeros deflate in a second."""

    def __init__(self, chunk: bytes):
        import zlib

        self._zlib, self._chunk = zlib, chunk
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        self._block = None

    def compress(self, data: bytes) -> bytes:
        if data is not self._chunk:
            return self._deflate.compress(data) + self._deflate.flush(self._zlib.Z_FULL_FLUSH)
        if self._block is None:
            self._block = self._deflate.compress(data) + self._deflate.flush(self._zlib.Z_FULL_FLUSH)
        return self._block

    def flush(self) -> bytes:
        return self._deflate.flush()


def zip_bomb(src: Path, dest: Path, record: str, size: int) -> Path:
    """A copy of the zip-format torch checkpoint ``src`` whose record ending in ``record`` (``data.pkl``,
    ``data/0``) is padded with zeros to ``size`` bytes (a multiple of 64 MiB, or less than that) and
    deflated: a few MB on disk, ``size`` once read. Built without holding ``size`` bytes."""
    import zipfile

    chunk = bytes(min(size, 64 * 2**20))
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if not info.filename.endswith(record):
                new.writestr(info, data)
                continue
            with new.open(info.filename, "w", force_zip64=True) as out:
                out._compressor = _ZerosDeflater(chunk)  # zipfile's own deflater takes a second a 100 MB
                out.write(data)
                for _ in range((size - len(data)) // len(chunk)):
                    out.write(chunk)
                out.write(bytes((size - len(data)) % len(chunk)))
    return dest


def edit_safetensors_header(path: Path, edit: Callable[[dict], object]) -> Path:
    """Rewrite the JSON header of a safetensors file in place as ``edit(header)`` (data kept)."""
    import struct

    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(edit(json.loads(raw[8:8 + size]))).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + size:])


BACKTRACKING_SPLIT = r"(?:.|..)*(?<=\x00)"
"""A pre-tokenizer regex whose search backtracks exponentially: past about 30 characters Oniguruma
gives up ("retry-limit-in-match over") and the tokenizers library panics."""
PANIC_PROMPT = "一只红色的猫坐在桌子上，油画风格的城市夜景"
"""A Chinese prompt (21 characters, 60 after BERT's spacing of CJK characters) that makes a tokenizer
with :data:`BACKTRACKING_SPLIT` panic."""


def with_panicking_tokenizer(src: Path, dest: Path) -> Path:
    """A copy of the Hugging Face model folder ``src`` whose ``tokenizer.json`` splits on
    :data:`BACKTRACKING_SPLIT` before its own pre-tokenizer (short prompts still tokenize as before),
    loaded as a plain ``PreTrainedTokenizerFast``."""
    shutil.copytree(src, dest)
    tokenizer = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))
    split = {"type": "Split", "pattern": {"Regex": BACKTRACKING_SPLIT}, "behavior": "Isolated", "invert": False}
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, tokenizer["pre_tokenizer"]]}
    (dest / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    edit_json(dest / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    return dest


def edit_json(path: Path, **fields) -> Path:
    """Set ``fields`` in the JSON object file ``path``."""
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **fields}), encoding="utf-8")
    return path


UNREADABLE_LINKS = {"self-loop": "self-loop", "org-with-loop/loop": "loop"}
"""Links in a model folder that cannot be followed (errno 40, too many levels of symbolic links): name -> target."""


def with_adapter_metadata(path: Path, edit: Callable[[str], str]) -> Path:
    """Rewrite the ``pea_adapter`` metadata text of an adapter file as ``edit(text)``."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    safetensors.torch.save_file(tensors, str(path), metadata={**metadata, "pea_adapter": edit(metadata["pea_adapter"])})
    return path
