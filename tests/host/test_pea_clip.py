"""The PEA CLIP inside a real ComfyUI process: prompt syntax, chunking, SDXL nodes, mismatches."""
from __future__ import annotations

import pytest
import torch

from tests.host.comfy_host import call_node


def build_clip(pack, clip_name="chinese-clip-tiny", adapter="pea_zh_sd15.safetensors", **load):
    nodes = pack.NODE_CLASS_MAPPINGS
    options = {"dtype": "default", "device": "default", **load}
    (language_clip,) = nodes["PEALoadLanguageCLIP"]().load(clip_name, **options)
    (clip,) = nodes["PEAApplyAdapter"]().apply(language_clip, adapter)
    return clip, language_clip.encoder, clip.cond_stage_model.adapter


def direct(encoder, adapter, ids: torch.Tensor):
    """Encoder + adapter called directly on a batch of token ids."""
    with torch.no_grad():
        return adapter(encoder(ids))


def test_pack_registers_nodes_and_lists_folders(pack):
    import folder_paths

    assert set(pack.NODE_CLASS_MAPPINGS) == {"PEALoadLanguageCLIP", "PEAApplyAdapter", "PEAEncodePrompt",
                                             "PEALanguageCLIPScore"}
    choices = pack.NODE_CLASS_MAPPINGS["PEALoadLanguageCLIP"].INPUT_TYPES()["required"]["clip_name"][0]
    assert {"chinese-clip-tiny", "laion/xlm-roberta-tiny", "empty", "chinese-clip-tiny-text.safetensors"} <= set(choices)
    adapters = folder_paths.get_filename_list("pea_adapters")
    assert "pea_zh_sdxl.safetensors" in adapters and "official/pytorch_model.bin" in adapters


@pytest.mark.parametrize("adapter,width,pooled", [("pea_zh_sd15.safetensors", 768, None),
                                                  ("pea_zh_sdxl.safetensors", 2048, 1280)])
def test_prompt_equals_encoder_then_adapter(pack, adapter, width, pooled):
    clip, encoder, head = build_clip(pack, adapter=adapter)
    cond, out_pooled = clip.encode_from_tokens(clip.tokenize("一只红色的猫坐在桌子上"), return_pooled=True)
    ref_tokens, ref_pooled = direct(encoder, head, encoder.tokenize(["一只红色的猫坐在桌子上"]))
    assert cond.shape == (1, 52, width)
    assert torch.allclose(cond, ref_tokens, atol=1e-6)
    if pooled is None:
        assert out_pooled is None
    else:
        assert out_pooled.shape == (1, pooled) and torch.allclose(out_pooled, ref_pooled, atol=1e-6)


def test_single_file_language_clip_matches_its_folder(pack):
    single, _, _ = build_clip(pack, clip_name="chinese-clip-tiny-text.safetensors")
    folder, _, _ = build_clip(pack)
    tokens = folder.tokenize("一只红色的猫")
    assert single.tokenize("一只红色的猫") == tokens
    assert torch.equal(single.encode_from_tokens(tokens), folder.encode_from_tokens(tokens))


def test_empty_prompt_is_the_adapters_unconditional_embedding(pack):
    clip, encoder, head = build_clip(pack, adapter="pea_zh_sdxl.safetensors")
    cond, pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    ref_tokens, ref_pooled = direct(encoder, head, encoder.tokenize([""]))
    assert torch.allclose(cond, ref_tokens, atol=1e-6) and torch.allclose(pooled, ref_pooled, atol=1e-6)


def test_weighting_follows_comfyui_formula(pack):
    clip, encoder, head = build_clip(pack)
    tokens = clip.tokenize("一只(红色:1.5)的猫")["l"]
    weights = torch.tensor([w for _, w in tokens[0]])
    ids = torch.tensor([[t for t, _ in tokens[0]]])
    assert (weights == 1.5).sum() == 2  # 红, 色
    z, _ = direct(encoder, head, ids)
    empty_ids = torch.tensor([[encoder.special_tokens.start, encoder.special_tokens.end]
                              + [encoder.special_tokens.pad] * 50])
    z_empty, _ = direct(encoder, head, empty_ids)
    expected = torch.where(weights[None, :, None] != 1.0, (z - z_empty) * 1.5 + z_empty, z)
    assert torch.allclose(clip.encode_from_tokens({"l": tokens}), expected, atol=1e-5)


def test_long_prompts_are_chunked_like_comfyui(pack):
    clip, encoder, head = build_clip(pack)
    text = "，".join(["一只红色的猫坐在桌子上"] * 9)  # about 100 characters: 3 windows of 52
    tokens = clip.tokenize(text)["l"]
    assert len(tokens) == 3 and all(len(chunk) == 52 for chunk in tokens)
    cond = clip.encode_from_tokens({"l": tokens})
    assert cond.shape == (1, 3 * 52, 768)
    ids = torch.tensor([[t for t, _ in chunk] for chunk in tokens])
    ref, _ = direct(encoder, head, ids)
    assert torch.allclose(cond, ref.reshape(1, -1, 768), atol=1e-6)


def test_stock_sdxl_and_zero_out_nodes_take_the_pea_clip(pack):
    from comfy_extras.nodes_clip_sdxl import CLIPTextEncodeSDXL
    import nodes

    clip, encoder, head = build_clip(pack, adapter="pea_zh_sdxl.safetensors")
    (out,) = call_node(CLIPTextEncodeSDXL, clip=clip, width=1024, height=768, crop_w=0, crop_h=0,
                       target_width=1024, target_height=768, text_g="山水画", text_l="山水画")
    cond, extra = out[0]
    assert cond.shape == (1, 52, 2048) and extra["pooled_output"].shape == (1, 1280)
    assert extra["width"] == 1024 and extra["height"] == 768
    ref_tokens, ref_pooled = direct(encoder, head, encoder.tokenize(["山水画"]))
    assert torch.allclose(cond, ref_tokens, atol=1e-6)
    (zeroed,) = call_node(nodes.ConditioningZeroOut, conditioning=out)
    assert zeroed[0][0].abs().sum() == 0 and zeroed[0][1]["pooled_output"].abs().sum() == 0


def test_pea_encode_prompt_adds_size_conditioning(pack):
    clip, _, _ = build_clip(pack, adapter="pea_zh_sdxl.safetensors")
    (cond,) = pack.NODE_CLASS_MAPPINGS["PEAEncodePrompt"]().encode(clip, "红烧狮子头", width=896, height=1152)
    extra = cond[0][1]
    assert extra["width"] == 896 and extra["height"] == 1152 and extra["target_width"] == 1024
    assert extra["pooled_output"].shape == (1, 1280)


def test_official_pickle_loads_through_the_node(pack):
    clip, encoder, head = build_clip(pack, adapter="official/pytorch_model.bin")
    assert head.info.source == "official" and head.shape.head == "sdxl"
    assert clip.encode_from_tokens(clip.tokenize("猫")).shape == (1, 52, 2048)


def test_clip_is_memory_managed_by_comfyui(pack):
    import comfy.model_management as mm
    import comfy.model_patcher

    clip, _, _ = build_clip(pack)
    assert isinstance(clip.patcher, comfy.model_patcher.ModelPatcher)
    assert clip.patcher.offload_device == mm.text_encoder_offload_device()
    assert next(clip.cond_stage_model.parameters()).dtype == torch.float32  # fp32 on CPU
    clone = clip.clone()
    assert clone.cond_stage_model is clip.cond_stage_model


@pytest.mark.parametrize("clip_name,adapter,load,message", [
    ("chinese-clip-tiny", "bad/wide_sdxl.safetensors", {},
     "expects 64-d token states .*chinese-clip-tiny' gives 32-d"),
    ("laion/xlm-roberta-tiny", "pea_zh_sdxl.safetensors", {},
     "trained behind a chinese_clip encoder .*xlm-roberta-tiny' is a open_clip encoder"),
    ("chinese-clip-tiny", "pea_zh_sdxl.safetensors", {"context_length": 64},
     "trained at context length 52.*pads to 64. Set context_length to 52"),
    ("byt5-tiny-encoder.safetensors", "bad/masked_byt5_flux.safetensors", {},
     r"trained with padding masked inside t5 'byt5-tiny'.*language CLIP 'byt5-tiny' \(t5\) has its padding "
     r"attended.*--no-attention-mask"),
])
def test_mismatches_name_both_sides(pack, clip_name, adapter, load, message):
    with pytest.raises(pack.adapters.IncompatibleError, match=message):
        build_clip(pack, clip_name, adapter, **load)


def test_adapter_for_the_other_family_is_refused_against_the_model(pack, base_dir):
    import comfy.sd

    model = comfy.sd.load_checkpoint_guess_config(
        str(base_dir / "models" / "checkpoints" / "sdxl_standin.safetensors"), output_clip=False)[0]
    nodes = pack.NODE_CLASS_MAPPINGS
    (language_clip,) = nodes["PEALoadLanguageCLIP"]().load("chinese-clip-tiny", "default", "default")
    with pytest.raises(pack.adapters.IncompatibleError,
                       match=r"made for SD1.5 \(768-d tokens, no pooled vector\).*needs 2048-d context and a 1280-d pooled"):
        nodes["PEAApplyAdapter"]().apply(language_clip, "pea_zh_sd15.safetensors", model=model)
    (clip,) = nodes["PEAApplyAdapter"]().apply(language_clip, "pea_zh_sdxl.safetensors", model=model)
    assert clip is not None


def test_open_clip_encoder_through_the_nodes(pack):
    clip, encoder, head = build_clip(pack, clip_name="laion/xlm-roberta-tiny", adapter="pea_xlmr_sdxl.safetensors")
    cond = clip.encode_from_tokens(clip.tokenize("красная кошка"))
    assert cond.shape == (1, 77, 2048)
    ref, _ = direct(encoder, head, encoder.tokenize(["красная кошка"]))
    assert torch.allclose(cond, ref, atol=1e-6)


def test_flux_adapter_gives_flux_conditioning_through_the_stock_flux_node(pack):
    from comfy_extras.nodes_flux import CLIPTextEncodeFlux

    clip, encoder, head = build_clip(pack, adapter="pea_zh_flux.safetensors")
    (out,) = call_node(CLIPTextEncodeFlux, clip=clip, clip_l="", t5xxl="一只红色的猫", guidance=3.5)
    cond, extra = out[0]
    assert cond.shape == (1, 52, 4096) and extra["pooled_output"].shape == (1, 768) and extra["guidance"] == 3.5
    ref_tokens, ref_pooled = direct(encoder, head, encoder.tokenize(["一只红色的猫"]))
    assert torch.allclose(cond, ref_tokens, atol=1e-6) and torch.allclose(extra["pooled_output"], ref_pooled, atol=1e-6)


def test_fp8_weight_storage_through_the_loader(pack):
    """fp8 stores the encoder's matrices in 8 bits; the prompt's conditioning stays close."""
    ref_clip, _, _ = build_clip(pack)
    fp8_clip, encoder, _ = build_clip(pack, dtype="fp8_e4m3fn")
    import comfy.ops

    linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is comfy.ops.manual_cast.Linear and m.weight.dtype == torch.float8_e4m3fn
                           for m in linears)  # ComfyUI's casting layer widens the fp8 weights per call
    assert torch.float8_e4m3fn in fp8_clip.cond_stage_model.dtypes  # ComfyUI's cast check sees the storage
    prompt = "一只红色的猫坐在桌子上"
    ref = ref_clip.encode_from_tokens(ref_clip.tokenize(prompt))
    got = fp8_clip.encode_from_tokens(fp8_clip.tokenize(prompt))
    assert got.shape == ref.shape and torch.isfinite(got).all()
    assert ((got - ref).norm() / ref.norm()).item() < 0.1


def test_byt5_flux_clip_reads_256_bytes_unmasked_in_windows(pack):
    """The extracted byT5 file and the converted FLUX adapter: 256 byte positions, padding not
    masked, 4096-d tokens and a 768-d pooled vector; longer prompts in windows of 255 bytes + end."""
    clip, encoder, head = build_clip(pack, clip_name="byt5-tiny-encoder.safetensors",
                                     adapter="pea_byt5_flux.safetensors")
    assert (encoder.context_length, encoder.use_attention_mask) == (256, False)
    assert (head.info.encoder.context_length, head.info.encoder.attention_mask) == (256, False)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("红烧狮子头"), return_pooled=True)
    ref_tokens, ref_pooled = direct(encoder, head, encoder.tokenize(["红烧狮子头"]))
    assert cond.shape == (1, 256, 4096) and pooled.shape == (1, 768)
    assert torch.allclose(cond, ref_tokens, atol=1e-5) and torch.allclose(pooled, ref_pooled, atol=1e-5)
    windows = clip.tokenize("山" * 85 + "水" * 5)["t5xxl"]  # 270 bytes: 85 characters fill the first window
    assert [len(w) for w in windows] == [256, 256]
    assert clip.encode_from_tokens(clip.tokenize("山" * 85 + "水" * 5)).shape == (1, 512, 4096)
