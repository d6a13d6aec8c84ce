"""English spans in a PEA prompt, read by the checkpoint's own CLIP.

A PEA prompt may hold English the language encoder was never trained on: a LoRA's trigger word, a
textual-inversion embedding, a tag. Spans written between backticks (`` `ohwx man` ``) and every
``embedding:name`` go to the checkpoint's CLIP (with ComfyUI's own embedding lookup, weights and
LoRA patches); the rest goes through the language encoder and adapter. The two conditionings are
joined as ComfyUI's Conditioning (Concat) joins them: the PEA tokens, then the English tokens, on
the sequence axis; pooled output and SDXL size conditioning stay PEA's.

Backticks, because no ComfyUI syntax uses them: not weights ``(x:1.2)``, escapes ``\\(``, dynamic
prompts ``{a|b}``, embeddings, nor the ``[x]`` and ``<lora:x:1>`` of prompts copied from elsewhere;
and prompts almost never contain one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

import comfy.sd

from ..adapters.errors import IncompatibleError, NonFiniteError, PromptError

ENGLISH = re.compile(r"`(?P<span>[^`]*)`|(?P<embedding>\(embedding:[^\s()]+\)"
                     r"|(?<![A-Za-z0-9_])embedding:[^\s,()\u3000-\u303f\uff00-\uffef]+)")
"""A backtick span, or an embedding: alone in a weight group ``(embedding:name:1.2)``, or bare,
not glued to a preceding English word and ending at a space, comma, bracket or CJK punctuation
(``模糊，embedding:EasyNegative，低质量``: stock ComfyUI needs a space before it, a CJK prompt
seldom has one)."""


@dataclass(frozen=True)
class RoutedPrompt:
    """A prompt split in two: ``language`` for the PEA side, ``english`` for the checkpoint's CLIP
    (the spans and embeddings in order, joined by commas; empty when there are none)."""
    language: str
    english: str


def _check_pairs(text: str) -> None:
    if text.count("`") % 2:
        raise PromptError("PEA prompt: a backtick (`) has no partner. English spans are written in pairs, "
                          "`like this`.")


def route_prompt(text: str) -> RoutedPrompt:
    """Split ``text`` into its PEA part and its English part; a prompt without English parts is
    left as it is."""
    _check_pairs(text)
    english: list[str] = []

    def take(match: re.Match) -> str:
        english.append((match["span"] if match["span"] is not None else match["embedding"]).strip())
        return " "

    language = ENGLISH.sub(take, text)
    if not english:
        return RoutedPrompt(text, "")
    return RoutedPrompt(language.strip(), ", ".join(s for s in english if s))


def refuse_without_clip(text: str) -> None:
    """Raise PromptError if ``text`` has English parts: without the checkpoint's CLIP they would be
    read as words by the language encoder."""
    _check_pairs(text)
    match = ENGLISH.search(text)
    if match is None:
        return
    what = (f"'{match['embedding']}' is a textual-inversion embedding: it" if match["embedding"]
            else f"the English span `{match['span']}`")
    raise PromptError(f"PEA prompt: {what} needs the checkpoint's own CLIP. Connect the checkpoint's CLIP "
                      "(or LoraLoader's clip output) to Apply PEA Adapter's 'clip' input, or remove it "
                      "from the prompt.")


class EnglishTokens(list):
    """The PEA side's token chunks, carrying the English part (``text``, "" when there is none)
    and the checkpoint CLIP's tokens of it. Stock nodes copy token lists by key
    (CLIPTextEncodeSDXL, CLIPTextEncodeFlux), so the English part travels with the text it was
    written in."""

    def __init__(self, chunks, text: str, english: dict | None):
        super().__init__(chunks)
        self.text = text
        self.english = english


class EnglishRoute:
    """The checkpoint's CLIP as the English side of a PEA CLIP, used as given: LoRA patches
    (LoraLoader's clip output), CLIP Set Last Layer and ComfyUI's embeddings folder all apply."""

    def __init__(self, clip: comfy.sd.CLIP, adapter_name: str = "the adapter"):
        self.clip = clip
        self.adapter_name = adapter_name

    def tokens(self, keys: tuple[str, ...], chunks: list, english: str) -> dict[str, EnglishTokens]:
        """``chunks`` (the PEA side's tokens) under every key of ``keys``, each carrying the checkpoint
        CLIP's tokens of ``english`` (tokenized once)."""
        tokens = self.clip.tokenize(english) if english else None
        return {k: EnglishTokens(chunks, english, tokens) for k in keys}

    def join(self, cond: torch.Tensor, tokens: list) -> torch.Tensor:
        """``cond`` followed on the token axis by the English part's conditioning, as stock CLIP Text
        Encode gives it (FLUX: the T5 sequence; its CLIP-L pooled vector is not used)."""
        english = getattr(tokens, "english", None)
        if english is None:
            return cond
        english_cond = self.clip.encode_from_tokens(english)
        if not torch.isfinite(english_cond).all():
            raise NonFiniteError(f"PEA prompt: the checkpoint's CLIP gave NaN or infinite values for the English "
                                 f"part '{tokens.text}' (an embedding file with such values?).")
        if english_cond.shape[-1] != cond.shape[-1]:
            raise IncompatibleError(
                f"PEA prompt: the CLIP on Apply PEA Adapter's 'clip' input gives {english_cond.shape[-1]}-wide tokens, "
                f"{self.adapter_name} gives {cond.shape[-1]}-wide ones, so the English part '{tokens.text}' cannot "
                "join them. Connect the CLIP of the checkpoint you sample with.")
        return torch.cat([cond, english_cond.to(cond)], dim=1)
