"""The ``LANGUAGE_CLIP`` value passed between nodes, and device/dtype choices for it."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

import comfy.model_management as mm
import comfy.sd

from ..adapters import LanguageEncoder, load_language_encoder
from ..adapters.encoders import FP8_DTYPES
from .comfy_layers import use_comfy_ops
from .pea_clip import encoder_clip

LANGUAGE_CLIP_TYPE = "PEA_LANGUAGE_CLIP"  # socket types are global across packs: prefixed (was LANGUAGE_CLIP)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ["default", *DTYPES, *FP8_DTYPES]


@dataclass
class LanguageClip:
    """A loaded language encoder and the ComfyUI CLIP that owns its memory (one ModelPatcher):
    Apply PEA Adapter clones that CLIP, so every adapter on this encoder shares the patcher."""

    encoder: LanguageEncoder
    name: str
    model_options: dict
    """``load_device``, ``offload_device`` and ``dtype`` (the compute dtype)."""
    clip: comfy.sd.CLIP

    @property
    def patcher(self):
        return self.clip.patcher


def model_options(device: str, dtype: str) -> dict:
    """Devices from ComfyUI's model management and the compute dtype: fp32 on CPU (plain PyTorch
    ops have no fp16 kernels there). An fp8 choice only stores the weights in fp8 (see
    :func:`weight_dtype`); computing then uses ComfyUI's text-encoder dtype, bf16 or fp16."""
    load_device = torch.device("cpu") if device == "cpu" else mm.text_encoder_device()
    chosen = DTYPES.get(dtype) or mm.text_encoder_dtype(load_device)
    if load_device.type == "cpu" and chosen != torch.float32:
        if dtype in DTYPES:
            logging.warning("PEA: %s is not used on the CPU; the language CLIP runs in fp32", dtype)
        chosen = torch.float32
    elif chosen not in DTYPES.values():  # fp8 (a choice here or ComfyUI's --fp8_*-text-enc): storage only
        chosen = torch.bfloat16 if mm.should_use_bf16(load_device) else torch.float16
    return {"load_device": load_device, "offload_device": mm.text_encoder_offload_device(), "dtype": chosen}


def weight_dtype(dtype: str, load_device: torch.device) -> torch.dtype | None:
    """The fp8 storage dtype asked for (by the choice, or for 'default' by ComfyUI's
    ``--fp8_e4m3fn-text-enc``/``--fp8_e5m2-text-enc``), or None: weights in the compute dtype."""
    if dtype == "default":
        default = mm.text_encoder_dtype(load_device)
        return default if default in FP8_DTYPES.values() else None
    return FP8_DTYPES.get(dtype)


def manage(encoder: LanguageEncoder, options: dict, storage: torch.dtype | None = None) -> LanguageClip:
    """Put a loaded encoder under ComfyUI's model management: its layers on ComfyUI's casting
    (``storage``: the fp8 dtype of its narrowable Linear weights, or None) and one CLIP/patcher."""
    use_comfy_ops(encoder, storage)
    return LanguageClip(encoder, encoder.name, options, encoder_clip(encoder, options))


def load_language_clip(path: str | os.PathLike, *, dtype: str = "default", device: str = "default",
                       context_length: int | None = None) -> LanguageClip:
    """Load Language CLIP: the encoder at ``path`` with the node's ``dtype`` and ``device`` choices."""
    options = model_options(device, dtype)
    encoder = load_language_encoder(path, dtype=options["dtype"], context_length=context_length)
    return manage(encoder, options, weight_dtype(dtype, options["load_device"]))
