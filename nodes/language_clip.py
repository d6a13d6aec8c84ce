"""The ``LANGUAGE_CLIP`` value passed between nodes, and device/dtype choices for it."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.model_management as mm

from ..adapters import LanguageEncoder

LANGUAGE_CLIP_TYPE = "LANGUAGE_CLIP"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LanguageClip:
    """A loaded language encoder and where ComfyUI should run it."""

    encoder: LanguageEncoder
    name: str
    model_options: dict
    """``load_device``, ``offload_device`` and ``dtype`` for ``comfy.sd.CLIP``."""


def model_options(device: str, dtype: str) -> dict:
    """Devices from ComfyUI's model management; fp32 on CPU (plain PyTorch modules have no
    fp16 kernels there), and no fp8 (only ``comfy.ops`` layers compute in fp8)."""
    load_device = torch.device("cpu") if device == "cpu" else mm.text_encoder_device()
    chosen = DTYPES.get(dtype) or mm.text_encoder_dtype(load_device)
    if load_device.type == "cpu" and chosen != torch.float32:
        if dtype != "default":
            logging.warning("PEA: %s is not used on the CPU; the language CLIP runs in fp32", dtype)
        chosen = torch.float32
    elif chosen not in DTYPES.values():
        chosen = torch.float16
    return {"load_device": load_device, "offload_device": mm.text_encoder_offload_device(), "dtype": chosen}
