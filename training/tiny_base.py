"""Tiny base models built in code from ComfyUI's own classes (UNet, CLIP, TAESD VAE).

They stand in for a user's checkpoint in the demo, the tests and the CPU benchmark: the same
model code, the same conditioning path, at widths a CPU trains in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TINY_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_hidden_layers": 2, "projection_dim": 64}

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
}


def init_weights(module: nn.Module, seed: int) -> nn.Module:
    """PyTorch's default init for every layer (ComfyUI's ops skip it to load faster)."""
    torch.manual_seed(seed)
    for m in module.modules():
        for cls in (nn.Linear, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm, nn.Embedding):
            if isinstance(m, cls):
                cls.reset_parameters(m)
                break
    return module


def tiny_unet_model(shape: str = "demo", seed: int = 0, v_prediction: bool = False):
    """A ComfyUI ``BaseModel`` (SD1.5 or SDXL class) around a small ``UNetModel``."""
    import comfy.model_base
    import comfy.supported_models as sm

    cfg = dict(UNET_SHAPES[shape], in_channels=4, out_channels=4, use_temporal_attention=False,
               use_spatial_transformer=True, legacy=False, image_size=32, transformer_depth_middle=1)
    family = sm.SDXL if cfg["adm_in_channels"] else sm.SD15
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


@dataclass
class BaseParts:
    """What a checkpoint loader gives: MODEL (ModelPatcher), CLIP, VAE."""

    model: object
    clip: object
    vae: object
    name: str


def tiny_sd15_parts(shape: str = "demo", seed: int = 0) -> BaseParts:
    """A tiny SD1.5-family MODEL/CLIP/VAE: ComfyUI's SD1 CLIP (real tokenizer, 64-d) and TAESD."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models as sm
    from comfy.taesd.taesd import TAESD

    model = tiny_unet_model(shape, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    clip = comfy.sd.CLIP(sm.SD15({}).clip_target(), model_options={"clip_l_model_config": TINY_CLIP})
    init_weights(clip.cond_stage_model, seed + 1)
    vae = comfy.sd.VAE(sd=init_weights(TAESD(latent_channels=4), seed + 2).state_dict())
    return BaseParts(patcher, clip, vae, f"tiny-{shape}")
