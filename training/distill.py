"""One distillation step on ComfyUI's model code: one frozen UNet, a teacher and a student pass.

The teacher pass conditions the UNet on the checkpoint's own English text encoding (what
CLIPTextEncode gives); the student pass on ``adapter(language_encoder(caption))``. Both see
the same noised latents, timesteps and (SDXL) size ids. Gradients reach the adapter only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
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


class TeacherText:
    """The base checkpoint's English conditioning, exactly as CLIPTextEncode makes it."""

    def __init__(self, clip, cache_dir: Path | None = None, cache_key: str = "", memory: bool = False):
        self.clip = clip
        self.cache_dir = cache_dir
        self.cache_key = cache_key
        self.memo: dict[str, dict[str, torch.Tensor]] | None = {} if memory else None

    @torch.no_grad()
    def _compute(self, text: str) -> dict[str, torch.Tensor]:
        cond, extra = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))[0]
        out = {"tokens": cond.float().cpu()}
        if extra.get("pooled_output") is not None:
            out["pooled"] = extra["pooled_output"].float().cpu()
        return out

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        if self.memo is None:
            return self._cached(text)
        if text not in self.memo:
            self.memo[text] = self._cached(text)
        return self.memo[text]

    def _cached(self, text: str) -> dict[str, torch.Tensor]:
        if self.cache_dir is None:
            return self._compute(text)
        key = hashlib.sha1(f"{self.cache_key}\0{text}".encode()).hexdigest()
        path = self.cache_dir / "teacher" / key[:2] / f"{key}.safetensors"
        if path.is_file():
            return safetensors.torch.load_file(str(path))
        out = self._compute(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        safetensors.torch.save_file(out, str(tmp))
        tmp.replace(path)
        return out

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stacked conditioning; captions of different lengths are repeated to a common
        length, as ComfyUI does when it batches conds (repetition leaves attention unchanged)."""
        import comfy.conds

        encs = [self.encode(t) for t in texts]
        first, rest = comfy.conds.CONDCrossAttn(encs[0]["tokens"]), encs[1:]
        tokens = first.concat([comfy.conds.CONDCrossAttn(e["tokens"]) for e in rest])
        pooled = torch.cat([e["pooled"] for e in encs]) if "pooled" in encs[0] else None
        return tokens, pooled


class Distiller(nn.Module):
    """Computes the PEA loss of a batch; ``adapter`` is the only module with trainable weights."""

    def __init__(self, base_model, encoder: LanguageEncoder, adapter: nn.Module, empty_ids: torch.Tensor,
                 empty_teacher: tuple[torch.Tensor, torch.Tensor | None], weights: LossWeights = LossWeights(),
                 cfg_dropout: float = 0.1, seed: int = 0):
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
        self.checked_shapes = False
        base_model.requires_grad_(False)
        encoder.requires_grad_(False)

    def draws(self, batch: Batch, step: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample timestep, noise and CFG-dropout flag, keyed by (seed, step, sample)."""
        ts, noises, drops = [], [], []
        for sid, z in zip(batch.sample_ids, batch.latents):
            g = sample_generator(self.seed, step, sid)
            ts.append(torch.randint(0, TIMESTEPS, (1,), generator=g))
            noises.append(torch.randn(z.shape, generator=g))
            drops.append(torch.rand(1, generator=g) < self.cfg_dropout)
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
