"""English spans and embeddings in PEA prompts go to the checkpoint's own CLIP (nodes/english_route.py):
SD1.5 with the stand-in checkpoint's CLIP, its LoRA and real embedding files; SDXL and FLUX.1 with
ComfyUI's own text encoders of those families built at tiny widths (a checkpoint's are 1.6 GB and more)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.host.comfy_host import call_node

TEXT = "一只红色的猫，`ohwx (man:1.2)` 在海边 embedding:EasyNegative (embedding:pea_style:1.1)"
LANGUAGE = "一只红色的猫，在海边"
ENGLISH = "ohwx (man:1.2), embedding:EasyNegative, (embedding:pea_style:1.1)"


@pytest.fixture(scope="module")
def checkpoint_clips(base_dir) -> dict[str, object]:
    """The SD1.5 stand-in's own CLIP, reading the embeddings folder ("plain"), and LoraLoader's clip
    output for it ("lora")."""
    import comfy.sd
    import nodes

    models = base_dir / "models"
    model, clip = comfy.sd.load_checkpoint_guess_config(
        str(models / "checkpoints" / "sd15_standin_clip.safetensors"),
        embedding_directory=[str(models / "embeddings")])[:2]
    _, patched = call_node(nodes.LoraLoader, model=model, clip=clip, lora_name="sd15_standin_lora.safetensors",
                           strength_model=1.0, strength_clip=1.0)
    return {"plain": clip, "lora": patched}


def pea_language_clip(pack):
    return pack.NODE_CLASS_MAPPINGS["PEALoadLanguageCLIP"]().load("chinese-clip-tiny", "default", "default")[0]


def pea_clip(pack, adapter="pea_zh_sd15.safetensors", clip=None):
    """Apply PEA Adapter's CLIP, with ``clip`` on its clip input (left unconnected when None)."""
    inputs = {} if clip is None else {"clip": clip}
    return pack.NODE_CLASS_MAPPINGS["PEAApplyAdapter"]().apply(pea_language_clip(pack), adapter, **inputs)[0]


def encode(clip, text):
    """Stock CLIP Text Encode: (tokens, pooled_output)."""
    import nodes

    ((cond, extra),) = call_node(nodes.CLIPTextEncode, clip=clip, text=text)[0]
    return cond, extra.get("pooled_output")


@pytest.mark.parametrize("which", ["plain", "lora"])
def test_english_part_is_stock_clip_text_encode_and_the_rest_is_pea(pack, checkpoint_clips, which):
    clip = checkpoint_clips[which]
    routed = pea_clip(pack, clip=clip)
    english_tokens = routed.tokenize(TEXT)["l"].english["l"]
    assert sum(isinstance(t, torch.Tensor) for chunk in english_tokens for t, *_ in chunk) == 2 + 3  # both files read

    cond, pooled = encode(routed, TEXT)
    pea_cond, pea_pooled = encode(pea_clip(pack), LANGUAGE)
    english_cond, _ = encode(clip, ENGLISH)
    assert cond.shape == (1, 52 + 77, 768) and torch.isfinite(cond).all()
    assert torch.equal(cond[:, :52], pea_cond) and pooled is pea_pooled is None
    assert torch.allclose(cond[:, 52:], english_cond, atol=1e-6)
    if which == "lora":  # the LoRA reached the English part
        assert not torch.allclose(english_cond, encode(checkpoint_clips["plain"], ENGLISH)[0], atol=1e-3)


def test_prompt_without_english_parts_is_unchanged(pack, checkpoint_clips):
    plain, routed = pea_clip(pack), pea_clip(pack, clip=checkpoint_clips["plain"])
    assert torch.equal(encode(routed, LANGUAGE)[0], encode(plain, LANGUAGE)[0])


@pytest.mark.parametrize("text,message", [
    ("模糊 embedding:EasyNegative", "'embedding:EasyNegative' is a textual-inversion embedding: it needs the "
                                   "checkpoint's own CLIP. Connect the checkpoint's CLIP (or LoraLoader's clip output) "
                                   "to Apply PEA Adapter's 'clip' input"),
    ("模糊，embedding:EasyNegative，低质量", "'embedding:EasyNegative' is a textual-inversion embedding"),
    ("一只猫，`ohwx man`", "the English span `ohwx man` needs the checkpoint's own CLIP"),
    ("一只猫，`ohwx man", "a backtick (`) has no partner"),
])
def test_english_parts_without_the_checkpoint_clip_are_refused(pack, text, message):
    from nodes import CLIPTextEncode

    with pytest.raises(pack.adapters.errors.PromptError) as error:
        call_node(CLIPTextEncode, clip=pea_clip(pack), text=text)
    assert message in str(error.value)


def test_non_finite_english_part_is_refused(pack, checkpoint_clips):
    routed = pea_clip(pack, clip=checkpoint_clips["plain"])
    with pytest.raises(pack.adapters.NonFiniteError, match="NaN or infinite values for the English part 'embedding:pea_nan'"):
        encode(routed, "一只猫 embedding:pea_nan")


def test_checkpoint_clip_of_another_family_is_refused(pack, checkpoint_clips):
    with pytest.raises(pack.adapters.IncompatibleError,
                       match=r"the clip input is SD1.5's CLIP \(token keys l\), but pea_zh_sdxl.safetensors is made for SDXL"):
        pea_clip(pack, "pea_zh_sdxl.safetensors", clip=checkpoint_clips["plain"])


TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
             "projection_dim": 32}
TINY_T5 = {"d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16, "num_layers": 2}
TINY_FAMILIES = {  # ComfyUI's model config class, its text encoders' config options, (token, pooled) widths
    "sdxl": ("SDXL", {"clip_l_model_config": TINY_CLIP, "clip_g_model_config": TINY_CLIP}, (64, 32)),
    "flux": ("Flux", {"clip_l_model_config": TINY_CLIP, "t5xxl_model_config": TINY_T5}, (32, 32)),
}
"""SDXL's CLIP-L and CLIP-G, 32 wide each, give 64-wide tokens and CLIP-G's 32-wide pooled vector;
FLUX.1's T5 gives 32-wide tokens. Each family's stand-in adapter below gives the same widths."""
SPANS_TEXT = "一只红色的猫，`ohwx (man:1.2)` 在海边 `masterpiece`"
SPANS_ENGLISH = "ohwx (man:1.2), masterpiece"


def tiny_text_encoder(family: str, seed: int):
    """The checkpoint CLIP of ``family`` as ComfyUI builds it (its ``supported_models`` class's
    clip target: tokenizers and text models), at TINY_FAMILIES' widths, weights initialised."""
    import comfy.sd
    import comfy.supported_models

    from training.miniworld.tiny_base import init_weights

    config, options, _ = TINY_FAMILIES[family]
    clip = comfy.sd.CLIP(target=getattr(comfy.supported_models, config)({}).clip_target(), model_options=options)
    init_weights(clip.cond_stage_model, seed)
    return clip


def tiny_adapter(pack, family: str, seed: int):
    """A PEA adapter for the Chinese-CLIP stand-in (32 wide) giving ``family``'s tiny widths."""
    tokens, pooled = TINY_FAMILIES[family][2]
    widths = replace(pack.adapters.families.FAMILIES[family], context_dim=tokens, pooled_dim=pooled)
    torch.manual_seed(seed)
    adapter = pack.adapters.PEAAdapter(pack.adapters.AdapterShape.for_family(widths, 32, (48,)))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.2)
    return adapter


@pytest.fixture(scope="module")
def family_clips(pack) -> dict[str, tuple]:
    """Per family: (PEA CLIP with the checkpoint CLIP, the same PEA CLIP without it, the checkpoint CLIP)."""
    adapter_clip = pack.nodes.pea_clip.adapter_clip
    language_clip = pea_language_clip(pack)
    out = {}
    for seed, family in enumerate(TINY_FAMILIES, start=1):
        checkpoint, adapter = tiny_text_encoder(family, seed), tiny_adapter(pack, family, seed)
        out[family] = (adapter_clip(language_clip.clip, adapter, checkpoint, f"tiny {family} adapter"),
                       adapter_clip(language_clip.clip, adapter), checkpoint)
    return out


def test_sdxl_english_part_is_stock_sdxl_encode_and_the_rest_is_pea(pack, family_clips):
    """CLIP Text Encode (SDXL), CLIP Text Encode and PEA Encode Prompt: the English part of text_g is
    what the checkpoint's CLIP gives it through the stock nodes; tokens before it, the pooled vector
    and the size conditioning are PEA's."""
    from comfy_extras.nodes_clip_sdxl import CLIPTextEncodeSDXL

    routed, plain, checkpoint = family_clips["sdxl"]
    sizes = {"width": 896, "height": 1152, "crop_w": 8, "crop_h": 16, "target_width": 1024, "target_height": 768}

    def sdxl(clip, text_g, text_l):
        ((cond, extra),) = call_node(CLIPTextEncodeSDXL, clip=clip, text_g=text_g, text_l=text_l, **sizes)[0]
        return cond, extra

    cond, extra = sdxl(routed, SPANS_TEXT, "另一段文字")
    pea_cond, pea_extra = sdxl(plain, LANGUAGE, LANGUAGE)
    english_cond, _ = sdxl(checkpoint, SPANS_ENGLISH, SPANS_ENGLISH)
    assert cond.shape == (1, 52 + 77, 64) and torch.isfinite(cond).all()
    assert torch.equal(cond[:, :52], pea_cond) and torch.allclose(cond[:, 52:], english_cond, atol=1e-6)
    assert torch.allclose(english_cond, encode(checkpoint, SPANS_ENGLISH)[0], atol=1e-6)
    assert not torch.allclose(english_cond, encode(checkpoint, "masterpiece")[0], atol=1e-3)  # the span is read
    assert extra["pooled_output"].shape == (1, 32) and torch.equal(extra["pooled_output"], pea_extra["pooled_output"])
    assert {k: extra[k] for k in sizes} == sizes
    assert torch.equal(sdxl(routed, SPANS_TEXT, SPANS_TEXT)[0], cond)  # text_l is not read
    stock_cond, stock_pooled = encode(routed, SPANS_TEXT)
    ((node_cond, node_extra),) = pack.NODE_CLASS_MAPPINGS["PEAEncodePrompt"]().encode(routed, SPANS_TEXT, **sizes)[0]
    assert torch.equal(stock_cond, cond) and torch.equal(stock_pooled, extra["pooled_output"])
    assert torch.equal(node_cond, cond) and {k: node_extra[k] for k in sizes} == sizes


def test_flux_english_part_is_the_t5_sequence_of_stock_flux_encode_and_the_rest_is_pea(pack, family_clips):
    """CLIP Text Encode Flux and CLIP Text Encode: the English part of the t5xxl text is the T5
    sequence the checkpoint's CLIP gives it; tokens before it and the pooled vector are PEA's, the
    guidance is the node's."""
    from comfy_extras.nodes_flux import CLIPTextEncodeFlux

    routed, plain, checkpoint = family_clips["flux"]

    def flux(clip, t5xxl, clip_l):
        ((cond, extra),) = call_node(CLIPTextEncodeFlux, clip=clip, clip_l=clip_l, t5xxl=t5xxl, guidance=2.5)[0]
        return cond, extra

    cond, extra = flux(routed, SPANS_TEXT, "")
    pea_cond, pea_extra = flux(plain, LANGUAGE, "")
    english_cond, english_extra = flux(checkpoint, SPANS_ENGLISH, SPANS_ENGLISH)
    assert english_cond.shape[1] == 256  # T5's least length in ComfyUI
    assert cond.shape == (1, 52 + 256, 32) and torch.isfinite(cond).all()
    assert torch.equal(cond[:, :52], pea_cond) and torch.allclose(cond[:, 52:], english_cond, atol=1e-6)
    assert torch.allclose(english_cond, encode(checkpoint, SPANS_ENGLISH)[0], atol=1e-6)
    assert not torch.allclose(english_cond, encode(checkpoint, "masterpiece")[0], atol=1e-3)  # the span is read
    assert torch.equal(extra["pooled_output"], pea_extra["pooled_output"]) and extra["guidance"] == 2.5
    assert not torch.allclose(extra["pooled_output"], english_extra["pooled_output"])  # CLIP-L's is not used
    stock_cond, stock_pooled = encode(routed, SPANS_TEXT)
    assert torch.equal(stock_cond, cond) and torch.equal(stock_pooled, extra["pooled_output"])


def test_checkpoint_clip_of_another_width_is_refused(pack, family_clips):
    _, _, tiny_sdxl = family_clips["sdxl"]
    (routed,) = pack.NODE_CLASS_MAPPINGS["PEAApplyAdapter"]().apply(pea_language_clip(pack), "pea_zh_sdxl.safetensors",
                                                                     clip=tiny_sdxl)
    with pytest.raises(pack.adapters.IncompatibleError,
                       match="gives 64-wide tokens, pea_zh_sdxl.safetensors gives 2048-wide ones"):
        encode(routed, SPANS_TEXT)


def test_connected_clip_input_without_a_clip_is_refused(pack):
    """A checkpoint without a text encoder gives None on its CLIP output; connected, that is refused."""
    with pytest.raises(pack.adapters.IncompatibleError, match="the clip input is connected but receives no CLIP"):
        pack.NODE_CLASS_MAPPINGS["PEAApplyAdapter"]().apply(pea_language_clip(pack), "pea_zh_sd15.safetensors",
                                                             clip=None)
