"""The adapter module and its files against an independent implementation of the official forward."""
import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from adapters import (AdapterFileError, AdapterInfo, AdapterShape, EncoderSpec, PEAAdapter,
                      load_adapter, read_adapter, save_adapter)
from adapters.convert import main as convert_main


def official_state(head: str, dims: list[int], seed: int = 0, token_dim: int = 2048) -> dict:
    """A random state dict in the authors' layout: layernorm, projector.{0,2,..}, fc."""
    g = torch.Generator().manual_seed(seed)
    sd = {"layernorm.weight": 1 + 0.1 * torch.randn(dims[0], generator=g),
          "layernorm.bias": 0.1 * torch.randn(dims[0], generator=g)}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        sd[f"projector.{2 * i}.weight"] = torch.randn(b, a, generator=g) / a ** 0.5
    if head == "sdxl":
        sd["fc.weight"] = torch.randn(token_dim, dims[-1], generator=g) / dims[-1] ** 0.5
        sd["fc.bias"] = 0.1 * torch.randn(token_dim, generator=g)
    return sd


def official_forward(sd: dict, x: torch.Tensor):
    """The authors' MLP forward, written out op by op (use_residual=False)."""
    h = F.layer_norm(x, (x.shape[-1],), sd["layernorm.weight"], sd["layernorm.bias"], eps=1e-5)
    n = len([k for k in sd if k.startswith("projector.")])
    for i in range(n):
        if i > 0:
            h = F.gelu(h)
        h = h @ sd[f"projector.{2 * i}.weight"].T
    if "fc.weight" not in sd:
        return h, None
    return F.gelu(h) @ sd["fc.weight"].T + sd["fc.bias"], h.mean(dim=1)


CASES = [("sd15", [64, 96, 768]), ("sd15", [64, 96, 96, 80, 768]),
         ("sdxl", [64, 48, 1280]), ("sdxl", [64, 48, 48, 1280]), ("sdxl", [64, 32, 32, 32, 32, 1280])]


@pytest.mark.parametrize("head,dims", CASES)
@pytest.mark.parametrize("wrap", ["plain", "module_prefix_fp16"])
def test_official_pickle_matches_official_forward(tmp_path, head, dims, wrap):
    sd = official_state(head, dims)
    if wrap == "module_prefix_fp16":
        sd = {k: v.half().float() for k, v in sd.items()}  # values the fp16 file can hold exactly
        torch.save({f"module.{k}": v.half() for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    else:
        torch.save(sd, tmp_path / "pytorch_model.bin")
    adapter = load_adapter(tmp_path / "pytorch_model.bin")
    assert adapter.shape.head == head and adapter.shape.in_dim == dims[0]
    assert list(adapter.shape.hidden_dims) == dims[1:-1]
    x = torch.randn(3, 17, dims[0], generator=torch.Generator().manual_seed(1))
    tokens, pooled = adapter(x)
    ref_tokens, ref_pooled = official_forward(sd, x)
    assert (tokens - ref_tokens).abs().max() <= 1e-5
    if head == "sd15":
        assert pooled is None and tokens.shape == (3, 17, 768)
    else:
        assert tokens.shape == (3, 17, 2048) and pooled.shape == (3, 1280)
        assert (pooled - ref_pooled).abs().max() <= 1e-5


def test_sdxl_chinese_clip_parameter_count():
    adapter = PEAAdapter(AdapterShape.for_head("sdxl", 1024, (1024, 1024)))
    assert sum(p.numel() for p in adapter.parameters()) == 6_033_408


@pytest.mark.parametrize("head,dims", CASES[:3])
def test_convert_to_ours_and_back_changes_no_weight(tmp_path, head, dims):
    sd = {k: v.half() for k, v in official_state(head, dims).items()}
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "official.bin")
    ours, back = tmp_path / "pea.safetensors", tmp_path / "back.bin"
    assert convert_main([str(tmp_path / "official.bin"), str(ours), "--encoder-kind", "chinese_clip",
                         "--encoder-name", "OFA-Sys/chinese-clip-vit-huge-patch14",
                         "--context-length", "52", "--languages", "zh"]) == 0
    state, info = read_adapter(ours)
    assert info.source == "pea" and info.encoder.kind == "chinese_clip"
    assert info.encoder.context_length == 52 and info.languages == ["zh"]
    assert info.base_family == head
    assert convert_main([str(ours), str(back), "--to-official"]) == 0
    round_trip = torch.load(back, weights_only=True)
    assert set(round_trip) == set(sd) == set(state)
    for k in sd:
        assert round_trip[k].dtype == sd[k].dtype and torch.equal(round_trip[k], sd[k])
        assert torch.equal(state[k], sd[k])


def test_metadata_round_trip(tmp_path):
    shape = AdapterShape.for_head("sdxl", 32, (40,))
    info = AdapterInfo(shape=shape, encoder=EncoderSpec("open_clip", "xlm-roberta-large-ViT-H-14",
                                                        context_length=77, attention_mask=True),
                       languages=["zh", "ru"], training={"steps": 70000, "teacher": "sd_xl_base_1.0"})
    path = save_adapter(PEAAdapter(shape), info, tmp_path / "a.safetensors")
    loaded = load_adapter(path).info
    assert loaded.encoder == info.encoder and loaded.shape == shape
    assert loaded.languages == ["zh", "ru"] and loaded.training["steps"] == 70000
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_truncated_files_are_refused(tmp_path):
    good = save_adapter(PEAAdapter(AdapterShape.for_head("sd15", 16, (8,))),
                        AdapterInfo(AdapterShape.for_head("sd15", 16, (8,))), tmp_path / "a.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="cut.safetensors.*truncated or damaged"):
        read_adapter(tmp_path / "cut.safetensors")
    torch.save(official_state("sd15", [16, 8, 768]), tmp_path / "full.bin")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "full.bin").read_bytes()[:300])
    with pytest.raises(AdapterFileError, match="cut.bin.*truncated or damaged"):
        read_adapter(tmp_path / "cut.bin")


class NotAStateDict:
    pass


def test_pickles_that_are_not_state_dicts_are_refused(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.bin")
    with pytest.raises(AdapterFileError, match="list.bin holds a list, not a state dict"):
        read_adapter(tmp_path / "list.bin")
    with open(tmp_path / "object.bin", "wb") as f:
        pickle.dump(NotAStateDict(), f)
    with pytest.raises(AdapterFileError, match="object.bin.*(refused|cannot be read)"):
        read_adapter(tmp_path / "object.bin")
    torch.save({"unet.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    with pytest.raises(AdapterFileError, match="not a PEA adapter"):
        read_adapter(tmp_path / "other.bin")


def test_malformed_layouts_name_the_problem(tmp_path):
    sd = official_state("sdxl", [16, 8, 1280])
    gap = dict(sd)
    gap["projector.6.weight"] = gap.pop("projector.2.weight")
    torch.save(gap, tmp_path / "gap.bin")
    with pytest.raises(AdapterFileError, match="numbered 0, 2, 4"):
        read_adapter(tmp_path / "gap.bin")
    chain = dict(sd, **{"projector.2.weight": torch.zeros(1280, 9)})
    torch.save(chain, tmp_path / "chain.bin")
    with pytest.raises(AdapterFileError, match=r"projector.2.weight has shape \(1280, 9\)"):
        read_adapter(tmp_path / "chain.bin")
    with pytest.raises(AdapterFileError, match="not found"):
        read_adapter(tmp_path / "missing.safetensors")


def flux_official_state(dims, seed=0):
    """The multilingual FLUX adapter's layout: trunk to 4096-d tokens, fc 4096 -> 768 with bias."""
    sd = official_state("sd15", dims, seed)
    g = torch.Generator().manual_seed(seed + 1)
    sd["fc.weight"] = torch.randn(768, dims[-1], generator=g) / dims[-1] ** 0.5
    sd["fc.bias"] = 0.1 * torch.randn(768, generator=g)
    return sd


def flux_forward(sd, x):
    """The model card's forward: tokens = GELU(trunk(x)); pooled = mean over positions of fc(tokens)."""
    trunk, _ = official_forward({k: v for k, v in sd.items() if not k.startswith("fc.")}, x)
    tokens = F.gelu(trunk)
    return tokens, (tokens @ sd["fc.weight"].T + sd["fc.bias"]).mean(dim=1)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_flux_adapter_matches_the_card_forward(tmp_path, prefix):
    dims = [96, 128, 128, 4096]
    sd = {k: v.bfloat16().float() for k, v in flux_official_state(dims).items()}
    torch.save({f"{prefix}{k}": v.bfloat16() for k, v in sd.items()}, tmp_path / "diffusion_model.bin")
    adapter = load_adapter(tmp_path / "diffusion_model.bin")
    assert (adapter.shape.head, adapter.shape.token_dim, adapter.shape.pooled_dim) == ("flux", 4096, 768)
    x = torch.randn(2, 256, 96, generator=torch.Generator().manual_seed(3))
    tokens, pooled = adapter(x)
    ref_tokens, ref_pooled = flux_forward(sd, x)
    assert tokens.shape == (2, 256, 4096) and pooled.shape == (2, 768)
    assert (tokens - ref_tokens).abs().max() <= 1e-4 and (pooled - ref_pooled).abs().max() <= 1e-4


def test_flux_card_configuration_has_the_published_parameter_count():
    adapter = PEAAdapter(AdapterShape.for_head("flux", 4672, (4096, 4096)))
    assert sum(p.numel() for p in adapter.parameters()) == pytest.approx(55.85e6, rel=1e-3)


@pytest.mark.parametrize("metadata,message", [
    ("[1, 2]", r"metadata 'pea_adapter' is a JSON array, expected an object"),
    ('"sdxl"', r"metadata 'pea_adapter' is a JSON string, expected an object"),
    ('{"format_version": 1, "shape": [16]}', r"metadata field 'shape' is a JSON array, expected an object"),
    ('{"format_version": 1, "shape": SHAPE, "encoder": ["chinese_clip"]}',
     r"metadata field 'encoder' is a JSON array, expected an object"),
    ('{"format_version": 1, "shape": SHAPE, "encoder": {"context_length": "52"}}',
     r"metadata field 'encoder.context_length' is '52', expected a whole number from 1 to 1024 or null"),
    ('{"format_version": 1, "shape": SHAPE, "encoder": {"attention_mask": 1}}',
     r"metadata field 'encoder.attention_mask' is 1, expected true, false or null"),
    ('{"format_version": 1, "shape": SHAPE, "encoder": {"tokenizer": "x"}}',
     r"metadata field 'encoder.tokenizer' is unknown"),
    ('{"format_version": 1, "shape": SHAPE, "languages": "zh"}',
     r"metadata field 'languages' is 'zh', expected an array of strings"),
    ('{"format_version": 1, "shape": SHAPE, "training": [70000]}',
     r"metadata field 'training' is a JSON array, expected an object"),
])
def test_metadata_of_the_wrong_json_types_names_the_file_and_field(tmp_path, metadata, message):
    import safetensors.torch

    shape = AdapterShape.for_head("sd15", 16, (8,))
    state = {k: v.contiguous() for k, v in PEAAdapter(shape).state_dict().items()}
    path = tmp_path / "typed.safetensors"
    safetensors.torch.save_file(state, str(path), metadata={
        "pea_adapter": metadata.replace("SHAPE", json.dumps(shape.to_dict()))})
    with pytest.raises(AdapterFileError, match=rf"typed.safetensors: {message}"):
        read_adapter(path)
