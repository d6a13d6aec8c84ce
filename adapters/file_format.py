"""Reading and writing adapter files: our safetensors format and the official pickles.

Our format: a safetensors file whose tensors use the official key names
(``layernorm.*``, ``projector.N.weight``, ``fc.*``) and whose header metadata holds
``pea_adapter`` = JSON (see :mod:`adapters.metadata`). The official release is a
``pytorch_model.bin`` state dict (fp16 or fp32, sometimes with a ``module.`` prefix);
it is opened with ``torch.load(weights_only=True)`` only, its sizes checked first
(:mod:`adapters.pickle_file`).
"""
from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable

import safetensors
import safetensors.torch
import torch

from .errors import AdapterFileError
from .finite import check_finite
from .metadata import METADATA_KEY, AdapterInfo
from .module import AdapterShape, PEAAdapter
from .pickle_file import load_pickle

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ADAPTER_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

_PROJECTOR_KEY = re.compile(r"^projector\.(\d+)\.weight$")
_HEAD_KEYS = {"fc.weight", "fc.bias"}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, header
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(
            f"Adapter file {path} is not a readable safetensors file (truncated or damaged?): {e}") from e


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise AdapterFileError(
            f"Adapter file {path} holds a {type(obj).__name__}, not a state dict "
            f"(a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise AdapterFileError(
            f"Adapter file {path} is not a state dict: entries {bad[:3]} are not tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_shape(state: dict[str, torch.Tensor], where: str = "adapter") -> AdapterShape:
    """Work out the head, depth and widths of an adapter from its tensor shapes."""
    if "layernorm.weight" not in state:
        raise AdapterFileError(
            f"{where} is not a PEA adapter: no 'layernorm.weight' among its keys "
            f"{sorted(state)[:6]}")
    linears = {int(m.group(1)): state[k] for k in state if (m := _PROJECTOR_KEY.match(k))}
    known = {"layernorm.weight", "layernorm.bias", *_HEAD_KEYS} | {f"projector.{i}.weight" for i in linears}
    unknown = sorted(set(state) - known)
    if unknown:
        raise AdapterFileError(f"{where} has keys a PEA adapter does not have: {unknown[:6]}")
    if not linears or sorted(linears) != list(range(0, 2 * len(linears), 2)):
        raise AdapterFileError(
            f"{where}: projector Linear layers must be numbered 0, 2, 4, ... (GELU between); "
            f"found {sorted(linears)}")
    weights = [linears[i] for i in sorted(linears)]
    in_dim = state["layernorm.weight"].shape[0]
    width = in_dim
    for i, w in enumerate(weights):
        if w.ndim != 2 or w.shape[1] != width:
            raise AdapterFileError(
                f"{where}: projector.{2 * i}.weight has shape {tuple(w.shape)}, expected "
                f"(out, {width}) to follow the previous layer")
        width = w.shape[0]
    hidden = tuple(w.shape[0] for w in weights[:-1])
    if "fc.weight" in state:
        fc = state["fc.weight"]
        if "fc.bias" not in state or fc.ndim != 2 or fc.shape[1] != width:
            raise AdapterFileError(
                f"{where}: the head's 'fc' must be a Linear({width}, N) with bias; found "
                f"fc.weight {tuple(fc.shape)}")
        # SDXL widens the trunk (its pooled vector) into the context; FLUX narrows the
        # token context into the pooled vector (widths: families.FAMILIES).
        if fc.shape[0] < width:
            return AdapterShape("flux", in_dim, hidden, width, width, fc.shape[0])
        return AdapterShape("sdxl", in_dim, hidden, width, fc.shape[0], width)
    return AdapterShape("sd15", in_dim, hidden, width, width, None)


def read_adapter(path: str | os.PathLike, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], AdapterInfo]:
    """Read an adapter file (ours or official) into a state dict and its info. NaN or infinite
    weights are refused, and with ``dtype`` (the dtype it will run in) weights beyond its range."""
    state, info = _read_adapter(Path(path))
    check_finite(state.items(), f"Adapter file {path}", AdapterFileError, dtype)
    return state, info


def _read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], AdapterInfo]:
    if not path.is_file():
        raise AdapterFileError(f"Adapter file not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        tensors, header = _read_safetensors(path)
        state = _as_state_dict(tensors, path)
        shape = infer_shape(state, str(path))
        if METADATA_KEY not in header:
            return state, AdapterInfo(shape=shape, source="official")
        info = AdapterInfo.from_json(header[METADATA_KEY], str(path))
        if info.shape != shape:
            raise AdapterFileError(
                f"{path}: metadata describes {info.shape} but the tensors have {shape}")
        return state, info
    if path.suffix.lower() in PICKLE_SUFFIXES:
        state = _as_state_dict(load_pickle(path, AdapterFileError, f"Adapter file {path}"), path)
        return state, AdapterInfo(shape=infer_shape(state, str(path)), source="official")
    raise AdapterFileError(
        f"Adapter file {path} has an unknown extension; expected one of {ADAPTER_SUFFIXES}")


def load_adapter(path: str | os.PathLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> PEAAdapter:
    """Load an adapter file as a ready ``PEAAdapter`` (eval mode, no grad) computing in ``dtype``;
    ``.info`` holds its metadata, ``.name`` the file name."""
    state, info = read_adapter(path, dtype)
    adapter = PEAAdapter(info.shape)
    adapter.load_state_dict({k: v.float() for k, v in state.items()})
    adapter.info, adapter.name = info, Path(path).name
    return adapter.to(device=device, dtype=dtype).eval().requires_grad_(False)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Run ``write(temp_name)`` beside ``path``, then rename: no half-written file is ever seen.

    The temp name is unique to this call (process id and random letters), so processes and
    threads writing the same file never share one; it is created with mode 0o666 less the
    umask, as an ordinary file would be, and keeps that mode even when ``write`` replaces it
    (the safetensors writer creates its files 0o600). On any error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = tmp.stat().st_mode & 0o777  # 0o666 less the umask, read without changing the umask
        write(str(tmp))
        if tmp.stat().st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
"""The temp names of :func:`atomic_write`: ``.<target name>.<process id>.<8 hex digits>.tmp``."""


def _temp_files(folder: Path, recursive: bool, older_than_s: float):
    """(path, writer's pid) of each temp file of :func:`atomic_write` in ``folder`` last written
    ``older_than_s`` seconds ago or more."""
    for entry in os.scandir(folder):
        if recursive and entry.is_dir(follow_symlinks=False):
            yield from _temp_files(Path(entry.path), True, older_than_s)
        elif (m := TEMP_NAME.match(entry.name)) and entry.is_file(follow_symlinks=False):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime >= older_than_s:
                yield Path(entry.path), int(m["pid"])


def remove_abandoned_temp_files(folder: Path, *, recursive: bool = False, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temp files :func:`atomic_write` left in ``folder`` (``recursive``: and below) when
    its process was killed mid-write: only names of its pattern, only regular files, only those
    whose process is gone from this machine and, with ``older_than_s``, last written that long ago
    (for folders that writers on other machines share: their processes are not visible here).
    Returns what was deleted."""
    found = list(_temp_files(folder, recursive, older_than_s)) if folder.is_dir() else []
    if not found:
        return []
    import psutil  # a ComfyUI requirement; needed only when temp files are found

    removed = []
    for path, pid in found:
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        try:
            path.unlink()
        except (FileNotFoundError, PermissionError):  # renamed meanwhile; open elsewhere (Windows)
            continue
        removed.append(path)
    return removed


def save_adapter(state: dict[str, torch.Tensor] | PEAAdapter, info: AdapterInfo,
                 path: str | os.PathLike) -> Path:
    """Write an adapter in our safetensors format, atomically (temp file, then rename)."""
    if isinstance(state, PEAAdapter):
        state = state.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    shape = infer_shape(state, "adapter to save")
    if shape != info.shape:
        raise AdapterFileError(f"cannot save: info says {info.shape} but the tensors have {shape}")
    path = Path(path)
    atomic_write(path, lambda tmp: safetensors.torch.save_file(
        state, tmp, metadata={METADATA_KEY: info.to_json()}))
    return path


def save_official(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a plain ``pytorch_model.bin`` state dict, as the authors release them."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({k: v.contiguous() for k, v in state.items()}, tmp))
    return path
