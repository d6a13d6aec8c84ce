"""Training checkpoints: everything needed to continue a run exactly, written atomically."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from adapters.file_format import atomic_write

PATTERN = "step_{:07d}.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, step: int, payload: dict) -> Path:
    """``folder/step_NNNNNNN.pt`` with ``payload`` plus RNG states; temp file, then rename."""
    path = folder / PATTERN.format(step)
    data = dict(payload, step=step, rng=rng_state())
    atomic_write(path, lambda tmp: torch.save(data, tmp))
    return path


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the newest one in a run's output or checkpoints folder."""
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = sorted(folder.glob("step_*.pt"))
        if found:
            return found[-1]
    raise FileNotFoundError(f"no training checkpoint (step_*.pt) in {path} or {path / 'checkpoints'}")


def load_checkpoint(path: Path) -> dict:
    return torch.load(str(find_checkpoint(path)), map_location="cpu", weights_only=True)
