"""A language encoder as one ``.safetensors`` file: the text tower's weights, with its config
and tokenizer files carried in the header.

    python -m adapters.encoders.single_file models/language_clip/chinese-clip-vit-huge-patch14 \\
        models/language_clip/chinese-clip-vit-huge-text.safetensors

Packing keeps only the text tower (a two-tower Chinese-CLIP ViT-H shrinks to its BERT), and
records the context length. Loading lays the small files in a temporary folder beside a link
to the file itself, so the folder loaders (and transformers' own key conversions) do the work.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import safetensors
import safetensors.torch

from ..errors import EncoderLoadError, PEAError
from ..file_format import atomic_write
from .base import LanguageEncoder
from .open_clip_text import CONFIG_NAME as OPEN_CLIP_CONFIG

PACK_KEY = "pea_language_clip"
PACK_VERSION = 1


def embed_file(path: Path) -> dict:
    """A small file as JSON: its text, or base64 for binary files (sentencepiece models)."""
    data = path.read_bytes()
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _text_tower_files(encoder: LanguageEncoder, tmp: Path) -> tuple[str, dict]:
    """Write the tower's folder layout into ``tmp``; (weights file name, its tensors)."""
    if encoder.kind == "open_clip":
        shutil.copy(encoder.path / OPEN_CLIP_CONFIG, tmp / OPEN_CLIP_CONFIG)
        tower = tmp / "text_tower"
        encoder.model.config.save_pretrained(str(tower))
        encoder.tokenizer.save_pretrained(str(tower))
        return "open_clip_model.safetensors", {f"text.{k}": v.contiguous()
                                               for k, v in encoder.model.state_dict().items()}
    encoder.model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="1000GB")
    encoder.tokenizer.save_pretrained(str(tmp))
    weights = tmp / "model.safetensors"
    state = safetensors.torch.load_file(str(weights))
    weights.unlink()
    return "model.safetensors", state


def pack_encoder(encoder: LanguageEncoder, dest: str | os.PathLike) -> Path:
    """Write ``encoder`` (text tower, config, tokenizer, context length) as one safetensors file."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        weights_name, state = _text_tower_files(encoder, Path(tmp))
        files = {p.relative_to(tmp).as_posix(): embed_file(p) for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    info = {"format_version": PACK_VERSION, "kind": encoder.kind, "name": encoder.name,
            "context_length": encoder.context_length, "attention_mask": encoder.use_attention_mask,
            "weights": weights_name, "files": files}
    atomic_write(dest, lambda tmp: safetensors.torch.save_file(
        state, tmp, metadata={"format": "pt", PACK_KEY: json.dumps(info, ensure_ascii=False)}))
    return dest


def read_pack_info(path: Path) -> dict:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise EncoderLoadError(f"{path} is not a readable safetensors file (truncated or damaged?): {e}") from e
    if PACK_KEY not in header:
        raise EncoderLoadError(
            f"{path} is a safetensors file without the config and tokenizer of a language encoder. "
            f"Use the model's folder, or pack it into one file with "
            f"'python -m adapters.encoders.single_file FOLDER {path.name}'.")
    info = json.loads(header[PACK_KEY])
    if info.get("format_version", 0) > PACK_VERSION:
        raise EncoderLoadError(f"{path} was packed by a newer version of the pack; update it")
    return info


@contextlib.contextmanager
def unpacked(path: Path) -> Iterator[tuple[Path, dict]]:
    """A temporary model folder for a packed file: its small files plus a link to the weights."""
    info = read_pack_info(path)
    with tempfile.TemporaryDirectory(prefix="pea_language_clip_") as tmp:
        for rel, content in info["files"].items():
            target = Path(tmp) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if "text" in content:
                target.write_text(content["text"], encoding="utf-8")
            else:
                target.write_bytes(base64.b64decode(content["base64"]))
        os.symlink(path.resolve(), Path(tmp) / info["weights"])
        yield Path(tmp), info


def folder_to_file_cli(argv: list[str] | None, prog: str, doc: str, action) -> int:
    """The command line shared by the packing tools: FOLDER DEST [--context-length N];
    ``action(folder, dest, context_length)`` returns the line to print."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the model folder")
    p.add_argument("dest", type=Path, help="the .safetensors file to write (put it in models/language_clip)")
    p.add_argument("--context-length", type=int, help="padded length to record (default: the backend's)")
    args = p.parse_args(argv)
    try:
        print(action(args.folder, args.dest, args.context_length))
    except (PEAError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import load_language_encoder

    def pack(folder: Path, dest: Path, context_length: int | None) -> str:
        encoder = load_language_encoder(folder, context_length=context_length)
        pack_encoder(encoder, dest)
        return f"wrote {dest}: {encoder.describe()}"

    return folder_to_file_cli(argv, "python -m adapters.encoders.single_file", __doc__, pack)


if __name__ == "__main__":
    sys.exit(main())
