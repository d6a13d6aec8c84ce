"""One distillation step on ComfyUI's model code: one frozen UNet, a teacher and a student pass.

The teacher pass conditions the UNet on the checkpoint's own English text encoding (what
CLIPTextEncode gives); the student pass on ``adapter(language_encoder(caption))``. Both see
the same noised latents, timesteps and (SDXL) size ids. Gradients reach the adapter only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from adapters import LanguageEncoder
from training.step.objective import LossWeights, distillation_loss, prediction_target, text_alignment
from training.step.taps import check_features, tap_names
from training.step.unet_pass import UNetPasses, recompute_plan

TIMESTEPS = 1000


def sample_generator(seed: int, step: int, sample: int) -> torch.Generator:
    """A generator for one sample of one step: the same draws whatever process or resume."""
    return torch.Generator().manual_seed(hash((seed, step, sample)) & (2**63 - 1))


@dataclass(frozen=True)
class StepConfig:
    """How the step trains, beside its models: loss weights, CFG dropout, a noise offset, the seed
    of the per-sample draws, the memory budget (``unet_pass.checked_budget``) and ``compile``."""

    weights: LossWeights = field(default_factory=LossWeights)
    cfg_dropout: float = 0.1
    noise_offset: float = 0.0
    seed: int = 0
    memory_budget: float = 1.0
    compile: bool | str = False


def sample_draws(seed: int, step: int, sample: int, shape: torch.Size, cfg_dropout: float,
                 noise_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample's timestep ``[1]``, noise ``shape`` (plus ``noise_offset`` times a per-channel
    normal) and CFG-dropout flag ``[1]``, keyed by (seed, step, sample id); the step is the
    micro-batch's, and the data gives ids no other rank uses in it (``data.ShardBatches``,
    ``data.ManifestBatches``)."""
    g = sample_generator(seed, step, sample)
    t = torch.randint(0, TIMESTEPS, (1,), generator=g)
    noise = torch.randn(shape, generator=g)
    drop = torch.rand(1, generator=g) < cfg_dropout
    if noise_offset:  # per-channel offset (official SDXL script), drawn last: off keeps the draws
        noise += noise_offset * torch.randn(shape[0], 1, 1, generator=g)
    return t, noise, drop


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
    """One distillation step: the PEA loss of a batch; ``adapter`` is the only module with trainable weights.

    The trainer and ``benchmarks/train_step.py`` both run this module. The UNet runs in its own
    weight dtype without autocast (bf16 where the card has it: see ``base.load_base``);
    only the frozen language encoder runs under bf16 autocast on CUDA. ``config.memory_budget`` (0..1)
    is the share of the UNet's attention blocks whose student-pass activations are kept (the
    others are partly recomputed in backward, see ``unet_pass.recompute_plan``); ``config.compile``
    compiles each UNet pass into one graph (True: with Inductor; a string names another
    ``torch.compile`` backend). The step never waits for the device: no ``.item()``, no
    boolean indexing.
    """

    def __init__(self, base_model, encoder: LanguageEncoder, adapter: nn.Module, *, empty_ids: torch.Tensor,
                 empty_teacher: tuple[torch.Tensor, torch.Tensor | None], config: StepConfig = StepConfig()):
        super().__init__()
        self.base = base_model
        self.encoder = encoder
        self.adapter = adapter
        unet = base_model.diffusion_model
        device = next(unet.parameters()).device
        self.tap_names = tap_names(unet)
        self.passes = UNetPasses(unet, self.tap_names, recompute_plan(unet, config.memory_budget),
                                 "inductor" if config.compile is True else config.compile or None)
        empty_tokens, empty_pooled = empty_teacher
        self.register_buffer("empty_ids", empty_ids.to(device), persistent=False)
        self.register_buffer("empty_tokens", empty_tokens.to(device), persistent=False)
        self.register_buffer("empty_pooled", None if empty_pooled is None else empty_pooled.to(device), persistent=False)
        self.size_embeddings: dict[tuple[int, int], torch.Tensor] = {}
        self.weights = config.weights
        self.cfg_dropout = config.cfg_dropout
        self.seed = config.seed
        self.noise_offset = config.noise_offset
        self.checked_shapes = False
        base_model.requires_grad_(False)
        encoder.requires_grad_(False)

    def draws(self, batch: Batch, step: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample timestep, noise and CFG-dropout flag (``sample_draws``), stacked."""
        ts, noises, drops = zip(*(sample_draws(self.seed, step, sid, z.shape, self.cfg_dropout, self.noise_offset)
                                  for sid, z in zip(batch.sample_ids, batch.latents)))
        return tuple(to_device(v, device) for v in (torch.cat(ts), torch.stack(noises), torch.cat(drops)))

    def teacher_condition(self, batch: Batch, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's tokens (and pooled vector), the empty prompt's where ``drop`` is set."""
        tokens = batch.teacher_tokens
        empty = self.empty_tokens.repeat(1, tokens.shape[1] // self.empty_tokens.shape[1], 1).to(tokens.dtype)
        tokens = torch.where(drop[:, None, None], empty, tokens)
        pooled = batch.teacher_pooled
        if pooled is not None:
            pooled = torch.where(drop[:, None], self.empty_pooled.to(pooled.dtype), pooled)
        return tokens, pooled

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen language encoder's states (bf16 autocast on CUDA), in fp32."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ids.device.type == "cuda")
        with torch.no_grad(), autocast:
            return self.encoder(ids).float()

    def forward(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = batch.latents.device
        ms = self.base.model_sampling
        t, noise, drop = self.draws(batch, step, device)
        sigma = ms.sigma(t.float())
        noisy = ms.noise_scaling(sigma, noise, batch.latents)

        t_tokens, t_pooled = self.teacher_condition(batch, drop)  # the same samples lose their caption on both sides
        ids = torch.where(drop[:, None], self.empty_ids, batch.ids.to(device))
        s_tokens, s_pooled = self.adapter(self.encode(ids))
        text = text_alignment(s_tokens, s_pooled, t_tokens, t_pooled) if self.weights.text else None
        kd_mask = batch.kd_mask.to(device)
        if not self.weights.needs_unet:
            return distillation_loss({}, {}, None, kd_mask, self.tap_names, self.weights, text)
        size = batch.pixel_size
        t_y, s_y = (sdxl_label(self.base, pooled, size, self.size_embeddings) for pooled in (t_pooled, s_pooled))
        student, teacher = self.passes.both(self.base, noisy, sigma, teacher=(t_tokens, t_y),
                                            student=(s_tokens, s_y))
        if not self.checked_shapes:
            check_features(self.base.diffusion_model, teacher, *batch.latents.shape[-2:])
            self.checked_shapes = True
        target = prediction_target(ms, sigma, noisy, batch.latents)
        return distillation_loss(student, teacher, target, kd_mask, self.tap_names, self.weights, text)


def sdxl_label(base_model, pooled: torch.Tensor | None, size: tuple[int, int],
               cache: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor | None:
    """SDXL's label input ``y`` for a bucket of ``size`` (width, height); None for models
    without one (SD1.5). The size ids give the bucket as original and target size and crop
    0,0, for the teacher and the student alike: what PEA Encode Prompt and ComfyUI's SDXL
    nodes give at inference by default. The images are centre-cropped to the bucket
    (``data.load_image``). The authors' SDXL script gives the image's real original size and a
    random crop with its offsets instead; here both passes see the same ids either way, and
    crop 0,0 keeps the one cached latent per image and bucket.

    ComfyUI's ``SDXL.encode_adm`` is ``[pooled | size embeddings]`` and builds the size part on
    the CPU; it is made once per bucket here, kept on the device in ``cache``."""
    if pooled is None or not base_model.adm_channels:
        return None
    width = pooled.shape[-1]
    if size not in cache:
        w, h = size
        adm = base_model.encode_adm(pooled_output=torch.zeros(1, width), width=w, height=h, crop_w=0, crop_h=0,
                                    target_width=w, target_height=h)
        cache[size] = adm[:, width:].to(pooled.device)
    return torch.cat([pooled, cache[size].expand(pooled.shape[0], -1).to(pooled.dtype)], dim=1)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without making the host wait for the GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
