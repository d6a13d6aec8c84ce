"""The language encoder under ComfyUI's memory management: comfy.ops layers, partial loading,
lowvram weight patches, one patcher per encoder, fp8 storage.

The partial-loading tests run on the CPU. There ``load_models_gpu`` always loads a model whole
(every release treats a CPU load device as VRAMState.DISABLED), so they call what it calls on a
GPU with a budget: ``LoadedModel(patcher).model_load(budget)``, the classic ModelPatcher's partial
load. Which layers then stay on the offload device and are cast per call is decided the same way
on every device; only the device copies themselves cannot be exercised without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from adapters import EncoderSpec, load_language_encoder
from adapters.encoders import FP8_DTYPES, padding_mask
from adapters.encoders.weight_storage import narrow_storable, weight_bytes
from tests.standins.encoders import make_adapter, make_byt5, make_chinese_clip
from tests.host import comfy_host
from tests.test_encoders import PROMPTS, reference_states

PROMPT = "一只红色的猫坐在桌子上"
ZH = EncoderSpec("chinese_clip", "chinese-clip-tiny", context_length=52, attention_mask=True)


@pytest.fixture(scope="module")
def pack(comfy_path, tmp_path_factory):
    """The pack with a tiny Chinese-CLIP and two adapters for it (no checkpoint stand-ins needed)."""
    import folder_paths

    models = tmp_path_factory.mktemp("memory_models")
    make_chinese_clip(models / "language_clip" / "chinese-clip-tiny")
    make_adapter(models / "pea_adapters" / "pea_zh_sd15.safetensors", "sd15", 32, encoder=ZH)
    make_adapter(models / "pea_adapters" / "pea_zh_sdxl.safetensors", "sdxl", 32, encoder=ZH, seed=1)
    for name in ("language_clip", "pea_adapters"):
        folder_paths.add_model_folder_path(name, str(models / name), is_default=True)
    return comfy_host.load_pack()


@pytest.fixture
def comfy_mm(comfy_path):
    """ComfyUI's model management, with nothing loaded before and after the test."""
    import comfy.model_management as mm

    mm.unload_all_models()
    yield mm
    mm.unload_all_models()


def load_nodes(pack, clip_name="chinese-clip-tiny", adapters=("pea_zh_sd15.safetensors",), **load):
    nodes = pack.NODE_CLASS_MAPPINGS
    (language_clip,) = nodes["PEALoadLanguageCLIP"]().load(clip_name, **{"dtype": "default", "device": "default", **load})
    clips = [nodes["PEAApplyAdapter"]().apply(language_clip, name)[0] for name in adapters]
    return language_clip, clips


def has_own_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


@pytest.mark.parametrize("kind", ["chinese_clip", "clip", "altclip", "t5", "mt5", "umt5", "open_clip"])
def test_every_layer_is_comfyui_casting_and_states_match_upstream(pack, encoder_dirs, kind):
    import comfy.ops

    encoder = pack.nodes.comfy_layers.use_comfy_ops(load_language_encoder(encoder_dirs[kind]))
    layers = [m for m in encoder.modules() if has_own_parameters(m)]
    cast = [m for m in layers if isinstance(m, comfy.ops.CastWeightBiasOp)]
    norms = [m for m in layers if type(m) is pack.nodes.comfy_layers.T5LayerNorm]
    assert len(cast) + len(norms) == len(layers)  # no layer left that a partial load could strand
    assert all(isinstance(m.weight_function, list) and m.weight_function is not type(m).weight_function
               for m in cast)  # each layer's own patch lists, never the class-wide default
    assert (len(norms) > 0) == (kind in ("t5", "mt5", "umt5"))
    ids = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        ours = encoder(ids)
        ref = reference_states(kind, encoder_dirs[kind], ids, padding_mask(ids, encoder.special_tokens))
    assert (ours - ref).abs().max() <= 1e-5


def test_two_adapters_on_one_encoder_share_its_patcher(pack, comfy_mm):
    language_clip, (sd15, sdxl) = load_nodes(pack, adapters=("pea_zh_sd15.safetensors", "pea_zh_sdxl.safetensors"))
    encoder_model = language_clip.patcher.model
    assert sd15.patcher.model is encoder_model and sdxl.patcher.model is encoder_model
    assert sd15.patcher.is_clone(sdxl.patcher) and sd15.patcher.is_clone(language_clip.patcher)
    assert language_clip.patcher.model_size() == comfy_mm.module_size(language_clip.encoder)  # once, without adapters
    tokens = sd15.tokenize(PROMPT)
    outputs = []
    for clip in (sd15, sdxl, sd15):
        outputs.append(clip.encode_from_tokens(clip.tokenize(PROMPT)))
        holding_encoder = [m for m in comfy_mm.current_loaded_models if m.model.model is encoder_model]
        assert len(holding_encoder) == 1  # ComfyUI swaps clones of one model; it never loads two
    ids = torch.tensor([[t for t, _ in tokens["l"][0]]])
    with torch.no_grad():
        hidden = language_clip.encoder(ids)
        expected = [sd15.cond_stage_model.adapter(hidden)[0], sdxl.cond_stage_model.adapter(hidden)[0]]
    assert outputs[0].shape == (1, 52, 768) and outputs[1].shape == (1, 52, 2048)
    assert torch.allclose(outputs[0], expected[0], atol=1e-6) and torch.allclose(outputs[1], expected[1], atol=1e-6)
    assert torch.equal(outputs[0], outputs[2])
    adapters = {id(c.cond_stage_model.adapter_patcher.model) for c in (sd15, sdxl)}
    assert adapters <= {id(m.model.model) for m in comfy_mm.current_loaded_models}  # each adapter: its own patcher


def partial_load(mm, patcher, fraction=3):
    """Load ``patcher`` with a budget of a third of its size, as ``load_models_gpu`` does on a GPU
    short of memory; returns the LoadedModel (``model_unload()`` it)."""
    loaded = mm.LoadedModel(patcher)
    loaded.model_load(patcher.model_size() // fraction)
    return loaded


def streamed_linears(patcher) -> list[str]:
    return [name for name, m in patcher.model.named_modules()
            if isinstance(m, torch.nn.Linear) and m.comfy_cast_weights]


def test_encoder_loads_partially_and_encodes_the_same(pack, comfy_mm):
    _, (clip,) = load_nodes(pack)
    tokens = clip.tokenize(PROMPT)
    full = clip.encode_from_tokens(tokens)
    comfy_mm.unload_all_models()

    loaded = partial_load(comfy_mm, clip.patcher)
    try:
        assert clip.patcher.model.model_lowvram
        assert 0 < clip.patcher.loaded_size() < clip.patcher.model_size()
        assert streamed_linears(clip.patcher)  # left on the offload device, cast per call
        partial = clip.cond_stage_model.encode_token_weights(tokens)[0]  # what CLIP.encode_from_tokens runs
    finally:
        loaded.model_unload()
    assert torch.allclose(partial, full, atol=1e-6)
    assert not streamed_linears(clip.patcher)  # unloading restores the layers' own setting


def test_weight_patches_reach_streamed_layers(pack, comfy_mm):
    """A patch on a layer that a partial load leaves on the offload device is applied per call
    (ComfyUI's LowVramPatch in the layer's weight_function), as when the layer is loaded."""
    from comfy.model_patcher import LowVramPatch

    _, (clip,) = load_nodes(pack)
    tokens = clip.tokenize(PROMPT)
    unpatched = clip.encode_from_tokens(tokens)
    comfy_mm.unload_all_models()
    loaded = partial_load(comfy_mm, clip.patcher)
    name = streamed_linears(clip.patcher)[0]
    loaded.model_unload()

    patched = clip.clone()
    weight = patched.patcher.model.get_submodule(name).weight
    assert patched.add_patches({f"{name}.weight": (torch.randn_like(weight) * 5,)}) == [f"{name}.weight"]
    loaded = partial_load(comfy_mm, patched.patcher)
    try:
        layer = patched.patcher.model.get_submodule(name)
        assert layer.comfy_cast_weights and any(isinstance(f, LowVramPatch) for f in layer.weight_function)
        streamed = patched.cond_stage_model.encode_token_weights(tokens)[0]
    finally:
        loaded.model_unload()
    whole = patched.encode_from_tokens(tokens)  # loaded whole: the patch is written into the weight
    assert torch.allclose(streamed, whole, atol=1e-5)
    assert (whole - unpatched).abs().max() > 1e-3  # the patch shows (post-LN BERT damps it), far above 1e-5
    assert torch.allclose(clip.encode_from_tokens(tokens), unpatched)  # the original clone is untouched


def test_buffers_follow_the_model_when_it_loads(pack, encoder_dirs):
    """transformers' position-id buffers sit in modules that also hold layers, which a partial
    load moves one by one: the patcher's load callback takes them to the load device."""
    language_clip = pack.nodes.language_clip.manage(load_language_encoder(encoder_dirs["chinese_clip"]),
                                                    pack.nodes.language_clip.model_options("cpu", "fp32"))
    assert any(True for _ in language_clip.encoder.buffers())
    pack.nodes.comfy_layers._buffers_to(language_clip.patcher, torch.device("meta"))
    assert all(b.device.type == "meta" for b in language_clip.encoder.buffers())
    assert all(p.device.type == "cpu" for p in language_clip.encoder.parameters())


def test_the_encoder_has_a_classic_patcher(pack, comfy_mm):
    """Dynamic VRAM (ComfyUI after 0.10.0) is opted out of with CLIP's own ``disable_dynamic``."""
    import inspect

    import comfy.model_patcher
    import comfy.sd

    language_clip, (clip,) = load_nodes(pack)
    assert type(language_clip.patcher) is comfy.model_patcher.ModelPatcher and type(clip.patcher) is type(language_clip.patcher)
    has_keyword = "disable_dynamic" in inspect.signature(comfy.sd.CLIP).parameters
    assert pack.nodes.pea_clip._classic_patcher() == ({"disable_dynamic": True} if has_keyword else {})


@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_storage_halves_the_matrices_and_keeps_the_states(pack, tmp_path, storage):
    import comfy.ops

    folder = make_byt5(tmp_path / "byt5-tiny")
    full = pack.nodes.comfy_layers.use_comfy_ops(load_language_encoder(folder, dtype=torch.bfloat16))
    stored = pack.nodes.comfy_layers.use_comfy_ops(load_language_encoder(folder, dtype=torch.bfloat16), FP8_DTYPES[storage])
    narrowed = [m for _, m in narrow_storable(stored)]
    assert narrowed and all(type(m) is comfy.ops.manual_cast.Linear and m.weight.dtype == FP8_DTYPES[storage]
                            for m in narrowed)
    kept = [m for name, m in stored.named_modules() if name.endswith(".wo")]  # T5's _keep_in_fp32_modules
    assert kept and all(type(m) is comfy.ops.disable_weight_init.Linear and m.weight.dtype == torch.bfloat16
                        for m in kept)
    assert weight_bytes(full) - weight_bytes(stored) == sum(m.weight.numel() for m in narrowed)  # a byte per entry
    ids = full.tokenize(["红烧狮子头", "a cat"])
    with torch.no_grad():
        reference, got = full(ids).float(), stored(ids).float()
    assert torch.isfinite(got).all()
    relative = (got - reference).norm() / reference.norm()
    assert relative < (0.1 if storage == "fp8_e4m3fn" else 0.2), relative
    stored.to("cpu")  # a device move keeps the stored dtype
    assert all(m.weight.dtype == FP8_DTYPES[storage] for m in narrowed)
