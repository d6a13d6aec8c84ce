"""The PEA adapter: a small MLP between a language encoder and a frozen diffusion model.

Layout (official key names): ``layernorm`` -> ``projector`` (bias-free Linears with GELU
between, any depth) -> a head. Heads:

- ``sd15``: the projector's output *is* the token context; no pooled vector.
- ``sdxl``: ``pooled = mean over tokens of x`` (the pooled width) and ``tokens = fc(GELU(x))``.
- ``flux``: ``tokens = GELU(x)`` (FLUX's T5 context) and ``pooled = mean over tokens of
  fc(tokens)`` (FLUX's CLIP-L pooled vector), as in OPPO's multilingual FLUX adapter.

The widths of each family are in ``families.FAMILIES``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .families import FAMILIES, HEADS, Family


@dataclass(frozen=True)
class AdapterShape:
    """Every width of an adapter; enough to build it empty."""

    head: str
    in_dim: int
    hidden_dims: tuple[int, ...]
    """Output widths of every projector Linear but the last."""
    out_dim: int
    """Output width of the last projector Linear."""
    token_dim: int
    pooled_dim: int | None

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown adapter head {self.head!r}; expected one of {HEADS}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def for_family(cls, family: Family, in_dim: int, hidden_dims: tuple[int, ...] | None = None) -> "AdapterShape":
        """The shape that conditions ``family`` from ``in_dim``-d encoder states (default hidden
        widths: the family's)."""
        hidden = tuple(hidden_dims) if hidden_dims else family.hidden
        return cls(family.head, in_dim, hidden, family.trunk_dim, family.context_dim, family.pooled_dim)

    @classmethod
    def for_head(cls, head: str, in_dim: int, hidden_dims: tuple[int, ...]) -> "AdapterShape":
        """The standard shape of a head (``families.FAMILIES``' widths)."""
        if head not in FAMILIES:
            raise ValueError(f"unknown adapter head {head!r}; expected one of {HEADS}")
        return cls.for_family(FAMILIES[head], in_dim, hidden_dims)


class PEAAdapter(nn.Module):
    """Maps language-encoder token states ``[B, L, in_dim]`` to ``(tokens, pooled_or_None)``."""

    name = "adapter"
    """The file name, once loaded from a file (for messages)."""

    def __init__(self, shape: AdapterShape):
        super().__init__()
        self.shape = shape
        self.layernorm = nn.LayerNorm(shape.in_dim)
        widths = (shape.in_dim, *shape.hidden_dims, shape.out_dim)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(nn.Linear(a, b, bias=False))
        self.projector = nn.Sequential(*layers)
        if shape.head == "sdxl":
            self.fc = nn.Linear(shape.out_dim, shape.token_dim)
        elif shape.head == "flux":
            self.fc = nn.Linear(shape.token_dim, shape.pooled_dim)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.projector(self.layernorm(hidden))
        if self.shape.head == "sd15":
            return x, None
        if self.shape.head == "flux":
            tokens = nn.functional.gelu(x)
            return tokens, self.fc(tokens).mean(dim=1)
        pooled = x.mean(dim=1)
        return self.fc(nn.functional.gelu(x)), pooled
