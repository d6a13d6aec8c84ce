"""Training a tiny English teacher from scratch (demo and miniature-world use only).

A real user's checkpoint already reads English; the tiny UNet built in code does not, and a
random teacher gives the student nothing language-specific to learn. This trains the UNet of
``parts`` on English captions with the ordinary diffusion loss, through ComfyUI's model code.
"""
from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from tqdm import tqdm

from adapters.file_format import atomic_write

from training.data.caches import TeacherText
from training.data.sampling import Record, load_image
from training.step.distill import sample_generator
from training.step.objective import per_sample_mse, prediction_target


def train_teacher(parts, records: list[Record], steps: int, size: int, batch_size: int = 32, lr: float = 1e-3,
                  caption_dropout: float = 0.1, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``parts.model``'s UNet on (image, English caption) pairs; returns the loss per step."""
    base = parts.model.model
    unet = base.diffusion_model
    text = TeacherText(parts.clip)
    with torch.no_grad():
        latents = base.process_latent_in(parts.vae.encode(torch.stack([load_image(r.image, (size, size))
                                                                       for r in records])).float())
        tokens, _ = text.encode_batch([r.en or "" for r in records])
        empty = text.encode("")["tokens"]
    unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    ms, outputs, losses = base.model_sampling, {}, []
    hook = unet.register_forward_hook(lambda _m, _i, out: outputs.__setitem__("out", out))
    order = torch.Generator().manual_seed(seed)
    try:
        for step in tqdm(range(steps), disable=not progress, desc="teacher", dynamic_ncols=True):
            idx = torch.randint(0, len(records), (batch_size,), generator=order)
            draws = [sample_generator(seed, step, i) for i in range(batch_size)]
            t = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in draws])
            noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in draws])
            drop = torch.cat([torch.rand(1, generator=g) < caption_dropout for g in draws])
            context = torch.where(drop[:, None, None], empty, tokens[idx])
            sigma = ms.sigma(t.float())
            noisy = ms.noise_scaling(sigma, noise, latents[idx])
            base.apply_model(noisy, sigma, c_crossattn=context)
            loss = per_sample_mse(outputs["out"], prediction_target(ms, sigma, noisy, latents[idx])).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        hook.remove()
        unet.requires_grad_(False).eval()
    return losses


def save_unet(parts, path: Path, dtype: torch.dtype = torch.float32) -> None:
    state = {k: v.to(dtype).contiguous() for k, v in parts.model.model.diffusion_model.state_dict().items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(state, tmp))


def load_unet(parts, path: Path) -> None:
    unet = parts.model.model.diffusion_model
    unet.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(str(path)).items()})
