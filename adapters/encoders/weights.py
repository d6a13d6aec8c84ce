"""Reading checkpoint tensors from local files: safetensors, sharded indexes, safe pickles."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ..errors import EncoderLoadError

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json",
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
)


def read_pickle(path: Path, mmap: bool = False) -> dict:
    """The state dict in a pickle, only through ``weights_only=True``. With ``mmap`` the tensors
    map the file instead of being read (only the zip format of torch >= 1.6 can be mapped)."""
    if mmap and not zipfile.is_zipfile(path):
        raise EncoderLoadError(
            f"{path} is a legacy PyTorch pickle (not the zip format of torch 1.6 and later): it cannot be "
            f"memory-mapped, so its tensors cannot be streamed. Re-save it in the zip format under the same "
            f"name (python -c \"import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True), "
            f"sys.argv[2])\" OLD NEW, which holds the whole checkpoint in memory once) or use a safetensors "
            f"copy of the checkpoint.")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise EncoderLoadError(f"{path} holds Python objects besides tensors; refused for safety") from e
    except Exception as e:  # truncated zip, bad header, ...: all mean a damaged file
        raise EncoderLoadError(f"{path} cannot be read (truncated or damaged?): {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise EncoderLoadError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one file; pickles only through ``weights_only=True``."""
    if path.suffix not in (".safetensors", ".sft"):
        return read_pickle(path)
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as e:
        raise EncoderLoadError(f"{path} cannot be read (truncated or damaged?): {e}") from e


def read_folder_weights(folder: Path, names: tuple[str, ...] = WEIGHT_FILES) -> dict[str, torch.Tensor]:
    """The tensors of the first weight file found in ``folder`` (sharded indexes followed)."""
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_tensor_file(folder / shard))
            return state
        return read_tensor_file(path)
    raise EncoderLoadError(f"No weights in {folder}: expected one of {', '.join(names)}")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load ``state`` into ``model``; every parameter must be covered (tied copies excepted)."""
    result = model.load_state_dict(state, strict=False)
    loaded = {model.state_dict()[k].data_ptr() for k in state if k in model.state_dict()}
    missing = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded]
    if missing:
        raise EncoderLoadError(
            f"Weights in {where} do not fit the model its config describes: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep keys under ``prefix`` (without it) when any exist; else return ``state`` as is."""
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
