"""Preview images of fixed prompts, sampled through ComfyUI with the adapter being trained."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters import LanguageEncoder
from adapters.file_format import atomic_write


@torch.no_grad()
def pea_conditioning(encoder: LanguageEncoder, adapter, texts: list[str], size: tuple[int, int]) -> list:
    """ComfyUI CONDITIONING for each text: what PEA Encode Prompt gives for a one-window prompt."""
    tokens, pooled = adapter(encoder.encode(texts).float())
    conds = []
    for i in range(len(texts)):
        extra = {"width": size[0], "height": size[1], "crop_w": 0, "crop_h": 0,
                 "target_width": size[0], "target_height": size[1]}
        if pooled is not None:
            extra["pooled_output"] = pooled[i:i + 1].float().cpu()
        conds.append([[tokens[i:i + 1].float().cpu(), extra]])
    return conds


@torch.no_grad()
def render_previews(parts, encoder: LanguageEncoder, adapter, prompts: list[str], size: tuple[int, int],
                    dest: Path, steps: int = 12, cfg: float = 5.0, seed: int = 0) -> Path:
    """Sample each prompt with ComfyUI's sampler and VAE; save the images side by side."""
    import comfy.sample

    was_training = adapter.training
    adapter.eval()
    positive = pea_conditioning(encoder, adapter, prompts, size)
    (negative,) = pea_conditioning(encoder, adapter, [""], size)
    latent = torch.zeros(1, 4, size[1] // 8, size[0] // 8)
    images = []
    for cond in positive:
        noise = comfy.sample.prepare_noise(latent, seed)
        samples = comfy.sample.sample(parts.model, noise, steps, cfg, "euler", "normal", cond, negative, latent,
                                      denoise=1.0, disable_pbar=True, seed=seed)
        pixels = parts.vae.decode(samples)[0].clamp(0, 1).cpu().numpy()
        images.append(Image.fromarray((pixels * 255).round().astype(np.uint8)))
    adapter.train(was_training)
    grid = Image.new("RGB", (size[0] * len(images), size[1]))
    for i, im in enumerate(images):
        grid.paste(im, (i * size[0], 0))
    atomic_write(dest, lambda tmp: grid.save(tmp, format="PNG"))
    return dest
