"""Language encoders built with ``transformers`` from a local Hugging Face model folder.

Covers Chinese-CLIP, CLIP-format text towers (English, Japanese, Korean, Italian, Russian
CLIPs published that way), AltCLIP and the T5 family (T5, mT5, umT5, byT5). The folder may
hold the full two-tower model or the text tower alone; only the text tower is built.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from ..errors import EncoderLoadError
from .base import LanguageEncoder


@dataclass(frozen=True)
class HFKind:
    """How one family of Hugging Face checkpoints maps onto a text tower."""

    kind: str
    model_types: dict[str, tuple[str, str | None]]
    """config ``model_type`` -> (transformers class to load, attribute holding the text tower)."""
    default_context: int | None
    """Padded length used by PEA; None means the model's ``max_position_embeddings``."""


HF_KINDS = (
    HFKind("chinese_clip", {"chinese_clip": ("ChineseCLIPModel", "text_model"),
                            "chinese_clip_text_model": ("ChineseCLIPTextModel", None)}, 52),
    HFKind("clip", {"clip": ("CLIPTextModel", None), "clip_text_model": ("CLIPTextModel", None)}, None),
    HFKind("altclip", {"altclip": ("AltCLIPModel", "text_model"),
                       "altclip_text_model": ("AltCLIPTextModel", None)}, 77),
    HFKind("t5", {"t5": ("T5EncoderModel", None), "mt5": ("MT5EncoderModel", None),
                  "umt5": ("UMT5EncoderModel", None)}, 77),
)
_BY_MODEL_TYPE = {mt: k for k in HF_KINDS for mt in k.model_types}


def hf_model_type(folder: Path) -> str | None:
    """The ``model_type`` in ``folder/config.json``, or None without one."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderLoadError(f"{cfg} is not valid JSON: {e}") from e


def hf_kind_for(folder: Path) -> HFKind:
    model_type = hf_model_type(folder)
    if model_type not in _BY_MODEL_TYPE:
        supported = ", ".join(sorted(_BY_MODEL_TYPE))
        raise EncoderLoadError(
            f"{folder / 'config.json'} has model_type {model_type!r}, which is not a supported "
            f"language encoder (supported: {supported})")
    return _BY_MODEL_TYPE[model_type]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def load_tokenizer(folder: Path):
    """A tokenizer from local files only; never runs code from the folder."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise EncoderLoadError(f"No tokenizer in {folder}: expected one of {', '.join(TOKENIZER_FILES)}")
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise EncoderLoadError(
            f"No usable tokenizer in {folder} (expected tokenizer.json, vocab.txt, spiece.model, "
            f"sentencepiece.bpe.model or vocab.json+merges.txt with tokenizer_config.json): {e}") from e


def _load_text_tower(folder: Path, class_name: str, attr: str | None, dtype: torch.dtype) -> torch.nn.Module:
    """``from_pretrained`` (local files, no remote code), keeping only the text tower.

    transformers does the key conversions of its own version; a two-tower folder is loaded
    whole and its vision tower dropped.
    """
    model_class = getattr(transformers, class_name)
    extra = {"add_pooling_layer": False} if class_name == "ChineseCLIPTextModel" else {}
    try:
        model, info = model_class.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True, dtype=dtype,
            **extra)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise EncoderLoadError(f"Cannot load the {class_name} in {folder}: {e}") from e
    missing = [k for k in info["missing_keys"] if attr is None or k.startswith(f"{attr}.")]
    if missing:
        raise EncoderLoadError(
            f"Weights in {folder} do not fit the model its config.json describes: missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return getattr(model, attr) if attr else model


class HFTextEncoder(LanguageEncoder):
    """A transformers text tower; returns ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, kind: str, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.kind = kind
        self.model = model

    def hidden_states(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _is_byt5(tokenizer) -> bool:
    return type(tokenizer).__name__.startswith("ByT5")


def load_hf_encoder(folder: Path, context_length: int | None = None, attention_mask: bool | None = None,
                    dtype: torch.dtype = torch.float32) -> HFTextEncoder:
    """Build the text tower described by ``folder/config.json`` and load its weights (CPU, ``dtype``)."""
    kind = hf_kind_for(folder)
    class_name, attr = kind.model_types[hf_model_type(folder)]
    tokenizer = load_tokenizer(folder)
    model = _load_text_tower(folder, class_name, attr, dtype).eval().requires_grad_(False)
    config = model.config
    byt5 = _is_byt5(tokenizer)
    if context_length is None:
        context_length = 256 if byt5 else (kind.default_context or config.max_position_embeddings)
    if attention_mask is None:
        attention_mask = not byt5
    hidden = getattr(config, "project_dim", None) if kind.kind == "altclip" else None
    hidden = hidden or getattr(config, "d_model", None) or config.hidden_size
    return HFTextEncoder(model, tokenizer, kind=kind.kind, name=folder.name, path=folder, hidden_size=hidden, context_length=context_length,
                         attention_mask=attention_mask)
