"""One distillation step on ComfyUI's model code: one frozen UNet, a teacher and a student pass.

The teacher pass conditions the UNet on the checkpoint's own English text encoding (what
CLIPTextEncode gives); the student pass on ``adapter(language_encoder(caption))``. Both see
the same noised latents, timesteps and (SDXL) size ids. Gradients reach the adapter only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adapters import LanguageEncoder
from .objective import LossWeights, distillation_loss, prediction_target, text_alignment
from .taps import FeatureTaps

TIMESTEPS = 1000


def sample_generator(seed: int, step: int, sample: int) -> torch.Generator:
    """A generator for one sample of one step: the same draws whatever process or resume."""
    return torch.Generator().manual_seed(hash((seed, step, sample)) & (2**63 - 1))


@dataclass
class Batch:
    """One (micro-)batch, already on the training device."""

    latents: torch.Tensor          # [B, C, h, w], scaled by the model's latent format
    teacher_tokens: torch.Tensor   # [B, L_t, C_ctx]
    teacher_pooled: torch.Tensor | None
    ids: torch.Tensor              # [B, L_s] language-encoder token ids
    kd_mask: torch.Tensor          # [B] 1 for parallel samples, 0 for native ones
    pixel_size: tuple[int, int]    # (width, height) of the bucket
    sample_ids: list[int]          # global positions in the step, for the per-sample draws


class Distiller(nn.Module):
    """Computes the PEA loss of a batch; ``adapter`` is the only module with trainable weights."""

    def __init__(self, base_model, encoder: LanguageEncoder, adapter: nn.Module, empty_ids: torch.Tensor,
                 empty_teacher: tuple[torch.Tensor, torch.Tensor | None], weights: LossWeights = LossWeights(),
                 cfg_dropout: float = 0.1, seed: int = 0, noise_offset: float = 0.0):
        super().__init__()
        self.base = base_model
        self.encoder = encoder
        self.adapter = adapter
        self.taps = FeatureTaps(base_model.diffusion_model)
        self.register_buffer("empty_ids", empty_ids, persistent=False)
        self.empty_teacher = empty_teacher
        self.weights = weights
        self.cfg_dropout = cfg_dropout
        self.seed = seed
        self.noise_offset = noise_offset
        self.checked_shapes = False
        base_model.requires_grad_(False)
        encoder.requires_grad_(False)

    def draws(self, batch: Batch, step: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample timestep, noise (plus ``noise_offset`` times a per-channel normal) and
        CFG-dropout flag, keyed by (seed, step, sample)."""
        ts, noises, drops = [], [], []
        for sid, z in zip(batch.sample_ids, batch.latents):
            g = sample_generator(self.seed, step, sid)
            ts.append(torch.randint(0, TIMESTEPS, (1,), generator=g))
            noises.append(torch.randn(z.shape, generator=g))
            drops.append(torch.rand(1, generator=g) < self.cfg_dropout)
            if self.noise_offset:  # per-channel offset (official SDXL script), drawn last: off keeps the draws
                noises[-1] += self.noise_offset * torch.randn(z.shape[0], 1, 1, generator=g)
        return (torch.cat(ts).to(device), torch.stack(noises).to(device), torch.cat(drops).to(device))

    def _adm(self, pooled: torch.Tensor | None, size: tuple[int, int]):
        if pooled is None:
            return None
        w, h = size
        return self.base.encode_adm(pooled_output=pooled, width=w, height=h, crop_w=0, crop_h=0,
                                    target_width=w, target_height=h)

    def _forward(self, noisy, sigma, context, y) -> dict[str, torch.Tensor]:
        with self.taps.capture() as feats:
            self.base.apply_model(noisy, sigma, c_crossattn=context, y=y)
        return dict(feats)

    def forward(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = batch.latents.device
        ms = self.base.model_sampling
        t, noise, drop = self.draws(batch, step, device)
        sigma = ms.sigma(t.float()).to(device)
        noisy = ms.noise_scaling(sigma, noise, batch.latents)

        empty_tokens, empty_pooled = self.empty_teacher
        t_tokens = batch.teacher_tokens
        if drop.any():  # the same samples lose their caption on both sides
            t_tokens = t_tokens.clone()
            rep = empty_tokens.to(device).repeat(1, t_tokens.shape[1] // empty_tokens.shape[1], 1)
            t_tokens[drop] = rep.to(t_tokens.dtype)
        t_pooled = batch.teacher_pooled
        if t_pooled is not None and drop.any():
            t_pooled = torch.where(drop[:, None], empty_pooled.to(device), t_pooled)
        ids = torch.where(drop[:, None], self.empty_ids.to(device), batch.ids.to(device))

        with torch.no_grad():
            hidden = self.encoder(ids)
        s_tokens, s_pooled = self.adapter(hidden.float())
        text = text_alignment(s_tokens, s_pooled, t_tokens, t_pooled) if self.weights.text else None
        kd_mask = batch.kd_mask.to(device)
        if not self.weights.needs_unet:
            return distillation_loss({}, {}, None, kd_mask, self.taps.names, self.weights, text)
        with torch.no_grad():
            teacher = self._forward(noisy, sigma, t_tokens, self._adm(t_pooled, batch.pixel_size))
        student = self._forward(noisy, sigma, s_tokens, self._adm(s_pooled, batch.pixel_size))
        if not self.checked_shapes:
            self.taps.check(teacher, *batch.latents.shape[-2:])
            self.checked_shapes = True
        target = prediction_target(ms, sigma, noisy, batch.latents)
        return distillation_loss(student, teacher, target, kd_mask, self.taps.names, self.weights, text)
