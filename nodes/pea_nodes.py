"""The prompt nodes of the pack: Load Language CLIP, Apply PEA Adapter, PEA Encode Prompt (the fourth
node, PEA CLIPScore, is in clip_score.py); the category, languages and name checks they share."""
from __future__ import annotations

import folder_paths
import nodes as comfy_nodes

from ..adapters import IncompatibleError, load_adapter
from ..adapters.encoders.base import MAX_CONTEXT_LENGTH
from ..adapters.families import family_of, model_label
from ..adapters.pairing import check_base_model, check_pairing
from .folders import PEA_ADAPTERS, find_adapter, find_language_clip, list_language_clips
from .language_clip import DTYPE_CHOICES, LANGUAGE_CLIP_TYPE, LanguageClip, load_language_clip
from .pea_clip import adapter_clip

CATEGORY = f"{comfy_nodes.CLIPTextEncode.CATEGORY}/PEA"
"""Beside the release's own text encode nodes: conditioning/PEA, or model/conditioning/PEA on
releases that moved the conditioning nodes (0.38)."""
LANGUAGES = ["multilingual", "Chinese", "Russian", "Korean", "Japanese", "non-English", "translate",
             "中文", "多语言", "翻译", "русский", "перевод", "한국어", "번역", "日本語", "翻訳"]
"""Search terms shared by the three nodes: what people look for when they want to prompt in
their language (ComfyUI's node search reads ``SEARCH_ALIASES``)."""


NOT_CONNECTED = object()
"""Default of an optional input left unconnected. ComfyUI passes None for one connected to an output
that holds nothing, e.g. the CLIP of a checkpoint without a text encoder."""


def found_or_message(find, name: str) -> bool | str:
    try:
        find(name)
    except FileNotFoundError as e:
        return str(e)
    return True


class PEALoadLanguageCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": (list_language_clips(), {
                    "tooltip": "A language text encoder folder in models/language_clip "
                               "(Chinese-CLIP, a multilingual open_clip model, AltCLIP, mT5, ...)."}),
                "dtype": (DTYPE_CHOICES, {
                    "default": "default",
                    "tooltip": "Weight dtype. 'default' follows ComfyUI; the CPU computes in fp32. fp8 stores "
                               "the encoder's matrices in 8 bits (half of bf16's memory, e.g. for byT5-xxl "
                               "beside FLUX) and computes in bf16/fp16."}),
                "device": (["default", "cpu"], {
                    "default": "default", "tooltip": "Where the encoder runs; 'cpu' keeps VRAM for the UNet."}),
            },
            "optional": {
                "context_length": ("INT", {
                    "default": 0, "min": 0, "max": MAX_CONTEXT_LENGTH,
                    "tooltip": "Padded token length. 0: the length PEA adapters use for this encoder "
                               "(Chinese-CLIP 52, byT5 256, others 77). Must match the adapter's."}),
            },
        }

    RETURN_TYPES = (LANGUAGE_CLIP_TYPE,)
    RETURN_NAMES = ("language_clip",)
    OUTPUT_TOOLTIPS = ("The language encoder; connect it to Apply PEA Adapter.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["language CLIP", "Chinese CLIP", "text encoder", "语言 CLIP", "文本编码器", *LANGUAGES]
    DESCRIPTION = "Loads a language-specific CLIP text encoder for PEA adapters, from models/language_clip."

    @classmethod
    def VALIDATE_INPUTS(cls, clip_name):
        return found_or_message(find_language_clip, clip_name)

    def load(self, clip_name, dtype, device, context_length=0):
        return (load_language_clip(find_language_clip(clip_name), dtype=dtype, device=device,
                                   context_length=context_length or None),)


class PEAApplyAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "language_clip": (LANGUAGE_CLIP_TYPE, {"tooltip": "From Load Language CLIP."}),
                "adapter_name": (folder_paths.get_filename_list(PEA_ADAPTERS), {
                    "tooltip": "A PEA adapter in models/pea_adapters (ours or the official pytorch_model.bin)."}),
            },
            "optional": {
                "model": ("MODEL", {
                    "tooltip": "Optional: the checkpoint's MODEL, to check that the adapter is made for "
                               "its family (SD1.5, SDXL or FLUX.1) before sampling."}),
                "clip": ("CLIP", {
                    "tooltip": "Optional: the checkpoint's own CLIP (or LoraLoader's clip output; for FLUX.1 "
                               "DualCLIPLoader's). Then `English spans` in backticks and embedding:name in prompts "
                               "go to it, with its embeddings and LoRA, their tokens after PEA's (SDXL: from text_g; "
                               "FLUX.1: from t5xxl, through T5); the rest, and the pooled vector, come from the "
                               "language encoder and adapter."}),
            },
        }

    RETURN_TYPES = ("CLIP",)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("A CLIP that reads prompts in the encoder's languages; use it with any text encode node.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["PEA adapter", "PEA-Diffusion", "Chinese prompt", "适配器", "中文提示词", *LANGUAGES]
    DESCRIPTION = ("Puts a PEA adapter behind a language encoder and returns a regular CLIP, so "
                   "CLIPTextEncode, CLIPTextEncodeSDXL and PEA Encode Prompt take non-English prompts. With the "
                   "checkpoint's CLIP connected, `English spans` and embeddings go to that CLIP.")

    @classmethod
    def VALIDATE_INPUTS(cls, adapter_name):
        return found_or_message(find_adapter, adapter_name)

    def apply(self, language_clip: LanguageClip, adapter_name: str, model=None, clip=NOT_CONNECTED):
        if clip is None:
            raise IncompatibleError(
                "Apply PEA Adapter: the clip input is connected but receives no CLIP (None), as a checkpoint loader "
                "gives for a checkpoint without a text encoder. Connect the text encoders of the checkpoint's family "
                "from a CLIP loader, or disconnect the input and keep English spans and embedding: out of the prompts.")
        adapter = load_adapter(find_adapter(adapter_name), dtype=language_clip.model_options["dtype"])
        check_pairing(language_clip.encoder, adapter.info, adapter_name)
        if model is not None:
            check_base_model(adapter.shape, adapter_name, model_label(model), family_of(model))
        english_clip = None if clip is NOT_CONNECTED else clip
        return (adapter_clip(language_clip.clip, adapter, english_clip, adapter_name),)


class PEAEncodePrompt:
    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 0, "max": comfy_nodes.MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "From Apply PEA Adapter."}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                    "tooltip": "The prompt, in any language the encoder reads."}),
            },
            "optional": {
                "width": ("INT", {"default": 1024, **size, "tooltip": "SDXL size conditioning: original width."}),
                "height": ("INT", {"default": 1024, **size, "tooltip": "SDXL size conditioning: original height."}),
                "crop_w": ("INT", {"default": 0, **size, "tooltip": "SDXL crop conditioning (left)."}),
                "crop_h": ("INT", {"default": 0, **size, "tooltip": "SDXL crop conditioning (top)."}),
                "target_width": ("INT", {"default": 1024, **size, "tooltip": "SDXL target width."}),
                "target_height": ("INT", {"default": 1024, **size, "tooltip": "SDXL target height."}),
            },
        }

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Conditioning for KSampler, ControlNet and the other conditioning nodes.",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["Chinese prompt", "prompt", "text encode", "中文提示词", "提示词", "промпт", "프롬프트",
                      "プロンプト", *LANGUAGES]
    DESCRIPTION = ("Encodes a prompt in any language through a PEA CLIP. The size fields are "
                   "SDXL's micro-conditioning and are ignored by SD1.5 models.")

    def encode(self, clip, text, width=1024, height=1024, crop_w=0, crop_h=0,
               target_width=1024, target_height=1024):
        if clip is None:
            raise RuntimeError("PEA Encode Prompt: clip input is invalid: None. Connect Apply PEA Adapter's output.")
        sizes = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
                 "target_width": target_width, "target_height": target_height}
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text), add_dict=sizes),)


NODE_CLASS_MAPPINGS = {
    "PEALoadLanguageCLIP": PEALoadLanguageCLIP,
    "PEAApplyAdapter": PEAApplyAdapter,
    "PEAEncodePrompt": PEAEncodePrompt,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PEALoadLanguageCLIP": "Load Language CLIP",
    "PEAApplyAdapter": "Apply PEA Adapter",
    "PEAEncodePrompt": "PEA Encode Prompt",
}
