"""The settings of a training run (what ``train_adapter.py``'s options fill in)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters import PEAError
from training.step.distill import StepConfig
from training.step.objective import LossWeights


@dataclass
class TrainConfig:
    """Defaults as the authors' official run trains (``docs/method.md``): AdamW at lr 1e-5 with 100
    warm-up steps, no weight decay (their optimiser never receives the decay their script
    passes), no gradient clipping. No noise offset by default: the authors' SD1.5 script and
    the paper have none, their SDXL script uses 0.5 (``noise_offset``)."""

    output: Path
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup: int = 100
    clip_grad: float = 0.0
    """Clip the adapter's gradient norm to this (0: no clipping)."""
    noise_offset: float = 0.0
    """Per-channel noise offset (the authors' SDXL script: 0.5; 0: off)."""
    cfg_dropout: float = 0.1
    weights: LossWeights = field(default_factory=LossWeights)
    max_bad_steps: int = 20
    """Stop after this many steps in a row with a non-finite loss or gradients (0: never)."""
    resolution: int | None = None
    hidden: tuple[int, ...] | None = None
    init_adapter: Path | None = None
    resume: Path | None = None
    cache_dir: Path | None = None
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    preview_every: int = 0
    preview_prompts: list[str] = field(default_factory=list)
    preview_steps: int = 12
    languages: list[str] = field(default_factory=list)
    adapter_name: str = "adapter.safetensors"
    progress: bool = True
    memory_cache: bool = False
    """Keep latents and teacher encodings in memory too (small datasets: the demo, tests)."""
    overwrite: bool = False
    """Start over a previous run in ``output``: its files are deleted first (a new run refuses otherwise)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep; 0 keeps every one."""
    memory_budget: float = 1.0
    """Share of the UNet's attention blocks whose student activations are kept (others recomputed)."""
    compile: bool = False
    """torch.compile each UNet pass into one graph."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise PEAError(f"{name} must be 1 or more, got {getattr(self, name)}")

    def step_config(self) -> StepConfig:
        """What the distillation step takes from these settings."""
        return StepConfig(weights=self.weights, cfg_dropout=self.cfg_dropout, noise_offset=self.noise_offset,
                          seed=self.seed, memory_budget=self.memory_budget, compile=self.compile)
