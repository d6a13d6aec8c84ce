"""Language encoders built with ``transformers`` from a local Hugging Face model folder.

Covers Chinese-CLIP, CLIP-format text towers (English, Japanese, Korean, Italian, Russian
CLIPs published that way), AltCLIP and the T5 family (T5, mT5, umT5, byT5). The folder may
hold the full two-tower model or the text tower alone; only the text tower is built, and only
its tensors are read from the checkpoint.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import huggingface_hub.errors
import torch
import transformers

from ..errors import EncoderLoadError, TokenizerError, shown
from ..json_text import parse_json_object
from .base import LanguageEncoder, check_context_length, position_count
from .model_size import check_model_size
from .tokenizer_guard import tokenizer_panics
from .weights import TensorSource, open_checkpoint, pick


@dataclass(frozen=True)
class TextTower:
    """Where a checkpoint keeps its text tower, and how transformers builds it."""

    class_name: str
    """The transformers class built."""
    prefixes: tuple[str, ...] = ()
    """Name prefixes of the text tower's tensors in the checkpoint (only these are read); () = all."""
    attr: str | None = None
    """For a two-tower class: the attribute holding the text tower. Its vision tower is built one
    layer of width 8 (nothing of the real one is built or read), so that transformers applies the
    whole model's key conversions to the text tower's tensors."""
    text_config: bool = False
    """Build the class from the config's ``text_config`` (a text class that reads the two-tower
    checkpoint's tensor names itself, as CLIPTextModel does)."""


CONFIG_FIELD_ERROR = getattr(huggingface_hub.errors, "StrictDataclassError", ValueError)
"""What transformers 5 raises for a config field of the wrong type (4.x raised ValueError/TypeError)."""
TINY_VISION = dict(hidden_size=8, intermediate_size=8, num_attention_heads=1, num_hidden_layers=1,
                   image_size=16, patch_size=16)
"""The stand-in vision tower config of a two-tower class built for its text tower only."""


@dataclass(frozen=True)
class HFKind:
    """How one family of Hugging Face checkpoints maps onto a text tower."""

    kind: str
    model_types: dict[str, TextTower]
    """config ``model_type`` -> its text tower."""
    default_context: int | None
    """Padded length used by PEA; None means the model's ``max_position_embeddings``."""


_T5_ENCODER = ("shared.", "encoder.")
HF_KINDS = (
    HFKind("chinese_clip", {"chinese_clip": TextTower("ChineseCLIPModel", ("text_model.",), "text_model"),
                            "chinese_clip_text_model": TextTower("ChineseCLIPTextModel")}, 52),
    HFKind("clip", {"clip": TextTower("CLIPTextModel", ("text_model.",), text_config=True),
                    "clip_text_model": TextTower("CLIPTextModel")}, None),
    HFKind("altclip", {"altclip": TextTower("AltCLIPModel", ("text_model.",), "text_model"),
                       "altclip_text_model": TextTower("AltCLIPTextModel")}, 77),
    HFKind("t5", {"t5": TextTower("T5EncoderModel", _T5_ENCODER), "mt5": TextTower("MT5EncoderModel", _T5_ENCODER),
                  "umt5": TextTower("UMT5EncoderModel", _T5_ENCODER)}, 77),
)
_BY_MODEL_TYPE = {mt: k for k in HF_KINDS for mt in k.model_types}


def read_config(folder: Path) -> dict | None:
    """``folder/config.json`` as a dict, or None without one."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    return parse_json_object(path.read_bytes(), path)


def hf_model_type(folder: Path) -> str | None:
    """The ``model_type`` in ``folder/config.json``, or None without one."""
    config = read_config(folder)
    return None if config is None else config.get("model_type")


def hf_kind(config: dict, where: str | Path) -> HFKind:
    """The family of the model a config describes; ``where`` names the config in messages."""
    model_type = config.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        supported = ", ".join(sorted(_BY_MODEL_TYPE))
        raise EncoderLoadError(
            f"{where} has model_type {model_type!r}, which is not a supported "
            f"language encoder (supported: {supported})")
    return _BY_MODEL_TYPE[model_type]


VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
"""Files holding a tokenizer's vocabulary; ``tokenizer_config.json`` alone holds none."""


GENERIC_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")
"""Tokenizer classes built from ``tokenizer.json`` alone, accepted for every model type."""
TOKENIZERS_BY_MODEL_TYPE = {
    "chinese_clip": ("BertTokenizer",), "chinese_clip_text_model": ("BertTokenizer",),
    "clip": ("CLIPTokenizer", "XLMRobertaTokenizer", "BertTokenizer"),
    "clip_text_model": ("CLIPTokenizer", "XLMRobertaTokenizer", "BertTokenizer"),
    "altclip": ("XLMRobertaTokenizer",), "altclip_text_model": ("XLMRobertaTokenizer",),
    "t5": ("T5Tokenizer", "ByT5Tokenizer"), "mt5": ("T5Tokenizer", "MT5Tokenizer", "ByT5Tokenizer"),
    "umt5": ("T5Tokenizer",), "xlm-roberta": ("XLMRobertaTokenizer",),
    "m2m_100": ("NllbTokenizer", "M2M100Tokenizer"), "marian": ("MarianTokenizer",),
}
"""Tokenizer classes the models of each config ``model_type`` are published with (the pack's
encoders, open_clip text towers, scorers and translators), besides transformers' own choice for
the type; each also as its ``...Fast`` variant."""


def accepted_tokenizers(model_type: object) -> set[str]:
    """The tokenizer class names a folder whose config has ``model_type`` may name."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    mapped = TOKENIZER_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None
    mapped = (mapped,) if isinstance(mapped, str) else tuple(n for n in mapped or () if n)
    names = {*TOKENIZERS_BY_MODEL_TYPE.get(model_type, ()), *mapped}
    fast = {n + "Fast" for n in names - set(GENERIC_TOKENIZERS) if not n.endswith("Fast")}
    return {*GENERIC_TOKENIZERS, *names, *fast}


def _tokenizer_class(folder: Path, where: str | Path):
    """The transformers tokenizer class ``folder`` names (tokenizer_config.json, else config.json),
    or None where it names none. A class not made for the folder's model type is refused: a
    tokenizer_config.json must not make transformers build something else."""
    config = read_config(folder) or {}
    for name in ("tokenizer_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            class_name = parse_json_object(path.read_bytes(), path).get("tokenizer_class")
            if class_name is None:
                continue
            accepted = accepted_tokenizers(config.get("model_type"))
            if not isinstance(class_name, str) or class_name not in accepted:
                raise TokenizerError(
                    f"{where}: {name} names tokenizer_class {shown(class_name)}, which is not a tokenizer for "
                    f"model_type {shown(config.get('model_type'))} (accepted: {', '.join(sorted(accepted))})")
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
    tokenizer_class = _tokenizer_class(folder, where)
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
        with tokenizer_panics(where):
            return transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, CONFIG_FIELD_ERROR) as e:
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


@contextlib.contextmanager
def _without_load_report(stand_in: bool) -> Iterator[None]:
    """Drop transformers' loading warnings while a stand-in vision tower is built: they would list
    the stand-in's weights as missing. (Missing text-tower weights are raised as errors.)"""
    logger = logging.getLogger("transformers.modeling_utils")

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING

    if stand_in:
        logger.addFilter(errors_only)
    try:
        yield
    finally:
        logger.removeFilter(errors_only)


def tower_config(config: dict, where: Path) -> tuple[TextTower, transformers.PretrainedConfig]:
    """The text tower a ``config.json`` dict describes, and the transformers config it is built from."""
    tower = check_text_config(config, f"{where} (its config.json)").model_types[config["model_type"]]
    if tower.attr is not None:  # (older configs repeat the vision config as vision_config_dict)
        config = {**{k: v for k, v in config.items() if k != "vision_config_dict"}, "vision_config": TINY_VISION}
    try:
        model_config = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(config)
    except (ValueError, TypeError, KeyError, CONFIG_FIELD_ERROR) as e:
        raise EncoderLoadError(f"{where}: config.json does not describe a {config['model_type']} model: {e}") from e
    return tower, model_config.text_config if tower.text_config else model_config


def check_text_config(config: dict, where: str | Path) -> HFKind:
    """The family of the model a ``config.json`` dict describes, its text tower's sizes checked
    against the parameter budget (:func:`~adapters.encoders.model_size.check_model_size`)."""
    kind = hf_kind(config, where)
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    check_model_size(text, str(where))
    return kind


def build_text_tower(config: dict, tensors: TensorSource, dtype: torch.dtype, where: Path) -> torch.nn.Module:
    """The text tower ``config`` describes, with its weights from ``tensors`` (frozen, CPU, ``dtype``).

    Only the tower's tensors are read: a two-tower model's vision tower and an encoder-decoder's
    decoder stay in the file. ``from_pretrained`` builds the tower from them (no remote code), so
    transformers' own key conversions of its version apply. ``where``: the source, for messages.
    """
    tower, model_config = tower_config(config, where)
    state = pick(tensors, lambda key: key if not tower.prefixes or key.startswith(tower.prefixes) else None, dtype)
    if not state:
        raise EncoderLoadError(f"No weights of the {tower.class_name} in {where} (expected tensors named "
                               f"{' or '.join(p + '*' for p in tower.prefixes)})")
    extra = {"add_pooling_layer": False} if tower.class_name == "ChineseCLIPTextModel" else {}
    try:
        with _without_load_report(tower.attr is not None):
            model, info = getattr(transformers, tower.class_name).from_pretrained(
                None, config=model_config, state_dict=state, dtype=dtype, output_loading_info=True, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise EncoderLoadError(f"Cannot load the {tower.class_name} in {where}: {e}") from e
    missing = sorted(k for k in info["missing_keys"] if tower.attr is None or k.startswith(f"{tower.attr}."))
    if missing:
        raise EncoderLoadError(
            f"Weights in {where} do not fit the model its config.json describes: missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model = getattr(model, tower.attr) if tower.attr else model
    return model.eval().requires_grad_(False)


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


def hf_encoder_from_parts(config: dict, tokenizer, tensors: TensorSource, *, name: str, path: Path,
                          context_length: int | None = None, attention_mask: bool | None = None,
                          dtype: torch.dtype = torch.float32) -> HFTextEncoder:
    """A language encoder from its parts: the ``config.json`` dict, a loaded tokenizer and the
    checkpoint's tensors (a folder's files, or a packed file's ``safe_open`` handle).

    ``name``/``path`` name the encoder (and the source in messages); ``context_length`` and
    ``attention_mask`` default to PEA's choices for the family (byT5: 256 bytes, unmasked).
    """
    kind = hf_kind(config, path)
    model = build_text_tower(config, tensors, dtype, path)
    check_vocabulary(tokenizer, model.get_input_embeddings().num_embeddings, path)
    byt5 = _is_byt5(tokenizer)
    if context_length is None:
        context_length = 256 if byt5 else (kind.default_context or model.config.max_position_embeddings)
    check_context_length(context_length, f"Language encoder {path}: context length",
                         positions=position_count(model.config))
    if attention_mask is None:
        attention_mask = not byt5
    hidden = getattr(model.config, "project_dim", None) if kind.kind == "altclip" else None
    hidden = hidden or getattr(model.config, "d_model", None) or model.config.hidden_size
    return HFTextEncoder(model, tokenizer, kind=kind.kind, name=name, path=path, hidden_size=hidden,
                         context_length=context_length, attention_mask=attention_mask)


def load_hf_encoder(folder: Path, context_length: int | None = None, attention_mask: bool | None = None,
                    dtype: torch.dtype = torch.float32) -> HFTextEncoder:
    """The text tower of the model in ``folder`` (config.json, tokenizer, weights), CPU, ``dtype``."""
    config = read_config(folder)
    if config is None:
        raise EncoderLoadError(f"{folder} has no config.json")
    check_text_config(config, folder / "config.json")  # named before the tokenizer reads the config
    tokenizer = load_tokenizer(folder)
    with open_checkpoint(folder) as tensors:
        return hf_encoder_from_parts(config, tokenizer, tensors, name=folder.name, path=folder,
                                     context_length=context_length, attention_mask=attention_mask, dtype=dtype)
