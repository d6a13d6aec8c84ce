"""Tiny base models built in code from ComfyUI's own classes (UNet, CLIP, TAESD VAE).

They stand in for a user's checkpoint in the demo, the tests and the CPU benchmark: the same
model code, the same conditioning path, at widths a CPU trains in seconds.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from adapters.families import SDXL_SIZE_IDS_WIDTH
from training.base_checkpoint import BaseParts

TINY_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_hidden_layers": 2, "projection_dim": 64}
TINY_SDXL_CLIPS = {
    # SDXL reads both encoders' penultimate states side by side (32 + 64 = 96-d tokens) and CLIP-G's
    # projected pooled vector (64-d: the UNet's label embedding reads 64 + 6 x 256 size-id widths)
    "clip_l_model_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                            "num_hidden_layers": 3},
    "clip_g_model_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                            "num_hidden_layers": 3},
}

UNET_SHAPES = {
    # SD1.5 layout (4 levels, 2 res blocks, attention on the first 3) at small width
    "sd15": dict(model_channels=32, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 context_dim=64, use_linear_in_transformer=False, adm_in_channels=None),
    # SDXL layout (3 levels, 2 res blocks, attention on the last 2) at small width
    "sdxl": dict(model_channels=32, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                 transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
                 context_dim=64, use_linear_in_transformer=True, adm_in_channels=2816),
    # the demo: two levels, one res block each (fast on a CPU)
    "demo": dict(model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                 transformer_depth_output=[1, 1, 1, 1], context_dim=64, use_linear_in_transformer=False,
                 adm_in_channels=None),
    # the demo's size with SDXL's conditioning: two text encoders (96-d tokens), pooled vector and
    # size ids through the label embedding, linear projections in the transformers
    "demo_xl": dict(model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                    transformer_depth_output=[1, 1, 1, 1], context_dim=96, use_linear_in_transformer=True,
                    adm_in_channels=64 + SDXL_SIZE_IDS_WIDTH),
}


@torch.no_grad()
def init_weights(module: nn.Module, seed: int, on_device: bool = False) -> nn.Module:
    """Initialise every layer (ComfyUI's ops skip init to load faster): Linear/conv layers get
    PyTorch's default bounds (uniform, 1/sqrt(fan_in)), norms ones and zeros (RMS norms ones),
    embeddings N(0, 1).

    Values come from numpy's legacy ``RandomState``, whose streams never change: the same weights
    on every machine and torch version, so a teacher trained on top of them can be shipped.
    ``on_device`` draws them with torch on the module's own device instead (full-size UNets on
    a GPU, in seconds; same seed, same weights on one machine only)."""
    if on_device:
        gen = torch.Generator(next(module.parameters()).device).manual_seed(seed)
        uniform = lambda t, bound: t.uniform_(-bound, bound, generator=gen)  # noqa: E731
        normal = lambda t: t.normal_(generator=gen)  # noqa: E731
    else:
        rng = np.random.RandomState(seed)

        def fill(t: torch.Tensor, values: np.ndarray) -> None:
            t.copy_(torch.from_numpy(values.astype(np.float32)).reshape(t.shape))

        uniform = lambda t, bound: fill(t, rng.uniform(-bound, bound, t.numel()))  # noqa: E731
        normal = lambda t: fill(t, rng.standard_normal(t.numel()))  # noqa: E731
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            bound = 1.0 / np.sqrt(m.weight[0].numel())
            uniform(m.weight, bound)
            if m.bias is not None:
                uniform(m.bias, bound)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif type(m).__name__.endswith("Norm") and isinstance(getattr(m, "weight", None), nn.Parameter):
            m.weight.fill_(1.0)  # RMS-style norms of their own class (ComfyUI's T5LayerNorm): a scale only
        elif isinstance(m, nn.Embedding):
            normal(m.weight)
    return module


def tiny_unet_model(shape: str = "demo", seed: int = 0, v_prediction: bool = False):
    """A ComfyUI ``BaseModel`` (SD1.5 or SDXL class) around a small ``UNetModel``."""
    import comfy.model_base
    import comfy.supported_models as sm

    cfg = dict(UNET_SHAPES[shape], in_channels=4, out_channels=4, use_temporal_attention=False,
               use_spatial_transformer=True, legacy=False, image_size=32, transformer_depth_middle=1)
    family = sm.SDXL if cfg["adm_in_channels"] else sm.SD15
    if cfg["adm_in_channels"]:
        cfg["num_classes"] = "sequential"
    config = family(cfg)
    config.unet_config["num_head_channels"] = 8
    config.unet_config["num_heads"] = -1
    config.set_inference_dtype(torch.float32, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if v_prediction else comfy.model_base.ModelType.EPS
    if family is sm.SDXL:
        model = comfy.model_base.SDXL(config, model_type=model_type)
    else:
        model = comfy.model_base.BaseModel(config, model_type=model_type)
    return init_weights(model, seed).eval()


@torch.no_grad()
def pooling_taesd(latent_channels: int = 4):
    """ComfyUI's TAESD with weights set by hand: the encoder averages 8x8 pixel blocks into
    RGB (+ luminance) latents, the decoder repeats them. A VAE a CPU needs no training for, whose
    decoded previews show colours and positions."""
    from comfy.taesd.taesd import TAESD, Block

    taesd = TAESD(latent_channels=latent_channels)
    for m in taesd.modules():
        if isinstance(m, (nn.Conv2d,)):
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()
    rgb = range(3)
    for seq in (taesd.taesd_encoder, taesd.taesd_decoder):
        for layer in seq:
            if isinstance(layer, Block) or not isinstance(layer, nn.Conv2d):
                continue  # blocks with zero branches are ReLU(x): identity on non-negative values
            for c in rgb:
                if layer.stride == (2, 2):
                    layer.weight[c, c, 1:3, 1:3] = 0.25
                else:
                    layer.weight[c, c, 1, 1] = 1.0
            if layer.out_channels == latent_channels and latent_channels > 3:
                layer.weight[3, :3, 1, 1] = 1.0 / 3.0
    return taesd


@torch.no_grad()
def calibrate_vae(parts: BaseParts, images: torch.Tensor) -> None:
    """Set the random TAESD's ``vae_scale``/``vae_shift`` so that ``images`` ([B, H, W, 3] in
    [0, 1]) give latents of unit variance after the model's latent scaling, as a trained VAE does."""
    taesd = parts.vae.first_stage_model
    raw = taesd.taesd_encoder(images.movedim(-1, 1).to(taesd.vae_scale.device))
    taesd.vae_scale.fill_(raw.std().item() * parts.model.model.latent_format.scale_factor)
    taesd.vae_shift.fill_(-raw.mean().item() / taesd.vae_scale.item())


VAE_CALIBRATION = ("vae_scale", "vae_shift")
"""The TAESD numbers ``calibrate_vae`` sets; a teacher's file keeps those its latents were made with."""


def vae_calibration(parts: BaseParts) -> dict[str, str]:
    """``calibrate_vae``'s numbers as exact text (safetensors metadata)."""
    taesd = parts.vae.first_stage_model
    return {name: repr(getattr(taesd, name).item()) for name in VAE_CALIBRATION}


def read_vae_calibration(calibration: Mapping[str, str]) -> dict[str, float]:
    """``vae_calibration``'s text back as numbers; ValueError naming the entry that is not a finite
    number (or, for ``vae_scale``, not positive: latents are divided by it)."""
    numbers = {}
    for name in VAE_CALIBRATION:
        try:
            value = float(calibration[name])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (name == "vae_scale" and value <= 0):
            raise ValueError(f"{name} is {calibration[name]!r}, expected a finite number"
                             + (" above 0" if name == "vae_scale" else ""))
        numbers[name] = value
    return numbers


@torch.no_grad()
def set_vae_calibration(parts: BaseParts, calibration: Mapping[str, float]) -> None:
    """Give the TAESD the numbers ``read_vae_calibration`` read, bit for bit."""
    taesd = parts.vae.first_stage_model
    for name in VAE_CALIBRATION:
        getattr(taesd, name).fill_(calibration[name])


def _tiny_parts(shape: str, seed: int, clip_options: dict) -> BaseParts:
    """MODEL/CLIP/VAE around ``tiny_unet_model(shape)``: ComfyUI's CLIP of the model's family with
    the widths of ``clip_options`` (real tokenizers), and the pooling TAESD."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    model = tiny_unet_model(shape, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    clip = comfy.sd.CLIP(model.model_config.clip_target(), model_options=clip_options)
    init_weights(clip.cond_stage_model, seed + 1)
    vae = comfy.sd.VAE(sd=pooling_taesd().state_dict(), dtype=torch.float32)  # the same numbers on any device
    vae.first_stage_model.requires_grad_(False)
    return BaseParts(patcher, clip, vae, f"tiny-{shape}")


def tiny_sd15_parts(shape: str = "demo", seed: int = 0) -> BaseParts:
    """A tiny SD1.5-family MODEL/CLIP/VAE: ComfyUI's SD1 CLIP (real tokenizer, 64-d) and TAESD."""
    return _tiny_parts(shape, seed, {"clip_l_model_config": TINY_CLIP})


def tiny_sdxl_parts(shape: str = "demo_xl", seed: int = 0) -> BaseParts:
    """A tiny SDXL-family MODEL/CLIP/VAE: ComfyUI's SDXL class (label embedding for the pooled
    vector and size ids), its CLIP-L + CLIP-G text encoder at ``TINY_SDXL_CLIPS`` widths, TAESD."""
    return _tiny_parts(shape, seed, TINY_SDXL_CLIPS)


TINY_PARTS = {"sd15": tiny_sd15_parts, "sdxl": tiny_sdxl_parts}
"""The miniature world's base model per family head."""
