"""A language encoder as one ``.safetensors`` file: the text tower's weights, with its config
and tokenizer files carried in the header.

    python -m adapters.encoders.single_file models/language_clip/chinese-clip-vit-huge-patch14 \\
        models/language_clip/chinese-clip-vit-huge-text.safetensors

Packing keeps only the text tower (a two-tower Chinese-CLIP ViT-H shrinks to its BERT), and
records the context length; the files it embeds are the ones transformers saves for the loaded
tower, never other files of the folder, and the packed file is loaded back before it takes its name. Loading reads the file where it lies: the weights through
``safe_open`` (lazily, as transformers reads a folder), the model config from the header. Only the
tokenizer's files are written, into a private temporary folder, after every member name in the
header has been checked: transformers builds tokenizers from files (their class, special and added
tokens), and a tokenizer rebuilt in memory from ``tokenizer.json`` gives other ids for some
classes (T5, XLM-R) than the same files loaded as a folder.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import safetensors
import safetensors.torch
import torch

from ..errors import EncoderLoadError, PEAError, json_type
from ..file_format import atomic_write
from ..json_text import parse_json, parse_json_object
from .base import LanguageEncoder, check_context_length
from .folder_files import read_small_file
from .hf_text import HF_KINDS, check_text_config, hf_encoder_from_parts, load_tokenizer
from .open_clip_text import CONFIG_NAME as OPEN_CLIP_CONFIG, build_open_clip_encoder, model_config
from .weights import pick, under_prefix

PACK_KEY = "pea_language_clip"
PACK_VERSION = 1


def embed_file(path: Path) -> dict:
    """A small file as JSON (:func:`embed_bytes`). Only a regular file of at most
    :data:`~.folder_files.SMALL_FILE_LIMIT` bytes is read."""
    return embed_bytes(read_small_file(path))


def embed_bytes(data: bytes) -> dict:
    """A small file's bytes as JSON: its text, or base64 for binary files (sentencepiece models)."""
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
    return write_loadable(dest, lambda tmp: safetensors.torch.save_file(
        state, tmp, metadata={"format": "pt", PACK_KEY: json.dumps(info, ensure_ascii=False)}),
        next(encoder.model.parameters()).dtype)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' progress bars off for the ``with`` block (a check, not a load the user asked for)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def write_loadable(dest: Path, write: Callable[[str], object], dtype: torch.dtype) -> Path:
    """Write a packed file atomically, loaded back first (in ``dtype``) through the loader "Load
    Language CLIP" uses: a file that would not load is refused (EncoderLoadError), nothing is left."""
    from . import load_language_encoder

    def write_and_load(tmp: str) -> None:
        write(tmp)
        try:
            with _quiet_progress():
                load_language_encoder(tmp, dtype=dtype)
        except PEAError as e:
            reason = str(e).replace(tmp, dest.name)
            raise EncoderLoadError(f"{dest} was not written: it would not load ({reason})") from e

    return atomic_write(dest, write_and_load)


MEMBER_PART = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_-])?")
"""One part of a member name: letters, digits, '_', '-' and '.', not starting or ending with a dot."""
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def check_member_name(name: object, where: Path) -> str:
    """``name`` if it is a plain relative POSIX path (``tokenizer.json``, ``text_tower/vocab.txt``);
    anything that could leave a folder or mean something else on some system is refused."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or not all(MEMBER_PART.fullmatch(p) and p.split(".")[0].upper() not in WINDOWS_DEVICES
                            for p in parts):
        raise EncoderLoadError(
            f"{where} carries a file named {name!r}: a packed language CLIP may only name plain files inside "
            f"its folder (letters, digits, '_', '-', '.', and '/' between folders; no '..', absolute paths, "
            f"drive letters or backslashes). The file is refused.")
    return name


@dataclass(frozen=True)
class Pack:
    """What a packed file's header says: its kind, name, context length and small files."""

    path: Path
    kind: str
    name: str
    context_length: int
    files: dict[str, bytes]
    """Member name (checked by :func:`check_member_name`) -> content."""

    def json(self, member: str) -> dict:
        """A member holding a JSON object (a config)."""
        if member not in self.files:
            raise EncoderLoadError(f"{self.path} carries no {member} in its header (packed incompletely?)")
        return parse_json_object(self.files[member], f"{self.path} (its {member})")

    @contextlib.contextmanager
    def folder(self, folder: str = "") -> Iterator[Path]:
        """The members directly in ``folder`` ("" for the top), written into a private temporary folder."""
        prefix = f"{folder}/" if folder else ""
        members = {n[len(prefix):]: data for n, data in self.files.items()
                   if n.startswith(prefix) and "/" not in n[len(prefix):]}
        with tempfile.TemporaryDirectory(prefix="pea_language_clip_") as tmp:
            for name, data in members.items():
                with open(os.path.join(tmp, name), "xb") as f:
                    f.write(data)
            yield Path(tmp)


def _member_bytes(name: str, content: object, where: Path) -> bytes:
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"].encode("utf-8")
    if isinstance(content, dict) and isinstance(content.get("base64"), str):
        with contextlib.suppress(binascii.Error):
            return base64.b64decode(content["base64"], validate=True)
    raise EncoderLoadError(f"{where}: header field 'files.{name}' is not {{\"text\": ...}} or valid {{\"base64\": ...}}")


def _header_field(info: dict, key: str, valid, expected: str, where: Path):
    value = info.get(key)
    if not valid(value):
        raise EncoderLoadError(f"{where}: header field '{key}' is {value!r}, expected {expected}")
    return value


def read_pack(path: Path) -> Pack:
    """The header of a packed file, every field and member name checked."""
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
    info = parse_json(header[PACK_KEY], f"{path}: its header '{PACK_KEY}'", EncoderLoadError)
    if not isinstance(info, dict):
        raise EncoderLoadError(f"{path}: its header '{PACK_KEY}' is a JSON {json_type(info)}, expected an object")
    version = _header_field(info, "format_version", lambda v: type(v) is int, "a number", path)
    if version > PACK_VERSION:
        raise EncoderLoadError(f"{path} was packed by a newer version of the pack; update it")
    kinds = ("open_clip", *(k.kind for k in HF_KINDS))
    kind = _header_field(info, "kind", lambda v: v in kinds, f"one of {', '.join(kinds)}", path)
    name = _header_field(info, "name", lambda v: v is None or isinstance(v, str), "a string", path)
    context = check_context_length(info.get("context_length"), f"{path}: header field 'context_length'")
    files = _header_field(info, "files", lambda v: isinstance(v, dict), "an object of packed files", path)
    members = {check_member_name(n, path): _member_bytes(n, content, path) for n, content in files.items()}
    folded = {}
    for member in members:
        if folded.setdefault(member.casefold(), member) != member:
            raise EncoderLoadError(f"{path} carries both {folded[member.casefold()]!r} and {member!r}, which are "
                                   f"the same file on Windows and macOS. The file is refused.")
    return Pack(path, kind, name or path.stem, context, members)


def load_packed(path: Path, context_length: int | None = None, dtype: torch.dtype = torch.float32) -> LanguageEncoder:
    """The language encoder in a packed file (weights in the compute ``dtype``, open_clip in fp32)."""
    pack = read_pack(path)
    context_length = context_length or pack.context_length
    if pack.kind == "open_clip":
        cfg = model_config(pack.json(OPEN_CLIP_CONFIG), f"{path} (its {OPEN_CLIP_CONFIG})")
        towers = sorted(n.rsplit("/", 1)[0] for n in pack.files if n.count("/") == 1 and n.endswith("/config.json"))
        if not towers:
            raise EncoderLoadError(f"{path} carries no text tower config (TOWER/config.json) in its header")
        with pack.folder(towers[0]) as tower_dir, _weights(path) as tensors:
            state = pick(tensors, under_prefix(tensors.keys(), "text."))
            encoder = build_open_clip_encoder(cfg, tower_dir, state, path, context_length=context_length,
                                              tower_where=f"{path} (its {towers[0]}/)")
    else:
        config = pack.json("config.json")
        check_text_config(config, f"{path} (its config.json)")  # named before the tokenizer reads the config
        with pack.folder() as folder, _weights(path) as tensors:
            tokenizer = load_tokenizer(folder, path)
            encoder = hf_encoder_from_parts(config, tokenizer, tensors, name=pack.name, path=path,
                                            context_length=context_length, dtype=dtype)
    encoder.name = pack.name
    return encoder


@contextlib.contextmanager
def _weights(path: Path) -> Iterator[safetensors.safe_open]:
    """The packed file's tensors, read one by one where they lie."""
    try:
        handle = safetensors.safe_open(str(path), framework="pt")
    except (safetensors.SafetensorError, OSError) as e:
        raise EncoderLoadError(f"{path} is not a readable safetensors file (truncated or damaged?): {e}") from e
    with handle as f:
        yield f


class _OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other error of the packing tools."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, not {text!r}")
    return int(text)


def folder_to_file_cli(argv: list[str] | None, prog: str, doc: str, action) -> int:
    """The command line shared by the packing tools: FOLDER DEST [--context-length N];
    ``action(folder, dest, context_length)`` returns the line to print."""
    p = _OneLineErrors(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the model folder")
    p.add_argument("dest", type=Path, help="the .safetensors file to write (put it in models/language_clip)")
    p.add_argument("--context-length", type=positive_int, help="padded length to record (default: the backend's)")
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
