"""Seeing a run: a JSONL log of every logged step and a loss plot."""
from __future__ import annotations

import json
from pathlib import Path

PARTS = ("loss", "sd", "lkd", "fkd")


class RunLog:
    """Appends one JSON object per logged step; on resume, drops lines past the resumed step."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        kept = []
        if path.is_file() and resume_step:
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept))

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
    steps = [e["step"] for e in entries]
    for part in PARTS:
        if any(part in e for e in entries):
            ax.plot(steps, [e.get(part) for e in entries], label=part)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("PEA adapter distillation")
    fig.tight_layout()
    tmp = dest.with_name(f".{dest.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(dest)
    return dest
