"""Language-encoder backends, loaded from local folders only (never from a hub)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import EncoderLoadError
from ..finite import check_finite
from .base import LanguageEncoder, SpecialTokens, padding_mask
from .hf_text import HF_KINDS, hf_model_type, load_hf_encoder
from .open_clip_text import CONFIG_NAME as OPEN_CLIP_CONFIG, load_open_clip_encoder
from .single_file import load_packed
from .weight_storage import FP8_DTYPES

ENCODER_KINDS = tuple(k.kind for k in HF_KINDS) + ("open_clip",)

LAYOUT_HELP = (
    "Expected a Hugging Face model folder (config.json, model.safetensors or pytorch_model.bin, "
    "tokenizer files) or an open_clip folder (open_clip_config.json, open_clip_pytorch_model.bin "
    "and a subfolder with the text tower's config.json and tokenizer). See README, 'Model files'.")


def is_encoder_folder(folder: Path) -> bool:
    """True where ``folder`` looks like a model we can load (used for listing)."""
    return (folder / "config.json").is_file() or (folder / OPEN_CLIP_CONFIG).is_file()


def load_language_encoder(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32,
                          context_length: int | None = None) -> LanguageEncoder:
    """Load a language encoder from a local folder or a packed single file.

    Frozen, in eval mode, on ``device``, in ``dtype``. ``context_length`` overrides the padded
    length (default: the backend's PEA default). Plain PyTorch modules: the ComfyUI nodes put
    their layers on ComfyUI's weight casting (and fp8 storage) after loading. Weights that are NaN
    or infinite in ``dtype`` are refused.
    """
    path = Path(path)
    if not path.exists():
        raise EncoderLoadError(f"Language encoder not found: {path}")
    if path.is_file():
        encoder = load_packed(path, context_length, dtype)
    else:
        encoder = _load_folder(path, context_length, dtype)
    encoder.to(dtype)  # open_clip towers load in fp32
    check_finite([*encoder.model.named_parameters(), *encoder.model.named_buffers()],
                 f"Language encoder {path}, loaded as {dtype}", EncoderLoadError)
    return encoder.to(device=device)


def _load_folder(path: Path, context_length: int | None, dtype: torch.dtype) -> LanguageEncoder:
    if not any(path.iterdir()):
        raise EncoderLoadError(f"Language encoder folder {path} is empty. {LAYOUT_HELP}")
    if (path / OPEN_CLIP_CONFIG).is_file():
        return load_open_clip_encoder(path, context_length)
    if hf_model_type(path) is not None:
        return load_hf_encoder(path, context_length, dtype=dtype)
    raise EncoderLoadError(f"{path} has neither config.json nor {OPEN_CLIP_CONFIG}. {LAYOUT_HELP}")


__all__ = ["ENCODER_KINDS", "FP8_DTYPES", "LanguageEncoder", "SpecialTokens", "is_encoder_folder",
           "load_language_encoder", "padding_mask"]
