"""The files of a run folder: the JSONL log, the loss plot, checkpoints (everything needed to
continue a run exactly) and the summary. Written by rank 0 only."""
from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import torch

from adapters.errors import PEAError
from adapters.file_format import atomic_write
from adapters.pickle_file import load_pickle

log = logging.getLogger(__name__)

PARTS = ("loss", "sd", "lkd", "fkd")
CHECKPOINT = "step_{:07d}.pt"
CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")


def read_log_lines(path: Path) -> tuple[list[tuple[int, str]], list[int]]:
    """(step, line) of every readable entry of a JSONL log, and the numbers of the lines that are
    not (a line torn by a power cut or a full disk, bytes that are not UTF-8 or JSON)."""
    entries, bad = [], []
    for n, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries.append((int(entry["step"]), line))
        except (ValueError, TypeError, KeyError):
            bad.append(n)
    return entries, bad


class RunLog:
    """Appends one JSON object per logged step. On resume the log is rewritten (atomically) with
    the entries up to the resumed step; unreadable lines are dropped with a warning."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        kept = []
        if path.is_file() and resume_step:
            entries, bad = read_log_lines(path)
            if bad:
                log.warning("%s: dropping %d unreadable line(s) (%s), e.g. the last one torn by an interrupted "
                            "write; the checkpoint holds the run's state", path, len(bad),
                            ", ".join(map(str, bad[:10])))
            kept = [line for step, line in entries if step <= resume_step]
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept), encoding="utf-8"))

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


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, file) of the checkpoints in ``folder``, oldest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found)


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (0 keeps every one); returns what was deleted."""
    if keep <= 0:
        return []
    old = [path for _, path in checkpoints(folder)[:-keep]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the newest one in a run's output or checkpoints folder."""
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = checkpoints(folder)
        if found:
            return found[-1][1]
    raise FileNotFoundError(f"no training checkpoint (step_*.pt) in {path} or {path / 'checkpoints'}")


def load_checkpoint(path: Path) -> dict:
    """The newest checkpoint at ``path`` (see :func:`find_checkpoint`), read as a safe pickle."""
    found = find_checkpoint(path)
    return load_pickle(found, PEAError, f"Training checkpoint {found}")
