"""ComfyUI ``CLIP`` objects over a language encoder and PEA adapters.

*Load Language CLIP* builds one ``comfy.sd.CLIP`` per encoder with ComfyUI's own constructor: its
ModelPatcher is the only one that moves the encoder. *Apply PEA Adapter* clones that CLIP
(``CLIP.clone``: a patcher over the same model, so ComfyUI loads the encoder once however many
adapters use it, and switches between the clones as it does between clones of its own CLIPs) and
gives the clone a text model of encoder + adapter. The adapter is specific to one clone, so it has
a patcher of its own, loaded when that clone encodes: the encoder's patcher keeps one fixed size
and content, and each adapter is loaded and offloaded on its own.

Every node that takes a CLIP (CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeFlux,
conditioning tools) works with the result. Tokenization goes through ComfyUI's ``SDTokenizer``:
``(word:1.2)`` weighting and chunking of long prompts behave as with the stock CLIP.
"""
from __future__ import annotations

import inspect
import numbers

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip

from ..adapters import IncompatibleError, LanguageEncoder, PEAAdapter
from ..adapters.encoders.tokenizer_guard import tokenizer_panics
from ..adapters.families import FAMILIES
from ..adapters.finite import check_conditioning
from .comfy_layers import move_buffers_on_load, use_comfy_ops
from .english_route import EnglishRoute, refuse_without_clip, route_prompt


class _PreloadedTokenizer:
    """Lets ``SDTokenizer`` take an already loaded Hugging Face tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def from_pretrained(self, *_args, **_kwargs):
        return self.tokenizer


class PEATokenizer:
    """ComfyUI tokenizer interface over the language encoder's own tokenizer."""

    def __init__(self, embedding_directory=None, tokenizer_data={}, *, encoder: LanguageEncoder,
                 keys: tuple[str, ...], english: EnglishRoute | None = None):
        special = encoder.special_tokens
        self.keys = keys
        self.english = english
        self.where = encoder.path
        # Textual-inversion embeddings belong to English CLIPs: they go to ``english`` (see english_route).
        with tokenizer_panics(self.where):
            self.sd_tokenizer = comfy.sd1_clip.SDTokenizer(
                tokenizer_path=str(encoder.path), max_length=encoder.context_length,
                embedding_directory=None, embedding_size=encoder.hidden_size, embedding_key="pea",
                tokenizer_class=_PreloadedTokenizer(encoder.tokenizer),
                has_start_token=special.start is not None, has_end_token=special.end is not None,
                pad_to_max_length=True, pad_token=special.pad, tokenizer_data=tokenizer_data)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        """The language part's tokens under every key; with a checkpoint CLIP, each carries that
        CLIP's tokens of the English part (:class:`~nodes.english_route.EnglishTokens`)."""
        if self.english is None:
            refuse_without_clip(text)
            language = text
        else:
            prompt = route_prompt(text)
            language = prompt.language
        with tokenizer_panics(self.where):
            tokens = self.sd_tokenizer.tokenize_with_weights(language, return_word_ids, **kwargs)
        if self.english is None:
            return {k: list(tokens) for k in self.keys}
        return self.english.tokens(self.keys, tokens, prompt.english)

    def untokenize(self, token_weight_pair):
        with tokenizer_panics(self.where):
            return self.sd_tokenizer.untokenize(token_weight_pair)

    def state_dict(self):
        return {}


class EncoderModel(torch.nn.Module):
    """The model of a language encoder's ModelPatcher: the encoder, nothing else."""

    def __init__(self, device=None, dtype=None, model_options={}, *, encoder: LanguageEncoder):
        super().__init__()
        self.encoder = encoder
        # ComfyUI checks that the load device can cast every stored dtype (fp8 included).
        self.dtypes = {dtype, *(p.dtype for p in encoder.parameters())}


class EncoderTarget:
    """What ``comfy.sd.CLIP`` builds the encoder's CLIP from: model class, tokenizer class, params."""

    def __init__(self, encoder: LanguageEncoder):
        self.clip = EncoderModel
        self.params = {"encoder": encoder}
        self.tokenizer = lambda embedding_directory=None, tokenizer_data={}: PEATokenizer(
            embedding_directory, tokenizer_data, encoder=encoder, keys=FAMILIES["sd15"].token_keys)


def _classic_patcher() -> dict:
    """``comfy.sd.CLIP`` keywords for a classic ModelPatcher: where ComfyUI has dynamic VRAM
    (``disable_dynamic``: releases after 0.10.0), the encoder opts out of it. Dynamic VRAM streams
    layers through ComfyUI's vbar, which no release this pack is tested on has; the classic
    patcher's partial loading of ``comfy.ops`` layers is tested (tests/host/test_encoder_memory.py)."""
    parameters = inspect.signature(comfy.sd.CLIP).parameters
    return {"disable_dynamic": True} if "disable_dynamic" in parameters else {}


def encoder_clip(encoder: LanguageEncoder, model_options: dict) -> comfy.sd.CLIP:
    """The CLIP owning ``encoder``'s memory: its layers on ComfyUI's casting (see
    :func:`~nodes.comfy_layers.use_comfy_ops`, applied by the caller), one ModelPatcher on the
    text-encoder devices of ``model_options``, left on the offload device until a prompt is encoded."""
    options = {**model_options, "initial_device": model_options["offload_device"]}
    clip = comfy.sd.CLIP(target=EncoderTarget(encoder), model_options=options, **_classic_patcher())
    move_buffers_on_load(clip.patcher)
    return clip


class PEATextModel(torch.nn.Module, comfy.sd1_clip.ClipTokenWeightEncoder):
    """Language encoder + adapter behind ComfyUI's ``encode_token_weights`` interface.

    The encoder runs where its CLIP's patcher loaded it; the adapter is loaded through its own
    patcher just before it runs."""

    def __init__(self, encoder: LanguageEncoder, adapter: PEAAdapter, adapter_patcher, *, token_key: str,
                 device: torch.device, english: EnglishRoute | None = None):
        super().__init__()
        self.encoder = encoder
        self.english = english
        self.adapter = adapter
        self.adapter_patcher = adapter_patcher
        self.token_key = token_key
        self.load_device = device
        self.execution_device = device
        self.special_tokens = encoder.special_tokens.as_dict()
        self.dtypes = {*(p.dtype for p in encoder.parameters()), *(p.dtype for p in adapter.parameters())}

    def set_clip_options(self, options):
        """Only ``execution_device`` is used: the adapter was trained on the encoder's last layer
        (CLIP Set Last Layer has no effect)."""
        self.execution_device = options.get("execution_device", self.execution_device)

    def reset_clip_options(self):
        self.execution_device = self.load_device

    def encode_token_weights(self, token_weight_pairs):
        """The language part's conditioning and pooled output, the English part's conditioning
        (if any) joined after it on the token axis."""
        tokens = token_weight_pairs[self.token_key]
        cond, *rest = super().encode_token_weights(tokens)
        if self.english is not None:
            cond = self.english.join(cond, tokens)
        return (cond, *rest)

    def encode(self, token_lists) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = torch.tensor([[int(t) for t in seq if isinstance(t, numbers.Integral)] for seq in token_lists])
        hidden = self.encoder(ids, device=self.execution_device)
        comfy.model_management.load_models_gpu([self.adapter_patcher])
        tokens, pooled = self.adapter(hidden.to(next(self.adapter.parameters()).dtype))
        check_conditioning(self.encoder, self.adapter.name, ids, hidden, tokens, pooled)
        return tokens.float(), None if pooled is None else pooled.float()

    def load_sd(self, sd):
        return self.adapter.load_state_dict(sd, strict=False)


def check_english_clip(clip: comfy.sd.CLIP, head: str, adapter_name: str) -> None:
    """Raise IncompatibleError unless ``clip`` is a CLIP of the family ``head`` conditions (read
    from the keys of its token dict)."""
    keys = sorted(clip.tokenize(""))
    if keys == sorted(FAMILIES[head].token_keys):
        return
    family = next((f.label for f in FAMILIES.values() if sorted(f.token_keys) == keys), "another model")
    raise IncompatibleError(
        f"Apply PEA Adapter: the clip input is {family}'s CLIP (token keys {', '.join(keys)}), but "
        f"{adapter_name} is made for {FAMILIES[head].label}. Connect the CLIP of the checkpoint you sample with.")


def adapter_clip(encoder_clip: comfy.sd.CLIP, adapter: PEAAdapter, english_clip: comfy.sd.CLIP | None = None,
                 adapter_name: str = "the adapter") -> comfy.sd.CLIP:
    """A ComfyUI CLIP for ``encoder_clip``'s encoder + ``adapter``: a clone of ``encoder_clip``
    (sharing its patcher's model) whose text model ends in the adapter. With ``english_clip`` (the
    checkpoint's CLIP), prompts' English spans and embeddings go to it (see english_route)."""
    keys = FAMILIES[adapter.shape.head].token_keys
    english = None
    if english_clip is not None:
        check_english_clip(english_clip, adapter.shape.head, adapter_name)
        english = EnglishRoute(english_clip, adapter_name)
    encoder = encoder_clip.cond_stage_model.encoder
    patcher = encoder_clip.patcher
    adapter_patcher = comfy.model_patcher.ModelPatcher(
        use_comfy_ops(adapter), load_device=patcher.load_device, offload_device=patcher.offload_device)
    clip = encoder_clip.clone()
    clip.cond_stage_model = PEATextModel(encoder, adapter, adapter_patcher, token_key=keys[0],
                                         device=patcher.load_device, english=english)
    clip.tokenizer = PEATokenizer(encoder=encoder, keys=keys, english=english)
    return clip
