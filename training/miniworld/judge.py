"""A judge for the miniature world: a small classifier that reads colour, shape, place and size
back from an image, trained on ground-truth images of the generator.

It looks at the image averaged over 8x8 pixel blocks, the resolution the world's VAE keeps
(the pooling TAESD encodes one latent pixel per block and the decoder repeats it), so drawn
images and images decoded from generated latents are read the same way. Training images get
noise and small colour shifts, so a slightly imperfect generated image is still read by its
closest attributes.

The judge trained with the defaults ships as ``training/miniworld/data/judge.safetensors`` (rebuilt
by ``python -m training.miniworld.judge --write-judge``), so a proof run reads images at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from adapters.file_format import atomic_write

from training.miniworld.world import ATTRIBUTES, read_pairs, render

BLOCK = 8
BACKGROUND = 128 / 255
SHIPPED_JUDGE = Path(__file__).with_name("data") / "judge.safetensors"


class Judge(nn.Module):
    """[B, H, W, 3] images in [0, 1] -> one logit vector per attribute."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Flatten(), nn.LazyLinear(256), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, len(values)) for name, values in ATTRIBUTES.items()})

    def materialised(self, size: int = 64) -> "Judge":
        """This judge with its lazy layer sized for ``size``-pixel images."""
        with torch.no_grad():
            self(torch.zeros(1, size, size, 3))
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.avg_pool2d(images.movedim(-1, 1).float(), BLOCK) * 2 - 1
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[dict[str, str]]:
        """The attributes the judge sees in each image."""
        self.eval()
        logits = self(images)
        picks = {name: out.argmax(dim=1).tolist() for name, out in logits.items()}
        return [{name: ATTRIBUTES[name][picks[name][i]] for name in ATTRIBUTES} for i in range(len(images))]


def drawn_images(pairs: list[dict], size: int = 64) -> torch.Tensor:
    """The generator's ground-truth images of ``pairs``: [N, size, size, 3] in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(render(p, size), dtype=np.float32) / 255 for p in pairs]))


def labels(pairs: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([values.index(p[name]) for p in pairs]) for name, values in ATTRIBUTES.items()}


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What a generated image may differ by without changing its attributes: the grey background
    tinted or blotched (half of the images), a colour shift, pixel noise, a shift by up to half
    a block."""
    b, h, w = images.shape[:3]
    background = (images == BACKGROUND).all(dim=-1, keepdim=True)
    base = torch.rand(b, 3, 1, 1, generator=gen) * 0.6 + 0.2
    blocks = (base + (torch.rand(b, 3, h // BLOCK, w // BLOCK, generator=gen) - 0.5) * 0.3).clamp(0, 1)
    blotches = F.interpolate(blocks, size=(h, w), mode="nearest").movedim(1, -1)
    tint = torch.rand(b, 1, 1, 3, generator=gen) < 0.5
    images = torch.where(background & tint, blotches, images)
    shift = (torch.rand(b, 1, 1, 3, generator=gen) - 0.5) * 0.16
    noise = torch.randn(images.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.15
    dx, dy = (int(v) for v in torch.randint(-BLOCK // 2, BLOCK // 2 + 1, (2,), generator=gen))
    moved = torch.roll(images, shifts=(dy, dx), dims=(1, 2))
    return (moved + shift + noise).clamp(0, 1)


def train_judge(pairs: list[dict], steps: int = 1500, batch_size: int = 64, seed: int = 0) -> Judge:
    """Train on every combination of the world, drawn, with augmentation."""
    torch.manual_seed(seed)
    images, target = drawn_images(pairs), labels(pairs)
    judge = Judge().materialised()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    judge.train()
    for _ in range(steps):
        idx = torch.randint(0, len(pairs), (batch_size,), generator=gen)
        logits = judge(augment(images[idx], gen))
        loss = sum(F.cross_entropy(logits[name], target[name][idx]) for name in ATTRIBUTES)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return judge.eval()


def accuracy(read: list[dict[str, str]], pairs: list[dict]) -> dict[str, float]:
    """Per-attribute accuracy, their mean, and the share of images with all four right."""
    hits = {name: [r[name] == p[name] for r, p in zip(read, pairs)] for name in ATTRIBUTES}
    out = {name: float(np.mean(h)) for name, h in hits.items()}
    out["mean"] = float(np.mean([out[name] for name in ATTRIBUTES]))
    out["all"] = float(np.mean([all(h[i] for h in hits.values()) for i in range(len(pairs))]))
    return out


def load_judge(path: Path = SHIPPED_JUDGE) -> Judge:
    """The shipped judge (or the one at ``path``), ready to read images."""
    judge = Judge().materialised()
    judge.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(str(path)).items()})
    return judge.eval()


def save_judge(judge: Judge, path: Path = SHIPPED_JUDGE) -> None:
    state = {k: v.half().contiguous() for k, v in judge.state_dict().items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(state, tmp))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Rebuild the shipped judge (a minute or two on a CPU).")
    parser.add_argument("--write-judge", action="store_true", required=True)
    parser.parse_args()
    save_judge(train_judge(read_pairs()))
    print(f"wrote {SHIPPED_JUDGE}")
