"""The non-finite guard: a step whose loss or adapter gradients are not finite is skipped (the
optimiser and the learning-rate schedule never see it); after too many in a row the run stops
with a message saying where and why; non-finite weights are never written to disk."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from adapters.errors import NonFiniteError

LIKELY_CAUSES = ("fp16 overflow (load the checkpoint in bf16 or fp32), a broken VAE (NaN latents), "
                 "a bad image, or a learning rate too high (--lr)")


def gradients_finite(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """A 0-d bool tensor on the parameters' device: every gradient that exists is finite."""
    checks = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return torch.stack(checks).all() if checks else torch.tensor(True)


def check_weights_finite(module: torch.nn.Module, what: str, last_good: Path | None) -> None:
    """Raise NonFiniteError naming the first non-finite tensor of ``module`` before ``what``
    is written."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteError(
                f"not writing {what}: the adapter's '{name}' holds non-finite values. Likely causes: "
                f"{LIKELY_CAUSES}. Last good checkpoint: {last_good or 'none written'}.")


class StepGuard:
    """Counts skipped steps (all of them, and in a row) and stops the run after ``max_in_a_row``."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0

    def good(self) -> None:
        self.in_a_row = 0

    def skip(self, step: int, what: list[str], last_good: Path | None) -> None:
        """Count a skipped ``step``; raise NonFiniteError when it is one too many in a row."""
        self.skipped += 1
        self.in_a_row += 1
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"stopped at step {step}: {self.in_a_row} steps in a row were skipped because their loss or "
                f"adapter gradients were not finite (last: {', '.join(what)}; {self.skipped} skipped in all). "
                f"Likely causes: {LIKELY_CAUSES}. "
                f"Last good checkpoint: {last_good or 'none written (lower --save-every, or resume from the start)'}.")

    def state(self) -> dict:
        return {"skipped_steps": self.skipped, "skipped_in_a_row": self.in_a_row}

    def restore(self, state: dict) -> None:
        self.skipped = int(state.get("skipped_steps", 0))
        self.in_a_row = int(state.get("skipped_in_a_row", 0))
