"""A ComfyUI ``CLIP`` whose text encoder is a language encoder followed by a PEA adapter.

Built through ``comfy.sd.CLIP``'s own constructor, so ComfyUI's ModelPatcher moves it between
the text-encoder device and the offload device, and every node that takes a CLIP
(CLIPTextEncode, CLIPTextEncodeSDXL, conditioning tools) works with it. Tokenization goes
through ComfyUI's ``SDTokenizer``: ``(word:1.2)`` weighting and chunking of long prompts
behave as with the stock CLIP.
"""
from __future__ import annotations

import numbers

import torch

import comfy.sd
import comfy.sd1_clip

from ..adapters import IncompatibleError, LanguageEncoder, PEAAdapter
from ..adapters.finite import check_conditioning

TOKEN_KEYS = {"sd15": ("l",), "sdxl": ("g", "l"), "flux": ("t5xxl", "l")}
"""Token-dict keys per family; the first is encoded. SDXL nodes expect "g" and "l", FLUX nodes
"t5xxl" and "l"; PEA replaces both encoders, so the second key's text is not used."""


class _PreloadedTokenizer:
    """Lets ``SDTokenizer`` take an already loaded Hugging Face tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def from_pretrained(self, *_args, **_kwargs):
        return self.tokenizer


class PEATokenizer:
    """ComfyUI tokenizer interface over the language encoder's own tokenizer."""

    def __init__(self, embedding_directory=None, tokenizer_data={}, *, encoder: LanguageEncoder,
                 keys: tuple[str, ...]):
        special = encoder.special_tokens
        self.keys = keys
        # Textual-inversion embeddings belong to English CLIPs: none are looked up here.
        self.sd_tokenizer = comfy.sd1_clip.SDTokenizer(
            tokenizer_path=str(encoder.path), max_length=encoder.context_length,
            embedding_directory=None, embedding_size=encoder.hidden_size, embedding_key="pea",
            tokenizer_class=_PreloadedTokenizer(encoder.tokenizer),
            has_start_token=special.start is not None, has_end_token=special.end is not None,
            pad_to_max_length=True, pad_token=special.pad, tokenizer_data=tokenizer_data)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        tokens = self.sd_tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)
        return {k: list(tokens) for k in self.keys}

    def untokenize(self, token_weight_pair):
        return self.sd_tokenizer.untokenize(token_weight_pair)

    def state_dict(self):
        return {}


class PEATextModel(torch.nn.Module, comfy.sd1_clip.ClipTokenWeightEncoder):
    """Language encoder + adapter behind ComfyUI's ``encode_token_weights`` interface."""

    def __init__(self, device=None, dtype=None, model_options={}, *, encoder: LanguageEncoder,
                 adapter: PEAAdapter, token_key: str):
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter
        self.token_key = token_key
        self.special_tokens = encoder.special_tokens.as_dict()
        # The encoder keeps the dtypes it was loaded with (fp8-stored weights stay fp8).
        self.dtypes = {dtype, *(p.dtype for p in encoder.parameters())}
        self.adapter.to(device=device, dtype=dtype)
        self.encoder.to(device=device)

    def set_clip_options(self, options):
        """Ignored: the adapter was trained on the encoder's last layer (CLIP Set Last Layer has no effect)."""

    def reset_clip_options(self):
        pass

    def encode_token_weights(self, token_weight_pairs):
        return super().encode_token_weights(token_weight_pairs[self.token_key])

    def encode(self, token_lists) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = torch.tensor([[int(t) for t in seq if isinstance(t, numbers.Integral)] for seq in token_lists])
        hidden = self.encoder(ids)
        tokens, pooled = self.adapter(hidden.to(next(self.adapter.parameters()).dtype))
        check_conditioning(self.encoder, self.adapter.name, ids, hidden, tokens, pooled)
        return tokens.float(), None if pooled is None else pooled.float()

    def load_sd(self, sd):
        return self.adapter.load_state_dict(sd, strict=False)


class PEAClipTarget:
    """What ``comfy.sd.CLIP`` builds a text encoder from: model class, tokenizer class, params."""

    def __init__(self, encoder: LanguageEncoder, adapter: PEAAdapter):
        if adapter.shape.head not in TOKEN_KEYS:
            raise IncompatibleError(
                f"{adapter.shape.head} adapters are not supported by the PEA nodes yet "
                f"(supported: {', '.join(TOKEN_KEYS)}).")
        keys = TOKEN_KEYS[adapter.shape.head]
        self.clip = PEATextModel
        self.params = {"encoder": encoder, "adapter": adapter, "token_key": keys[0]}
        self.tokenizer = lambda embedding_directory=None, tokenizer_data={}: PEATokenizer(
            embedding_directory, tokenizer_data, encoder=encoder, keys=keys)


def make_pea_clip(encoder: LanguageEncoder, adapter: PEAAdapter, model_options: dict) -> comfy.sd.CLIP:
    """A ComfyUI CLIP object for ``encoder`` + ``adapter``, memory-managed by ComfyUI."""
    parameters = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in adapter.parameters())
    return comfy.sd.CLIP(PEAClipTarget(encoder, adapter), parameters=parameters, model_options=model_options)
