"""Extract the text encoder of a large encoder-decoder checkpoint (byT5-xxl, mT5, umT5) into one
packed language-CLIP file, without ever holding the checkpoint in memory.

    python -m adapters.encoders.extract google-byt5-xxl/ models/language_clip/byt5-xxl-encoder.safetensors

The source folder holds the Hugging Face files (config.json, tokenizer files, and the weights:
model.safetensors, pytorch_model.bin, or a sharded model.safetensors.index.json /
pytorch_model.bin.index.json). The encoder's tensors (``encoder.*`` and ``shared.weight``) are
copied as raw byte ranges, in chunks, straight from the source files into the new safetensors
file, keeping their names and dtypes; its header also carries the config and tokenizer (only the
files named in :data:`EMBEDDED_FILES`, regular, bounded in size, not linking out of the folder), so
"Load Language CLIP" reads it as a single file (see :mod:`adapters.encoders.single_file`). Before the
file takes its name it is loaded back through that node's loader (which holds the encoder once, in
its stored dtype): a file that would not load is refused and removed.

Pickles (zip format) are opened with ``torch.load(weights_only=True, mmap=True)``: that reads
the tensors' names, dtypes and shapes but none of their bytes; where each tensor's bytes sit in
the file is found from the zip records, and they are copied like safetensors ranges. (Copying
through the memory map itself would leave every page read resident: the process would grow by
the encoder's size.)
"""
from __future__ import annotations

import json
import os
import struct
from collections import Counter
import sys
import zipfile
from pathlib import Path
from typing import Iterator, Union

import safetensors
import torch

from ..errors import EncoderLoadError
from ..json_text import parse_json_object
from .folder_files import read_small_file, stays_in
from .single_file import PACK_KEY, PACK_VERSION, embed_bytes, folder_to_file_cli, write_loadable
from .weights import read_pickle, weight_files

CHUNK = 64 * 2**20
ENCODER_PREFIXES = ("encoder.", "shared.")
EMBEDDED_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "tokenizer.json", "spiece.model")
"""The files a T5-family encoder's config and tokenizer are read from: nothing else of the folder
is copied into the output."""
HEADER_LIMIT = 100_000_000
"""The largest header the safetensors library reads."""
WEIGHT_SOURCES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")
"""Checked in this order (that of :data:`~.weights.WEIGHT_FILES`)."""
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}

Source = Union[tuple[Path, int, int], torch.Tensor]
"""A tensor's bytes: (file, start, length) in a source file, or a tensor to write out (a strided
view in a pickle, whose bytes are not one range)."""


def read_header(path: Path) -> tuple[int, dict]:
    """(byte offset of the data section, header dict) of a safetensors file, whose header the
    safetensors library has checked first (size, JSON, dtypes, shapes against offsets)."""
    try:
        with safetensors.safe_open(str(path), framework="pt"):
            pass
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise EncoderLoadError(f"{path} is not a readable safetensors file (truncated or damaged?): {e}") from e
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


def source_files(folder: Path) -> list[Path]:
    """The weight files holding the encoder: the one file, or the shards its index names for it."""
    return weight_files(folder, WEIGHT_SOURCES, lambda key: key.startswith(ENCODER_PREFIXES))


def small_files(folder: Path) -> dict[str, bytes]:
    """The config and tokenizer files of ``folder`` to embed (:data:`EMBEDDED_FILES`, where present):
    regular files of bounded size, never a link leading out of the folder."""
    files = {}
    for name in EMBEDDED_FILES:
        path = folder / name
        if not (path.is_symlink() or path.exists()):
            continue
        if not stays_in(path, folder):
            raise EncoderLoadError(f"{path} links outside {folder}; it is not copied into a file people share. "
                                   f"Copy the file itself into the folder.")
        files[name] = read_small_file(path)
    return files


def load_dtype(layout: dict) -> torch.dtype:
    """The floating dtype most of the packed tensors are stored in (float32 if none is)."""
    names = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()
             if dtype in (torch.float32, torch.float16, torch.bfloat16)}
    stored = Counter(names[meta["dtype"]] for meta in layout.values() if meta["dtype"] in names)
    return stored.most_common(1)[0][0] if stored else torch.float32


def safetensors_tensors(path: Path) -> Iterator[tuple[str, str, list[int], Source]]:
    """(key, safetensors dtype, shape, bytes) of each encoder tensor in a safetensors file."""
    start, header = read_header(path)
    for key, meta in header.items():
        if key != "__metadata__" and key.startswith(ENCODER_PREFIXES):
            begin, end = meta["data_offsets"]
            yield key, meta["dtype"], meta["shape"], (path, start + begin, end - begin)


def zip_record_offsets(path: Path) -> dict[int, int]:
    """Byte offset in the file -> size, of each tensor-storage record (``<archive>/data/<key>``)
    of a PyTorch zip checkpoint; torch stores them uncompressed."""
    offsets = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if info.filename.split("/")[1:2] != ["data"] or info.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            offsets[info.header_offset + 30 + name_len + extra_len] = info.file_size
    return offsets


def pickle_tensors(path: Path) -> Iterator[tuple[str, str, list[int], Source]]:
    """(key, safetensors dtype, shape, bytes) of each encoder tensor in a zip-format pickle.

    All storages of a memory-mapped load are slices of one mapping of the whole file, so their
    addresses differ exactly as their records' offsets do; that locates each tensor's bytes.
    """
    state = read_pickle(path, mmap=True)
    records = zip_record_offsets(path)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in state.values() if torch.is_tensor(t) and t.untyped_storage().nbytes()}
    base = min(storages, default=0) - min((o for o, n in records.items() if n), default=0)
    if any(records.get(ptr - base) != nbytes for ptr, nbytes in storages.items()):
        raise EncoderLoadError(f"{path}: the tensors' bytes cannot be located among the file's zip records "
                               f"(not written by torch.save?)")
    for key in sorted(state, key=lambda k: not str(k).startswith("shared.")):  # shared.weight before its tied copies
        tensor = state[key]
        if not isinstance(key, str) or not key.startswith(ENCODER_PREFIXES):
            continue
        if not torch.is_tensor(tensor):
            raise EncoderLoadError(f"{path}: {key} is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise EncoderLoadError(f"{path}: {key} has dtype {tensor.dtype}, which safetensors cannot store")
        length = tensor.numel() * tensor.element_size()
        if not tensor.is_contiguous():
            source: Source = tensor
        elif length:
            ptr = tensor.untyped_storage().data_ptr()
            source = (path, ptr - base + tensor.storage_offset() * tensor.element_size(), length)
        else:
            source = (path, 0, 0)
        yield key, SAFETENSORS_DTYPES[tensor.dtype], list(tensor.shape), source


def copy_bytes(out, source: Source, buffer: memoryview) -> None:
    """Append one tensor's bytes to ``out`` through ``buffer`` (or, for a strided view, that one tensor)."""
    if torch.is_tensor(source):
        out.write(source.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return
    path, start, length = source
    with open(path, "rb") as src:
        src.seek(start)
        while length:
            n = src.readinto(buffer[:min(len(buffer), length)])
            if not n:
                raise EncoderLoadError(f"{path} ends before the tensor data it describes (truncated?)")
            out.write(buffer[:n])
            length -= n


def extract_encoder(folder: str | os.PathLike, dest: str | os.PathLike, context_length: int | None = None) -> Path:
    """Write the encoder of the checkpoint in ``folder`` as a packed single file at ``dest``."""
    folder, dest = Path(folder), Path(dest)
    files = small_files(folder)
    if "config.json" not in files:
        raise EncoderLoadError(f"{folder} has no config.json")
    config = parse_json_object(files["config.json"], folder / "config.json")
    if config.get("model_type") not in ("t5", "mt5", "umt5"):
        raise EncoderLoadError(f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not a T5-family model")
    byt5 = config.get("vocab_size") == 384
    tensors, layout, offset, ranges = [], {}, 0, set()
    for path in source_files(folder):
        read = safetensors_tensors if path.suffix == ".safetensors" else pickle_tensors
        for key, dtype, shape, source in read(path):
            if torch.is_tensor(source):
                length = source.numel() * source.element_size()
            elif source in ranges and source[2]:
                continue  # a tied copy (encoder.embed_tokens of shared.weight): safetensors checkpoints omit it too
            else:
                length = source[2]
                ranges.add(source)
            tensors.append(source)
            layout[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
            offset += length
    if not layout:
        raise EncoderLoadError(f"no encoder tensors (encoder.*, shared.weight) in {folder}")
    info = {"format_version": PACK_VERSION, "kind": "t5", "name": folder.name,
            "context_length": context_length or (256 if byt5 else 77), "attention_mask": not byt5,
            "weights": "model.safetensors", "files": {n: embed_bytes(data) for n, data in files.items()}}
    header = json.dumps({"__metadata__": {"format": "pt", PACK_KEY: json.dumps(info, ensure_ascii=False)}, **layout},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    if len(header) > HEADER_LIMIT:
        raise EncoderLoadError(f"the config and tokenizer files of {folder} make a header of {len(header)} bytes, "
                               f"more than the {HEADER_LIMIT} a safetensors file may hold")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            buffer = memoryview(bytearray(CHUNK))
            for source in tensors:
                copy_bytes(out, source, buffer)

    return write_loadable(dest, write, load_dtype(layout))


def main(argv: list[str] | None = None) -> int:
    def extract(folder: Path, dest: Path, context_length: int | None) -> str:
        extract_encoder(folder, dest, context_length)
        return f"wrote {dest}"

    return folder_to_file_cli(argv, "python -m adapters.encoders.extract", __doc__, extract)


if __name__ == "__main__":
    sys.exit(main())
