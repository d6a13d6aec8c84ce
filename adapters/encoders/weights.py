"""Reading checkpoint tensors from local files: safetensors, sharded indexes, safe pickles.

A checkpoint is opened as a :class:`TensorSource` (tensor names, and a reader for one tensor),
so a loader reads only the tensors it keeps: a two-tower CLIP's text tower without its vision
tower, an encoder-decoder's encoder without its decoder.
"""
from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import safetensors
import torch
from torch import nn

from ..errors import EncoderLoadError, json_type
from ..json_text import parse_json_object
from ..pickle_file import load_pickle
from .folder_files import plain_name, read_small_file, regular_file

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json",
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
)


class TensorSource(Protocol):
    """A checkpoint's tensor names and a reader for one of them (``safetensors.safe_open`` is one)."""

    def keys(self) -> Iterable[str]: ...

    def get_tensor(self, name: str) -> torch.Tensor: ...


def read_pickle(path: Path, mmap: bool = False) -> dict:
    """The state dict in a pickle, only through ``weights_only=True`` (sizes checked first:
    :func:`adapters.pickle_file.load_pickle`). With ``mmap`` the tensors
    map the file instead of being read (only the zip format of torch >= 1.6 can be mapped)."""
    if mmap and not zipfile.is_zipfile(path):
        raise EncoderLoadError(
            f"{path} is a legacy PyTorch pickle (not the zip format of torch 1.6 and later): it cannot be "
            f"memory-mapped, so its tensors cannot be streamed. Re-save it in the zip format under the same "
            f"name (python -c \"import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True), "
            f"sys.argv[2])\" OLD NEW, which holds the whole checkpoint in memory once) or use a safetensors "
            f"copy of the checkpoint.")
    obj = load_pickle(path, EncoderLoadError, mmap=mmap)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise EncoderLoadError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


class Checkpoint:
    """The tensors of one or more checkpoint files by name; a tensor is read when asked for."""

    def __init__(self) -> None:
        self._readers: dict[str, Callable[[str], torch.Tensor]] = {}

    def add(self, names: Iterable[str], read: Callable[[str], torch.Tensor]) -> None:
        self._readers.update(dict.fromkeys(names, read))

    def keys(self) -> Iterable[str]:
        return self._readers.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._readers[name](name)


def weight_files(folder: Path, names: tuple[str, ...] = WEIGHT_FILES,
                 wanted: Callable[[str], bool] = lambda key: True) -> list[Path]:
    """The first weight file found in ``folder``, or the shards its ``.index.json`` names for the
    tensors ``wanted`` keeps. Every file is checked to be a regular file (a shard named
    ``/dev/zero`` or a named pipe is refused, not read)."""
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(index_shards(path, wanted)))
            for shard in shards:
                if not (folder / shard).exists():
                    raise EncoderLoadError(f"{folder / shard} is missing: the weight index {path} names it")
                regular_file(folder / shard)
            return [folder / shard for shard in shards]
        regular_file(path)
        return [path]
    raise EncoderLoadError(f"No weights in {folder}: expected one of {', '.join(names)}")


def index_shards(index: Path, wanted: Callable[[str], bool]) -> list[str]:
    """The shard file names a weight index (``{"weight_map": {tensor: shard}}``) gives the tensors
    ``wanted`` keeps; EncoderLoadError for anything else, or a shard outside the index's folder."""
    config = parse_json_object(read_small_file(index), index)
    weight_map = config.get("weight_map")
    if not isinstance(weight_map, dict):
        raise EncoderLoadError(f"{index} is not a weight index: 'weight_map' is a JSON {json_type(weight_map)}, "
                               f"expected an object of tensor name -> shard file")
    shards = []
    for key, shard in weight_map.items():
        if not plain_name(shard):
            shown = repr(shard[:80]) if isinstance(shard, str) else f"a JSON {json_type(shard)}"
            raise EncoderLoadError(f"{index}: 'weight_map' maps {key[:80]!r} to {shown}, expected the file name "
                                   f"of a shard in the same folder")
        if wanted(key):
            shards.append(shard)
    return shards


@contextlib.contextmanager
def open_checkpoint(folder: Path, names: tuple[str, ...] = WEIGHT_FILES) -> Iterator[Checkpoint]:
    """The checkpoint in ``folder`` as a :class:`TensorSource`, open for the ``with`` block.

    safetensors files are read through ``safe_open`` (one tensor at a time); zip-format pickles are
    memory-mapped (``weights_only=True``), so tensors nobody asks for are never read either.
    """
    checkpoint = Checkpoint()
    with contextlib.ExitStack() as files:
        for path in weight_files(folder, names):
            if path.suffix in (".safetensors", ".sft"):
                try:
                    handle = files.enter_context(safetensors.safe_open(str(path), framework="pt"))
                except (safetensors.SafetensorError, OSError, ValueError) as e:
                    raise EncoderLoadError(f"{path} cannot be read (truncated or damaged?): {e}") from e
                checkpoint.add(handle.keys(), handle.get_tensor)
            else:
                state = read_pickle(path, mmap=zipfile.is_zipfile(path))
                checkpoint.add(state, state.__getitem__)
        yield checkpoint


def pick(tensors: TensorSource, rename: Callable[[str], str | None],
         dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read only the tensors that ``rename`` gives a name (None skips one), under that name;
    floating tensors cast to ``dtype`` one at a time as they are read (an fp32 file loaded in bf16
    never holds its whole fp32 copy)."""
    picked = {}
    for key in tensors.keys():
        name = rename(key)
        if name is not None:
            tensor = tensors.get_tensor(key)
            picked[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return picked


def under_prefix(keys: Iterable[str], prefix: str) -> Callable[[str], str | None]:
    """A ``rename`` for :func:`pick`: keys under ``prefix`` without it, when any exist; else every key."""
    if not any(k.startswith(prefix) for k in keys):
        return lambda key: key
    return lambda key: key[len(prefix):] if key.startswith(prefix) else None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load ``state`` into ``model``; every parameter must be covered (tied copies excepted)."""
    result = model.load_state_dict(state, strict=False)
    loaded = {model.state_dict()[k].data_ptr() for k in state if k in model.state_dict()}
    missing = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded]
    if missing:
        raise EncoderLoadError(
            f"Weights in {where} do not fit the model its config describes: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}")
