"""open_clip models with a Hugging Face text tower (xlm-roberta ViT, NLLB-CLIP, mT5 ViT).

Folder layout (the Hugging Face repos of these models, plus the text tower's own files)::

    xlm-roberta-large-ViT-H-14/
        open_clip_config.json            # {"model_cfg": {...}}: from the model repo
        open_clip_pytorch_model.bin      # or open_clip_model.safetensors
        xlm-roberta-large/               # config.json + tokenizer files of the text tower
                                         # (no weights needed: they are in the checkpoint)

Only the text tower is built, and only its tensors are read from the checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EncoderLoadError
from .base import LanguageEncoder
from .hf_text import load_tokenizer
from .weights import load_into, open_checkpoint, pick, under_prefix

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                "model.safetensors", "pytorch_model.bin")


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise EncoderLoadError(
            "open_clip models need the open_clip_torch package: pip install open_clip_torch") from e
    return open_clip


def read_model_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderLoadError(f"{path} cannot be read as JSON: {e}") from e
    cfg = data.get("model_cfg", data)
    if "hf_model_name" not in cfg.get("text_cfg", {}):
        raise EncoderLoadError(
            f"{path}: only open_clip models with a Hugging Face text tower are supported "
            f"(text_cfg.hf_model_name is missing)")
    return cfg


def find_text_tower(folder: Path, hf_name: str) -> Path:
    """The subfolder holding the text tower's config.json and tokenizer."""
    named = folder / hf_name.split("/")[-1]
    candidates = [named] + sorted(p for p in folder.iterdir() if p.is_dir() and p != named)
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise EncoderLoadError(
        f"{folder} needs the text tower's Hugging Face config and tokenizer: put config.json and "
        f"the tokenizer files of '{hf_name}' into {named}")


class OpenCLIPTextEncoder(LanguageEncoder):
    """The token states of an open_clip ``HFTextEncoder`` (``output_tokens=True``)."""

    kind = "open_clip"

    def __init__(self, text_tower, tokenizer, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.model = text_tower

    def hidden_states(self, input_ids, attention_mask):
        # open_clip masks padding itself (ids != pad_token_id), as in training.
        return self.model(input_ids)[1]


def load_open_clip_encoder(folder: Path, context_length: int | None = None) -> OpenCLIPTextEncoder:
    """Build the text tower of the open_clip model in ``folder`` and load its weights (CPU, fp32)."""
    open_clip = _import_open_clip()
    cfg = read_model_config(folder)
    text_cfg = open_clip.model.CLIPTextCfg(**cfg["text_cfg"])  # open_clip's own defaults
    tower_dir = find_text_tower(folder, text_cfg.hf_model_name)
    tower = open_clip.hf_model.HFTextEncoder(
        str(tower_dir), output_dim=cfg["embed_dim"], pooler_type=text_cfg.hf_pooler_type,
        proj_type=text_cfg.hf_proj_type, pretrained=False, output_tokens=True)
    with open_checkpoint(folder, WEIGHT_NAMES) as tensors:  # the text tower's tensors only
        state = pick(tensors, under_prefix(tensors.keys(), "text."))
    load_into(tower, state, folder)
    tower.eval().requires_grad_(False)
    hidden = getattr(tower.config, "d_model", None) or tower.config.hidden_size
    return OpenCLIPTextEncoder(
        tower, load_tokenizer(tower_dir), name=folder.name, path=folder, hidden_size=hidden,
        context_length=context_length or text_cfg.context_length, attention_mask=True)
