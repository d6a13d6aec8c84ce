"""The loss parts between two log lines: summed per step on the device (no host sync per part),
summed over processes with the step's one all-reduce, averaged when a line is written.

``L_SD`` is averaged over the samples that get it, the KD terms over the samples that get them
(see ``objective``), the total over every sample."""
from __future__ import annotations

import torch

SUMS = ("loss", "sd", "lkd", "fkd", "text", "samples", "sd_samples", "kd_samples")
PARTS = SUMS[:5]
DIVISORS = {"loss": "samples", "sd": "sd_samples", "lkd": "kd_samples", "fkd": "kd_samples", "text": "kd_samples"}


def loss_sums(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """One micro-batch's sums, in ``SUMS`` order, as an fp32 tensor on the loss's device."""
    kd, sd = parts["kd_mask"], parts["sd_mask"]
    return torch.stack([parts["loss"].sum(), (parts["sd"] * sd).sum(), (parts["lkd"] * kd).sum(),
                        (parts["fkd"] * kd).sum(), (parts["text"] * kd).sum(),
                        torch.tensor(float(len(kd)), device=kd.device), sd.sum(), kd.sum()]).float()


def non_finite(sums: torch.Tensor) -> list[str]:
    """Names of the loss parts of a step (``SUMS`` order, on the CPU) that are not finite."""
    return [name for name, value in zip(PARTS, sums.tolist()) if value != value or abs(value) == float("inf")]


class LossWindow:
    """Sums of the good steps since the last log line."""

    def __init__(self):
        self.sums = torch.zeros(len(SUMS), dtype=torch.float64)
        self.steps = 0

    def add(self, sums: torch.Tensor) -> None:
        self.sums += sums[:len(SUMS)].double()
        self.steps += 1

    def means(self) -> dict[str, float]:
        """Mean of each part over the samples that got it (parts no sample got are left out),
        and ``samples`` per step; then the window starts again."""
        totals = dict(zip(SUMS, self.sums.tolist()))
        out = {part: totals[part] / totals[DIVISORS[part]] for part in PARTS if totals[DIVISORS[part]] > 0}
        out["samples"] = round(totals["samples"] / max(self.steps, 1))
        self.sums.zero_()
        self.steps = 0
        return out
