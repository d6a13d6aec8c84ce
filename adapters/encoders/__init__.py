"""Language-encoder backends, loaded from local folders only (never from a hub)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import EncoderLoadError
from .base import LanguageEncoder, SpecialTokens, padding_mask
from .hf_text import HF_KINDS, hf_model_type, load_hf_encoder
from .open_clip_text import CONFIG_NAME as OPEN_CLIP_CONFIG, load_open_clip_encoder

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
    """Load a language encoder from a local folder; frozen, in eval mode, on ``device``/``dtype``.

    ``context_length`` overrides the padded length (default: the backend's PEA default).
    """
    path = Path(path)
    if not path.exists():
        raise EncoderLoadError(f"Language encoder not found: {path}")
    if not path.is_dir():
        raise EncoderLoadError(f"{path} is a file; language encoders are folders. {LAYOUT_HELP}")
    if not any(path.iterdir()):
        raise EncoderLoadError(f"Language encoder folder {path} is empty. {LAYOUT_HELP}")
    if (path / OPEN_CLIP_CONFIG).is_file():
        encoder = load_open_clip_encoder(path, context_length)
    elif hf_model_type(path) is not None:
        encoder = load_hf_encoder(path, context_length)
    else:
        raise EncoderLoadError(f"{path} has neither config.json nor {OPEN_CLIP_CONFIG}. {LAYOUT_HELP}")
    return encoder.to(device=device, dtype=dtype)


__all__ = ["ENCODER_KINDS", "LanguageEncoder", "SpecialTokens", "is_encoder_folder",
           "load_language_encoder", "padding_mask"]
