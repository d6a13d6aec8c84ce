"""Extract the text encoder of a large encoder-decoder checkpoint (byT5-xxl, mT5, umT5) into one
packed language-CLIP file, without ever holding the checkpoint in memory.

    python -m adapters.encoders.extract google-byt5-xxl/ models/language_clip/byt5-xxl-encoder.safetensors

The source folder holds the Hugging Face files (config.json, tokenizer files, model.safetensors
or a sharded model.safetensors.index.json). The encoder's tensors (``encoder.*`` and
``shared.weight``) are copied as raw byte ranges, in chunks, straight from the source files into
the new safetensors file; its header also carries the config and tokenizer, so "Load Language
CLIP" reads it as a single file (see :mod:`adapters.encoders.single_file`).
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

from ..errors import EncoderLoadError
from ..file_format import atomic_write
from .single_file import PACK_KEY, PACK_VERSION, embed_file, folder_to_file_cli

CHUNK = 64 * 2**20
ENCODER_PREFIXES = ("encoder.", "shared.")
SMALL_FILE_SUFFIXES = (".json", ".model", ".txt")


def read_header(path: Path) -> tuple[int, dict]:
    """(byte offset of the data section, header dict) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


def source_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise EncoderLoadError(
        f"{folder} has no model.safetensors or model.safetensors.index.json; only safetensors checkpoints "
        f"can be streamed (convert pickled weights first)")


def extract_encoder(folder: str | os.PathLike, dest: str | os.PathLike, context_length: int | None = None) -> Path:
    """Write the encoder of the checkpoint in ``folder`` as a packed single file at ``dest``."""
    folder, dest = Path(folder), Path(dest)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in ("t5", "mt5", "umt5"):
        raise EncoderLoadError(f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not a T5-family model")
    byt5 = config.get("vocab_size") == 384
    tensors, layout, offset = [], {}, 0
    for path in source_files(folder):
        start, header = read_header(path)
        for key, meta in header.items():
            if key == "__metadata__" or not key.startswith(ENCODER_PREFIXES):
                continue
            begin, end = meta["data_offsets"]
            tensors.append((path, start + begin, end - begin))
            layout[key] = {"dtype": meta["dtype"], "shape": meta["shape"], "data_offsets": [offset, offset + end - begin]}
            offset += end - begin
    if not layout:
        raise EncoderLoadError(f"no encoder tensors (encoder.*, shared.weight) in {folder}")
    files = {p.name: embed_file(p) for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix in SMALL_FILE_SUFFIXES and not p.name.endswith(".index.json")}
    info = {"format_version": PACK_VERSION, "kind": "t5", "name": folder.name,
            "context_length": context_length or (256 if byt5 else 77), "attention_mask": not byt5,
            "weights": "model.safetensors", "files": files}
    header = json.dumps({"__metadata__": {"format": "pt", PACK_KEY: json.dumps(info, ensure_ascii=False)}, **layout},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            for path, start, length in tensors:
                with open(path, "rb") as src:
                    src.seek(start)
                    while length:
                        chunk = src.read(min(CHUNK, length))
                        out.write(chunk)
                        length -= len(chunk)

    atomic_write(dest, write)
    return dest


def main(argv: list[str] | None = None) -> int:
    def extract(folder: Path, dest: Path, context_length: int | None) -> str:
        extract_encoder(folder, dest, context_length)
        return f"wrote {dest}"

    return folder_to_file_cli(argv, "python -m adapters.encoders.extract", __doc__, extract)


if __name__ == "__main__":
    sys.exit(main())
