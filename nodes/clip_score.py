"""Language CLIP Score: rank a batch of images by CLIPScore against the prompt, in its language."""
from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ..adapters.clip_score import load_clip_scorer, to_pil
from .folders import find_language_clip, list_language_clips
from .language_clip import model_options
from .pea_nodes import CATEGORY, LANGUAGES, found_or_message

BLANK_STD = 0.01
"""An image whose every channel's pixel standard deviation (on the 0..1 scale, about 2.5 of 255
levels) is below this is flagged blank: a black, white or one-colour image, often a failed sample
or a safety filter's output, which CLIP may still score like any other."""

_loaded: dict[tuple, comfy.model_patcher.ModelPatcher] = {}
"""The last scorer loaded (one at a time), in a ModelPatcher so ComfyUI can offload it."""


def scorer_patcher(clip_name: str, device: str) -> comfy.model_patcher.ModelPatcher:
    """Both towers of a language CLIP from models/language_clip, loaded once and kept."""
    path = find_language_clip(clip_name)
    key = (path, os.path.getmtime(path), device)
    if key not in _loaded:
        _loaded.clear()
        options = model_options(device, "default")
        scorer = load_clip_scorer(path, dtype=options["dtype"])
        _loaded[key] = comfy.model_patcher.ModelPatcher(
            scorer, load_device=options["load_device"], offload_device=options["offload_device"])
    return _loaded[key]


def blank_images(images: torch.Tensor) -> list[bool]:
    """Whether each image of a ComfyUI IMAGE ``[B, H, W, C]`` is near-constant (see :data:`BLANK_STD`)."""
    spread = images.float().flatten(1, 2).std(dim=1, correction=0)  # [B, C]
    return (spread.amax(dim=1) < BLANK_STD).tolist()


def ranking_text(scores: list[float], order: list[int], truncated_at: int | None = None,
                 blank: list[bool] | None = None) -> str:
    """One line per image, best first, blank images flagged; ``truncated_at``: the token limit the
    prompt exceeded."""
    blank = blank or [False] * len(scores)
    lines = [f"{rank}. CLIPScore {scores[i]:.2f} (batch image {i + 1})"
             + (" - blank image (near-constant pixels)" if blank[i] else "") for rank, i in enumerate(order, start=1)]
    if truncated_at:
        lines.append(f"The prompt is longer than this CLIP reads ({truncated_at} tokens): only its start was scored.")
    return "\n".join(lines)


class PEALanguageCLIPScore:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to score, e.g. a batch from VAE Decode."}),
                "text": ("STRING", {"multiline": True,
                                    "tooltip": "The prompt, in its own language (the text the images were made from)."}),
                "clip_name": (list_language_clips(), {
                    "tooltip": "A CLIP with its vision tower that reads the prompt's language, in "
                               "models/language_clip: a full Chinese-CLIP folder, a multilingual open_clip "
                               "folder, or a Hugging Face CLIP folder. A packed text-only file cannot score."}),
                "device": (["default", "cpu"], {
                    "default": "default", "tooltip": "Where the CLIP runs; 'cpu' keeps VRAM for the UNet."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "scores", "ranking")
    OUTPUT_IS_LIST = (False, True, False)
    OUTPUT_TOOLTIPS = ("The images sorted best first (Image From Batch, index 0, keeps the best).",
                       "CLIPScore of each image, in the same order (100 x cosine of image and prompt, 0 at worst).",
                       "The ranking as text, with each image's place in the input batch (for Preview Any).")
    FUNCTION = "score"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["CLIPScore", "CLIP score", "rank images", "best of batch", "image score", *LANGUAGES,
                      "图像评分", "排序", "оценка изображений", "이미지 점수", "画像スコア"]
    DESCRIPTION = ("Scores each image against the prompt with a CLIP that reads the prompt's language "
                   "(CLIPScore = 100 x max(cos, 0)) and sorts the batch best first.")

    @classmethod
    def VALIDATE_INPUTS(cls, clip_name):
        return found_or_message(find_language_clip, clip_name)

    def score(self, images: torch.Tensor, text: str, clip_name: str, device: str = "default"):
        if not text.strip():
            raise ValueError("Language CLIP Score: the prompt is empty; connect or type the prompt the images were made from.")
        patcher = scorer_patcher(clip_name, device)
        mm.load_models_gpu([patcher])
        scores = patcher.model.score(to_pil(images), text)
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        values = scores.tolist()
        truncated_at = patcher.model.text_limit if patcher.model.truncated([text])[0] else None
        return (images[order], [values[i] for i in order],
                ranking_text(values, order, truncated_at, blank_images(images)))


NODE_CLASS_MAPPINGS = {"PEALanguageCLIPScore": PEALanguageCLIPScore}
NODE_DISPLAY_NAME_MAPPINGS = {"PEALanguageCLIPScore": "Language CLIP Score"}
