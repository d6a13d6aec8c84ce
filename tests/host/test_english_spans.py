"""English spans and embeddings in PEA prompts go to the checkpoint's own CLIP (nodes/english_route.py)."""
from __future__ import annotations

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


def pea_clip(pack, adapter="pea_zh_sd15.safetensors", clip=None):
    nodes = pack.NODE_CLASS_MAPPINGS
    (language_clip,) = nodes["PEALoadLanguageCLIP"]().load("chinese-clip-tiny", "default", "default")
    return nodes["PEAApplyAdapter"]().apply(language_clip, adapter, clip=clip)[0]


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
