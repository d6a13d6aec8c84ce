"""The pack's model folders, registered with ComfyUI's ``folder_paths`` and listed for the UI."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..adapters import ADAPTER_SUFFIXES
from ..adapters.encoders import is_encoder_folder

LANGUAGE_CLIP = "language_clip"
SINGLE_FILE_SUFFIX = ".safetensors"
PEA_ADAPTERS = "pea_adapters"


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Add ``models/<name>``, keeping paths users set in extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, name)
    paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)


def register_folders() -> None:
    register_model_folder(LANGUAGE_CLIP, set())
    register_model_folder(PEA_ADAPTERS, set(ADAPTER_SUFFIXES))


def searched(name: str) -> str:
    """The folders ComfyUI searches for ``name``, for error messages."""
    paths = folder_paths.get_folder_paths(name)
    return ", ".join(f"{p}{'' if os.path.isdir(p) else ' (missing)'}" for p in paths)


def _is_single_file(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.endswith(SINGLE_FILE_SUFFIX)


def list_language_clips() -> list[str]:
    """Model folders and single files under the language_clip folders: ``name`` or ``org/name``.

    Top-level folders are listed even when empty or incomplete, so that picking one gives the
    loader's message about what is missing rather than an empty dropdown.
    """
    names = set()
    for base in folder_paths.get_folder_paths(LANGUAGE_CLIP):
        if not os.path.isdir(base):
            continue
        for entry in os.scandir(base):
            if entry.name.startswith("."):
                continue
            if _is_single_file(entry):
                names.add(entry.name)
            elif entry.is_dir():
                nested = [sub.name for sub in os.scandir(entry.path)
                          if _is_single_file(sub) or (sub.is_dir() and is_encoder_folder(Path(sub.path)))]
                if nested and not is_encoder_folder(Path(entry.path)):
                    names.update(f"{entry.name}/{sub}" for sub in nested)
                else:
                    names.add(entry.name)
    return sorted(names)


def find_language_clip(name: str) -> str:
    """The full path of a language_clip entry; raises naming the folders searched."""
    for base in folder_paths.get_folder_paths(LANGUAGE_CLIP):
        path = os.path.join(base, os.path.normpath(name))
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Language CLIP '{name}' not found. Searched: {searched(LANGUAGE_CLIP)}. Put the model "
        f"folder there (see the pack's README, 'Model files'), then press R to refresh.")


def find_adapter(name: str) -> str:
    """The full path of a pea_adapters file; raises naming the folders searched."""
    path = folder_paths.get_full_path(PEA_ADAPTERS, name)
    if path is None:
        raise FileNotFoundError(
            f"PEA adapter '{name}' not found. Searched: {searched(PEA_ADAPTERS)}. Put the adapter "
            f"file there (.safetensors or the official pytorch_model.bin), then press R to refresh.")
    return path
