"""Language encoders built with ``transformers`` from a local Hugging Face model folder.

Covers Chinese-CLIP, CLIP-format text towers (English, Japanese, Korean, Italian, Russian
CLIPs published that way), AltCLIP and the T5 family (T5, mT5, umT5, byT5). The folder may
hold the full two-tower model or the text tower alone; only the text tower is built.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from ..errors import EncoderLoadError, json_type
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


def read_config(folder: Path) -> dict | None:
    """``folder/config.json`` as a dict, or None without one."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    return parse_json_object(path.read_bytes(), path)


def parse_json_object(data: bytes, where: str | Path) -> dict:
    """A JSON object (a config) from UTF-8 bytes; EncoderLoadError naming ``where`` otherwise."""
    try:
        config = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderLoadError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise EncoderLoadError(f"{where} is a JSON {json_type(config)}, expected an object")
    return config


def hf_model_type(folder: Path) -> str | None:
    """The ``model_type`` in ``folder/config.json``, or None without one."""
    config = read_config(folder)
    return None if config is None else config.get("model_type")


def hf_kind_for(config: dict, where: str | Path) -> HFKind:
    """The family of the model a config describes; ``where`` names the config in messages."""
    model_type = config.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        supported = ", ".join(sorted(_BY_MODEL_TYPE))
        raise EncoderLoadError(
            f"{where}: config.json has model_type {model_type!r}, which is not a supported "
            f"language encoder (supported: {supported})")
    return _BY_MODEL_TYPE[model_type]


VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
"""Files holding a tokenizer's vocabulary; ``tokenizer_config.json`` alone holds none."""


def _tokenizer_class(folder: Path):
    """The transformers tokenizer class ``folder`` names (tokenizer_config.json, else config.json),
    or None where it names none that transformers has."""
    for name in ("tokenizer_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            class_name = parse_json_object(path.read_bytes(), path).get("tokenizer_class")
            if isinstance(class_name, str):
                return getattr(transformers, class_name, None)
    return None


def _required_argument(tokenizer_class, name: str) -> bool:
    """Whether the tokenizer class cannot be built without its file argument ``name`` (Marian's
    ``target_vocab_file`` is optional; ``tokenizer_file`` always is)."""
    parameter = inspect.signature(tokenizer_class.__init__).parameters.get(name)
    return name != "tokenizer_file" and (parameter is None or parameter.default is inspect.Parameter.empty)


def _check_vocabulary_files(folder: Path, where: str | Path) -> None:
    """Refuse a tokenizer folder without its vocabulary (a tokenizer_config.json alone would load a
    tokenizer knowing only its special tokens: every prompt the same ``[UNK]`` ids)."""
    tokenizer_class = _tokenizer_class(folder)
    needed = None if tokenizer_class is None else [
        f for key, f in tokenizer_class.vocab_files_names.items() if _required_argument(tokenizer_class, key)]
    if needed == [] or (folder / "tokenizer.json").is_file():
        return  # byte-level tokenizers (ByT5) need no vocabulary file
    if needed is not None and all((folder / f).is_file() for f in needed):
        return
    if needed is None and any((folder / f).is_file() for f in VOCABULARY_FILES):
        return
    expected = (f"tokenizer.json or {' + '.join(needed)} ({tokenizer_class.__name__})" if needed
                else f"one of {', '.join(VOCABULARY_FILES)}")
    raise EncoderLoadError(f"No tokenizer vocabulary in {where}: expected {expected}")


def load_tokenizer(folder: Path, where: str | Path | None = None):
    """A tokenizer from local files only; never runs code from the folder. ``where`` names the
    folder in messages (default: ``folder``)."""
    where = where or folder
    if not any((folder / f).is_file() for f in ("tokenizer_config.json", *VOCABULARY_FILES)):
        raise EncoderLoadError(f"No tokenizer in {where}: expected tokenizer_config.json and one of "
                               f"{', '.join(VOCABULARY_FILES)}")
    _check_vocabulary_files(folder, where)
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise EncoderLoadError(
            f"No usable tokenizer in {where} (expected tokenizer.json, vocab.txt, spiece.model, "
            f"sentencepiece.bpe.model or vocab.json+merges.txt with tokenizer_config.json): {e}") from e


MIN_VOCABULARY_SHARE = 0.5
"""A tokenizer knowing fewer tokens than this share of the embedding's rows is the wrong one
(embeddings are often padded to a multiple of 64 or 128 rows: a few more rows are normal)."""


def check_vocabulary(tokenizer, rows: int, where: str | Path) -> None:
    """Refuse a tokenizer that does not fit an embedding of ``rows`` tokens: ids beyond it, far
    fewer tokens than it, or special tokens missing from its vocabulary."""
    vocabulary = tokenizer.get_vocab()
    largest = max(vocabulary.values(), default=-1)
    if largest >= rows:
        raise EncoderLoadError(
            f"The tokenizer in {where} gives token ids up to {largest}, but the model embeds only {rows} "
            f"tokens: the tokenizer belongs to another model")
    if len(tokenizer) < MIN_VOCABULARY_SHARE * rows:
        raise EncoderLoadError(
            f"The tokenizer in {where} knows {len(tokenizer)} tokens, but the model embeds {rows}: its "
            f"vocabulary file is missing or belongs to another model")
    if tokenizer.pad_token is None:
        raise EncoderLoadError(
            f"The tokenizer in {where} has no padding token (pad_token in its tokenizer_config.json or "
            f"special_tokens_map.json): prompts cannot be padded to the context length")
    for attribute in ("pad_token", "bos_token", "eos_token", "cls_token", "sep_token"):
        token = getattr(tokenizer, attribute, None)
        if token is not None and str(token) not in vocabulary:
            raise EncoderLoadError(
                f"The tokenizer in {where} names {str(token)!r} as its {attribute.replace('_', ' ')}, but its "
                f"vocabulary has no such token")


def _load_text_tower(where: Path, config: dict, class_name: str, attr: str | None, dtype: torch.dtype,
                     weights: dict | None) -> torch.nn.Module:
    """``from_pretrained`` (local files, no remote code), keeping only the text tower.

    Reads the folder ``where``, or, with ``weights`` (a state dict, or lazily read safetensors
    slices of the file ``where``), builds the model ``config`` describes from them. transformers
    does the key conversions of its own version; a two-tower folder is loaded whole and its
    vision tower dropped.
    """
    model_class = getattr(transformers, class_name)
    extra = {"add_pooling_layer": False} if class_name == "ChineseCLIPTextModel" else {}
    try:
        if weights is not None:
            extra.update(config=model_class.config_class.from_dict(config), state_dict=weights)
        model, info = model_class.from_pretrained(
            None if weights is not None else str(where), local_files_only=True, trust_remote_code=False,
            output_loading_info=True, dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise EncoderLoadError(f"Cannot load the {class_name} in {where}: {e}") from e
    missing = [k for k in info["missing_keys"] if attr is None or k.startswith(f"{attr}.")]
    if missing:
        raise EncoderLoadError(
            f"Weights in {where} do not fit the model its config.json describes: missing "
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
    return build_hf_encoder(read_config(folder) or {}, folder, folder, context_length=context_length,
                            attention_mask=attention_mask, dtype=dtype)


def build_hf_encoder(config: dict, tokenizer_folder: Path, where: Path, *, context_length: int | None = None,
                     attention_mask: bool | None = None, dtype: torch.dtype = torch.float32,
                     weights: dict | None = None) -> HFTextEncoder:
    """The text tower ``config`` describes, behind the tokenizer in ``tokenizer_folder``; its weights
    read from the folder ``where`` or given as ``weights`` (see :func:`_load_text_tower`)."""
    kind = hf_kind_for(config, where)
    tokenizer = load_tokenizer(tokenizer_folder, where)
    class_name, attr = kind.model_types[config["model_type"]]
    model = _load_text_tower(where, config, class_name, attr, dtype, weights).eval().requires_grad_(False)
    check_vocabulary(tokenizer, model.get_input_embeddings().num_embeddings, where)
    config = model.config
    byt5 = _is_byt5(tokenizer)
    if context_length is None:
        context_length = 256 if byt5 else (kind.default_context or config.max_position_embeddings)
    if attention_mask is None:
        attention_mask = not byt5
    hidden = getattr(config, "project_dim", None) if kind.kind == "altclip" else None
    hidden = hidden or getattr(config, "d_model", None) or config.hidden_size
    return HFTextEncoder(model, tokenizer, kind=kind.kind, name=where.name, path=where, hidden_size=hidden,
                         context_length=context_length, attention_mask=attention_mask)
