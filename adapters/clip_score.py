"""CLIPScore with a CLIP that reads the prompt's language: both towers of a local two-tower model.

A Chinese-CLIP folder (``ChineseCLIPModel``, as OFA-Sys publishes it), a Hugging Face CLIP or
AltCLIP folder, or a multilingual open_clip folder (xlm-roberta ViT-H, see README "Model files")
already holds a vision tower; this module loads both towers from local files only
(``trust_remote_code=False``, pickles through ``weights_only=True``), preprocesses images the
way the model's own image processor or open_clip transform does, and scores

    CLIPScore = 100 * max(cos(image embedding, text embedding), 0)

A text tower alone (a packed single file, a ``*_text_model`` folder, T5) cannot score images;
loading one raises :class:`~adapters.errors.EncoderLoadError` saying what is needed.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import transformers
from PIL import Image
from torch import nn

from .encoders.base import position_count
from .encoders.hf_text import hf_model_type, load_tokenizer, read_config
from .encoders.model_size import check_model_size
from .encoders.open_clip_text import (CONFIG_NAME as OPEN_CLIP_CONFIG, WEIGHT_NAMES as OPEN_CLIP_WEIGHTS,
                                      find_text_tower, import_open_clip, read_model_config)
from .encoders.tokenizer_guard import tokenizer_panics
from .encoders.weights import load_into, open_checkpoint, pick
from .errors import EncoderLoadError

NEEDS_VISION = (
    "CLIPScore needs a CLIP with its vision tower: the full two-tower model folder as published "
    "(Chinese-CLIP: OFA-Sys/chinese-clip-vit-huge-patch14 with config.json, pytorch_model.bin, vocab.txt, "
    "preprocessor_config.json; or a Hugging Face CLIP / AltCLIP folder), or an open_clip folder "
    "(open_clip_config.json, open_clip_pytorch_model.bin with the visual.* weights, the text tower's "
    "subfolder). See the pack's docs/evaluation.md.")

HF_TWO_TOWER = {
    # config model_type -> (transformers model class, image processor class used without a
    # preprocessor_config.json, padded text length: Chinese-CLIP's own 52, else the model's)
    "chinese_clip": ("ChineseCLIPModel", "ChineseCLIPImageProcessor", 52),
    "clip": ("CLIPModel", "CLIPImageProcessor", None),
    "altclip": ("AltCLIPModel", "CLIPImageProcessor", None),
}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE ``[B, H, W, C]`` in 0..1 -> 8-bit RGB images, quantised as Save Image writes them
    (so a score of the tensor equals the score of the saved PNG)."""
    pixels = np.clip(255.0 * images.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    return [Image.fromarray(p[..., :3]) for p in pixels]


def clip_score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """``100 * max(cos, 0)`` row by row (a single text row is compared with every image)."""
    cos = torch.nn.functional.cosine_similarity(image_embeddings.float(), text_embeddings.float(), dim=-1)
    return 100 * cos.clamp(min=0)


class ClipScorer(nn.Module):
    """A two-tower CLIP that embeds images and prompts; subclasses set the towers."""

    kind: str = ""

    def __init__(self, *, name: str, path: Path):
        super().__init__()
        self.name = name
        self.path = Path(path)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def text_tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    text_limit: int
    """The most tokens (specials included) the text tower reads; a longer text is cut to its start."""

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        raise NotImplementedError

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is longer than the text tower reads (then only its start is scored)."""
        return [n > self.text_limit for n in self.text_lengths(list(texts))]

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Projected image embeddings ``[B, D]`` (float32, not normalised)."""
        weight = next(self.parameters())  # (no ``device`` attribute: ComfyUI's ModelPatcher sets one)
        pixels = self.pixel_values([im.convert("RGB") for im in images]).to(weight.device, weight.dtype)
        return self._finite(self.image_features(pixels).float(), "image")

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings ``[B, D]`` (float32, not normalised)."""
        device = next(self.parameters()).device
        with tokenizer_panics(self.path):
            tokens = {k: v.to(device) for k, v in self.text_tokens(list(texts)).items()}
        return self._finite(self.text_features(tokens).float(), "text")

    def score(self, images: Sequence[Image.Image], texts: Sequence[str] | str) -> torch.Tensor:
        """CLIPScore of each image against its text (or one text for all images), ``[B]`` on the CPU."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if len(texts) not in (1, len(images)):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: give one text or one per image")
        return clip_score(self.embed_images(images), self.embed_texts(texts)).cpu()

    def _finite(self, features: torch.Tensor, what: str) -> torch.Tensor:
        if not torch.isfinite(features).all():
            raise FloatingPointError(
                f"{self.describe()} gave non-finite {what} embeddings (damaged weights, or an fp16 overflow: "
                f"run it in fp32)")
        return features

    def describe(self) -> str:
        return f"{self.kind} CLIP '{self.name}'"


def _features(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose pooler holds it (5)."""
    return output if torch.is_tensor(output) else output.pooler_output


class HFClipScorer(ClipScorer):
    """``ChineseCLIPModel`` / ``CLIPModel`` / ``AltCLIPModel`` with the folder's image processor."""

    def __init__(self, model, image_processor, tokenizer, *, kind: str, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_length = max_length

    def pixel_values(self, images):
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def text_tokens(self, texts):
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    @property
    def text_limit(self) -> int:
        return self.max_length

    def text_lengths(self, texts):
        return [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    def image_features(self, pixel_values):
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def text_features(self, tokens):
        return _features(self.model.get_text_features(**tokens))


class OpenCLIPScorer(ClipScorer):
    """An open_clip ``CustomTextCLIP`` (Hugging Face text tower) with its own eval transform."""

    kind = "open_clip"

    def __init__(self, model, transform, tokenizer, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.transform = transform
        self.tokenizer = tokenizer

    def pixel_values(self, images):
        return torch.stack([self.transform(im) for im in images])

    def text_tokens(self, texts):
        return {"text": self.tokenizer(texts)}

    @property
    def text_limit(self) -> int:
        return self.tokenizer.context_length

    def text_lengths(self, texts):
        return [len(ids) for ids in self.tokenizer.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    def image_features(self, pixel_values):
        return self.model.encode_image(pixel_values)

    def text_features(self, tokens):
        return self.model.encode_text(tokens["text"])


def _image_processor(folder: Path, model_type: str, image_size: int):
    if (folder / "preprocessor_config.json").is_file():
        try:
            return transformers.AutoImageProcessor.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise EncoderLoadError(f"{folder / 'preprocessor_config.json'} cannot be used: {e}") from e
    class_name = HF_TWO_TOWER[model_type][1]
    logging.warning("PEA: %s has no preprocessor_config.json; using %s at %d px with its default mean and std",
                    folder, class_name, image_size)
    return getattr(transformers, class_name)(size={"shortest_edge": image_size},
                                             crop_size={"height": image_size, "width": image_size})


def load_hf_scorer(folder: Path, dtype: torch.dtype = torch.float32) -> HFClipScorer:
    model_type = hf_model_type(check_scorer_path(folder))
    class_name, _, context = HF_TWO_TOWER[model_type]
    config = read_config(folder)
    for part in ("text_config", "vision_config"):
        if isinstance(config.get(part), dict):
            check_model_size(config[part], f"{folder / 'config.json'} ({part})")
    try:
        model, info = getattr(transformers, class_name).from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise EncoderLoadError(f"Cannot load the {class_name} in {folder}: {e}") from e
    missing = info["missing_keys"]
    if missing:
        vision = [k for k in missing if k.startswith(("vision_model.", "visual_projection"))]
        what = ("have no vision tower (missing " if vision else "do not fit its config.json (missing ")
        raise EncoderLoadError(f"The weights in {folder} {what}{sorted(vision or missing)[:3]} ...). {NEEDS_VISION}")
    text_config = model.config.text_config
    tokenizer = load_tokenizer(folder)
    positions = position_count(text_config) or tokenizer.model_max_length  # RoBERTa-style: less the pad offset
    max_length = context or min(tokenizer.model_max_length, positions)
    processor = _image_processor(folder, model_type, model.config.vision_config.image_size)
    return HFClipScorer(model.eval().requires_grad_(False), processor, tokenizer, kind=model_type,
                        max_length=max_length, name=folder.name, path=folder)


@contextlib.contextmanager
def _quiet_open_clip_random_init():
    """Drop open_clip's "initialized randomly" warning: the weights are loaded right after."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_open_clip_scorer(folder: Path, dtype: torch.dtype = torch.float32) -> OpenCLIPScorer:
    open_clip = import_open_clip()
    cfg = read_model_config(folder)
    if isinstance(cfg.get("vision_cfg"), dict):
        check_model_size(cfg["vision_cfg"], f"{folder / OPEN_CLIP_CONFIG} (vision_cfg)")
    with open_checkpoint(folder, OPEN_CLIP_WEIGHTS) as tensors:
        state = pick(tensors, lambda key: key)
    if not any(k.startswith("visual.") for k in state):
        found = next(n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file())
        raise EncoderLoadError(f"{folder / found} holds no vision tower (no visual.* weights). {NEEDS_VISION}")
    tower = find_text_tower(folder, cfg["text_cfg"]["hf_model_name"])
    check_model_size(read_config(tower) or {}, f"{tower / 'config.json'}")
    text_cfg = {**cfg["text_cfg"], "hf_model_name": str(tower), "hf_tokenizer_name": str(tower),
                "hf_model_pretrained": False}
    # open_clip's own factory builds the architecture and its eval preprocessing from the folder's
    # config; the text tower's config is read from the local subfolder, the weights from ours.
    with _quiet_open_clip_random_init():
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False,
                                       text_cfg=text_cfg)
    load_into(model, state, folder)
    transform = open_clip.transform.image_transform_v2(
        open_clip.transform.PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    load_tokenizer(tower)  # a clear error when the subfolder has no tokenizer files
    with tokenizer_panics(tower):
        tokenizer = open_clip.tokenizer.HFTokenizer(
            str(tower), context_length=text_cfg.get("context_length", 77),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            local_files_only=True, trust_remote_code=False, **text_cfg.get("tokenizer_kwargs", {}))
    return OpenCLIPScorer(model.to(dtype).eval().requires_grad_(False), transform, tokenizer,
                          name=folder.name, path=folder)


def check_scorer_path(path: str | os.PathLike) -> Path:
    """Fail early, without loading weights, where ``path`` cannot be a two-tower CLIP: missing, a
    single file, a config without a vision tower. The weights are checked when loading."""
    path = Path(path)
    if not path.exists():
        raise EncoderLoadError(f"CLIP for scoring not found: {path}")
    if path.is_file():
        raise EncoderLoadError(
            f"{path} is a single file: a language CLIP packed by this pack holds only its text tower. {NEEDS_VISION}")
    if (path / OPEN_CLIP_CONFIG).is_file():
        return path
    if not (path / "config.json").is_file():
        raise EncoderLoadError(f"{path} has neither config.json nor {OPEN_CLIP_CONFIG}. {NEEDS_VISION}")
    model_type = hf_model_type(path)
    if model_type not in HF_TWO_TOWER:
        raise EncoderLoadError(
            f"{path / 'config.json'} describes model_type {model_type!r}, a text encoder without a vision "
            f"tower (or not a CLIP). {NEEDS_VISION}")
    return path


def load_clip_scorer(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> ClipScorer:
    """Load both towers of the CLIP in a local folder for :meth:`ClipScorer.score`."""
    path = check_scorer_path(path)
    if (path / OPEN_CLIP_CONFIG).is_file():
        scorer = load_open_clip_scorer(path, dtype)
    else:
        scorer = load_hf_scorer(path, dtype)
    return scorer.to(device)
