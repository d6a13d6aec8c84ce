"""The pack's model folders, registered with ComfyUI's ``folder_paths`` and listed for the UI."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

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


_reported: set[tuple[str, str]] = set()
"""Unreadable listing entries already logged (path, error): a refresh does not log them again."""


def _entries(folder: str) -> Iterator[tuple[os.DirEntry, bool, bool]]:
    """``(entry, is a file, is a folder)`` for the entries of ``folder`` that can be read, hidden ones
    left out. An entry that cannot (a symlink loop, a folder without read permission) is skipped
    and logged once: one bad entry must not take the nodes off the menu. (A dangling link is
    neither a file nor a folder: it is not listed.)"""
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        _report(folder, e)
        return
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        try:
            is_file, is_dir = entry.is_file(), entry.is_dir()
        except OSError as e:
            _report(entry.path, e)
            continue
        if is_dir and not os.access(entry.path, os.R_OK | os.X_OK):
            _report(entry.path, PermissionError("cannot be read"))
            continue
        yield entry, is_file, is_dir


def _report(path: str, error: OSError) -> None:
    key = (path, f"{type(error).__name__}: {error.strerror or error}")
    if key not in _reported:
        _reported.add(key)
        logging.warning("PEA: skipping %s in the language_clip listing (%s)", path, key[1])


def _is_model(entry: os.DirEntry, is_file: bool, is_dir: bool) -> bool:
    """A packed single file, or a folder holding a model."""
    if is_file:
        return entry.name.endswith(SINGLE_FILE_SUFFIX)
    return is_dir and is_encoder_folder(Path(entry.path))


def list_language_clips() -> list[str]:
    """Model folders and single files under the language_clip folders: ``name`` or ``org/name``.

    Top-level folders are listed even when empty or incomplete, so that picking one gives the
    loader's message about what is missing rather than an empty dropdown. Entries that cannot be
    read are left out (and logged once).
    """
    names = set()
    for base in folder_paths.get_folder_paths(LANGUAGE_CLIP):
        if not os.path.isdir(base):
            continue
        for entry, is_file, is_dir in _entries(base):
            if is_file and entry.name.endswith(SINGLE_FILE_SUFFIX):
                names.add(entry.name)
            elif is_dir:
                nested = [sub.name for sub, *kind in _entries(entry.path) if _is_model(sub, *kind)]
                if nested and not is_encoder_folder(Path(entry.path)):
                    names.update(f"{entry.name}/{sub}" for sub in nested)
                else:
                    names.add(entry.name)
    return sorted(names)


def model_name_parts(name: object) -> list[str] | None:
    """The folders and file of a model name as the listing writes them (``name`` or ``org/name``,
    parts joined by '/'), or None for anything else: an absolute path, a drive, '..', '.', empty
    parts, backslashes, hidden entries."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    parts = name.split("/")
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or any(not p or p.startswith(".") for p in parts):
        return None
    return parts


def find_language_clip(name: str) -> str:
    """The full path of a language_clip entry, resolved only inside the registered language_clip
    folders (models/language_clip and extra_model_paths.yaml entries); raises naming the folders
    searched.

    A name that is not a plain relative name (absolute, '..', a drive, a backslash) is refused with
    one message, before anything is looked up: whether such a path exists is never revealed. Links
    placed inside a language_clip folder are followed, as ComfyUI follows them for its own models:
    only the people who manage the folder can place them.
    """
    parts = model_name_parts(name)
    if parts is None:
        raise FileNotFoundError(
            f"Language CLIP {str(name)[:200]!r} is not a model name: pick one from the list (a folder or "
            f".safetensors file in models/language_clip or a folder added in extra_model_paths.yaml).")
    for base in folder_paths.get_folder_paths(LANGUAGE_CLIP):
        path = os.path.join(base, *parts)
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
