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

from pathlib import Path

from ..errors import EncoderLoadError
from ..json_text import parse_json_object
from .base import LanguageEncoder, check_context_length, position_count
from .hf_text import check_vocabulary, load_tokenizer, read_config
from .model_size import check_model_size
from .weights import load_into, open_checkpoint, pick, under_prefix

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                "model.safetensors", "pytorch_model.bin")


def import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise EncoderLoadError(
            "open_clip models need the open_clip_torch package: pip install open_clip_torch") from e
    return open_clip


def model_config(data: dict, where: str | Path) -> dict:
    """The model config in an ``open_clip_config.json`` (read as ``data``), checked to have a
    Hugging Face text tower."""
    cfg = data.get("model_cfg", data)
    text_cfg = cfg.get("text_cfg") if isinstance(cfg, dict) else None
    if not isinstance(text_cfg, dict) or not isinstance(text_cfg.get("hf_model_name"), str):
        raise EncoderLoadError(
            f"{where}: only open_clip models with a Hugging Face text tower are supported "
            f"(text_cfg.hf_model_name is missing)")
    if "context_length" in text_cfg:
        check_context_length(text_cfg["context_length"], f"{where}: text_cfg.context_length")
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


def read_model_config(folder: Path) -> dict:
    """The checked model config of the open_clip folder ``folder``."""
    path = folder / CONFIG_NAME
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EncoderLoadError(f"{path} cannot be read: {e}") from e
    return model_config(parse_json_object(data, path), path)


def load_open_clip_encoder(folder: Path, context_length: int | None = None) -> OpenCLIPTextEncoder:
    """Build the text tower of the open_clip model in ``folder`` and load its weights (CPU, fp32)."""
    cfg = read_model_config(folder)
    tower_dir = find_text_tower(folder, cfg["text_cfg"]["hf_model_name"])
    with open_checkpoint(folder, WEIGHT_NAMES) as tensors:  # the text tower's tensors only
        state = pick(tensors, under_prefix(tensors.keys(), "text."))
    return build_open_clip_encoder(cfg, tower_dir, state, folder, context_length=context_length)


def build_open_clip_encoder(cfg: dict, tower_dir: Path, state: dict, where: Path, *,
                            context_length: int | None = None, tower_where: str | Path | None = None
                            ) -> OpenCLIPTextEncoder:
    """The text tower of the open_clip model ``cfg``: its Hugging Face config and tokenizer in
    ``tower_dir``, its weights in ``state`` (without the checkpoint's ``text.`` prefix). ``where`` names the model and
    ``tower_where`` the tower's files in messages."""
    tower_where = tower_where or tower_dir
    check_model_size(read_config(tower_dir) or {}, f"{tower_where} (its config.json)")
    open_clip = import_open_clip()
    try:
        text_cfg = open_clip.model.CLIPTextCfg(**cfg["text_cfg"])  # open_clip's own defaults
        tower = open_clip.hf_model.HFTextEncoder(
            str(tower_dir), output_dim=cfg["embed_dim"], pooler_type=text_cfg.hf_pooler_type,
            proj_type=text_cfg.hf_proj_type, pretrained=False, output_tokens=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise EncoderLoadError(f"Cannot build the open_clip text tower of {where}: {e}") from e
    load_into(tower, state, where)
    tower.eval().requires_grad_(False)
    tokenizer = load_tokenizer(tower_dir, tower_where)
    check_vocabulary(tokenizer, tower.transformer.get_input_embeddings().num_embeddings, tower_where)
    hidden = getattr(tower.config, "d_model", None) or tower.config.hidden_size
    context_length = check_context_length(context_length or text_cfg.context_length,
                                          f"Language encoder {where}: context length",
                                          positions=position_count(tower.config))
    return OpenCLIPTextEncoder(tower, tokenizer, name=where.name, path=where, hidden_size=hidden,
                               context_length=context_length, attention_mask=True)
