"""The files of a run folder: the JSONL log, the loss plot, checkpoints (everything needed to
continue a run exactly) and the summary. Written by rank 0 only."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from adapters.file_format import atomic_write

PARTS = ("loss", "sd", "lkd", "fkd")
CHECKPOINT = "step_{:07d}.pt"


class RunLog:
    """Appends one JSON object per logged step; on resume, drops lines past the resumed step."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        kept = []
        if path.is_file() and resume_step:
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def write(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_losses(entries: list[dict], dest: Path) -> Path:
    """A PNG of the loss and its parts against the step (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for part in PARTS:
        points = [(e["step"], e[part]) for e in entries if part in e]
        if points:
            ax.plot(*zip(*points), label=part)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.set_yscale("log")
        ax.legend()
    else:  # every logged step was skipped
        ax.text(0.5, 0.5, "no step logged a loss", ha="center", transform=ax.transAxes)
    ax.set_title("PEA adapter distillation")
    fig.tight_layout()
    atomic_write(dest, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return dest


def write_summary(dest: Path, summary: dict) -> None:
    """``summary.json``: the adapter written, steps, skipped steps and images, why a run stopped."""
    text = json.dumps(summary, ensure_ascii=False, indent=2)
    atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
    path = folder / CHECKPOINT.format(step)
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
