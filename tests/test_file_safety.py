"""Broken model files: non-finite weights and the conditioning they give."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from adapters import AdapterFileError, load_adapter, load_language_encoder
from adapters.check import main as check_main
from adapters.encoders.single_file import PACK_KEY, pack_encoder
from adapters.errors import NonFiniteError
from adapters.finite import check_conditioning
from adapters.tiny import TINY, make_adapter

POISONS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The folder Python's tempfile uses during the test (to see everything written there)."""
    folder = tmp_path / "system_tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="module")
def chinese_pack(tmp_path_factory, encoder_dirs):
    return pack_encoder(load_language_encoder(encoder_dirs["chinese_clip"]),
                        tmp_path_factory.mktemp("packs") / "chinese_clip.safetensors")


def repack(src: Path, dest: Path, edit) -> Path:
    """A copy of the packed file ``src`` whose header JSON is ``edit(header dict)`` (a dict, or
    the raw header text)."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()[PACK_KEY])
    new = edit(header)
    safetensors.torch.save_file(tensors, str(dest), metadata={
        "format": "pt", PACK_KEY: new if isinstance(new, str) else json.dumps(new)})
    return dest


def poison_safetensors(path: Path, key: str, value: float, everywhere: bool = False) -> None:
    """Set one value of the tensor ``key`` (or all of them) in a safetensors file, keeping its header."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors[key] = torch.full_like(tensors[key], value) if everywhere else tensors[key].clone()
    tensors[key].view(-1)[3] = value
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def poison_pickle(path: Path, key: str, value: float) -> None:
    """Set one value of the tensor ``key`` in a pickled state dict."""
    state = torch.load(path, weights_only=True)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = value
    torch.save(state, path)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


# --- non-finite weights ----------------------------------------------------------------------

ADAPTER_FORMATS = {"ours fp32": (torch.float32, False), "ours fp16": (torch.float16, False),
                   "ours bf16": (torch.bfloat16, False), "official fp32 .bin": (torch.float32, True),
                   "official fp16 .bin": (torch.float16, True), "official bf16 .bin": (torch.bfloat16, True)}


def adapter_file(folder: Path, head: str, fmt: str) -> Path:
    """A tiny adapter in one of ADAPTER_FORMATS (the official pickles with the authors' 'module.' prefix)."""
    dtype, official = ADAPTER_FORMATS[fmt]
    path = make_adapter(folder / f"{head}.{'bin' if official else 'safetensors'}", head, TINY["hidden"],
                        official=official)
    if official:
        torch.save({k: v.to(dtype) for k, v in torch.load(path, weights_only=True).items()}, path)
    else:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata, state = f.metadata(), {k: f.get_tensor(k).to(dtype) for k in f.keys()}
        safetensors.torch.save_file(state, str(path), metadata=metadata)
    return path


def poison_adapter(path: Path, key: str, value: float) -> None:
    if path.suffix == ".bin":
        poison_pickle(path, f"module.{key}", value)
    else:
        poison_safetensors(path, key, value)


@pytest.mark.parametrize("head", ["sd15", "sdxl", "flux"])
@pytest.mark.parametrize("fmt", ADAPTER_FORMATS)
def test_adapters_with_nan_weights_are_refused(tmp_path, head, fmt):
    path = adapter_file(tmp_path, head, fmt)
    assert load_adapter(path).shape.head == head
    poison_adapter(path, "projector.2.weight", float("nan"))
    with pytest.raises(AdapterFileError, match=rf"Adapter file .*{path.name}: tensor 'projector.2.weight' holds "
                                               rf"NaN values\. The file is damaged"):
        load_adapter(path)


@pytest.mark.parametrize("fmt", ["ours fp16", "official bf16 .bin"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_adapters_with_infinite_weights_are_refused(tmp_path, fmt, value):
    path = adapter_file(tmp_path, "sdxl", fmt)
    poison_adapter(path, "layernorm.bias", value)
    with pytest.raises(AdapterFileError, match=rf"{path.name}: tensor 'layernorm.bias' holds infinite values"):
        load_adapter(path)


def test_adapter_weights_beyond_the_compute_dtype_are_refused(tmp_path):
    path = adapter_file(tmp_path, "sdxl", "ours fp32")
    poison_safetensors(path, "fc.weight", 1e30)  # finite in fp32 and bf16, infinite in fp16
    assert load_adapter(path, dtype=torch.float32) is not None
    assert load_adapter(path, dtype=torch.bfloat16) is not None
    with pytest.raises(AdapterFileError, match=r"sdxl.safetensors: tensor 'fc.weight' holds values up to 1e\+30, "
                                               r"beyond the range of torch.float16 \(±65504\)"):
        load_adapter(path, dtype=torch.float16)


def test_converting_a_nan_adapter_is_refused(tmp_path):
    from adapters.convert import main as convert_main

    path = adapter_file(tmp_path, "sd15", "official fp16 .bin")
    poison_adapter(path, "layernorm.bias", float("nan"))
    assert convert_main([str(path), str(tmp_path / "out.safetensors")]) == 2
    assert not (tmp_path / "out.safetensors").exists()


# --- the conditioning ------------------------------------------------------------------------

def overflowing_adapter(tmp_path: Path, head: str) -> Path:
    """An adapter whose weights are finite in fp32 but whose outputs overflow: every weight 1e30."""
    path = make_adapter(tmp_path / f"huge_{head}.safetensors", head, TINY["hidden"])
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata, state = f.metadata(), {k: torch.full_like(f.get_tensor(k), 1e30) for k in f.keys()}
    safetensors.torch.save_file(state, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("head", ["sd15", "sdxl", "flux"])
def test_non_finite_conditioning_names_the_prompt_and_the_adapter(tmp_path, encoder_dirs, head):
    encoder = load_language_encoder(encoder_dirs["chinese_clip"])
    adapter = load_adapter(overflowing_adapter(tmp_path, head))
    ids = encoder.tokenize(["红烧狮子头", "一只猫"])
    with torch.no_grad():
        hidden = encoder(ids)
        tokens, pooled = adapter(hidden)
    assert torch.isfinite(hidden).all() and not torch.isfinite(tokens).all()
    with pytest.raises(NonFiniteError, match=rf"PEA conditioning for prompt '红 烧 狮 子 头' contains NaN/inf: the "
                                             rf"adapter 'huge_{head}.safetensors' produced non-finite values from the "
                                             rf"finite token states of the language CLIP 'chinese_clip'"):
        check_conditioning(encoder, adapter.name, ids, hidden, tokens, pooled)


def test_non_finite_token_states_blame_the_language_clip(tmp_path, encoder_dirs):
    folder = shutil.copytree(encoder_dirs["t5"], tmp_path / "t5")
    # finite in fp16, but the last norm's output overflows it
    poison_safetensors(folder / "model.safetensors", "encoder.final_layer_norm.weight", 6e4, everywhere=True)
    encoder = load_language_encoder(folder, dtype=torch.float16)
    adapter = load_adapter(make_adapter(tmp_path / "a.safetensors", "flux", TINY["hidden"]), dtype=torch.float16)
    ids = encoder.tokenize(["a red cat sitting on a table"])
    with torch.no_grad():
        hidden = encoder(ids)
        tokens, pooled = adapter(hidden)
    with pytest.raises(NonFiniteError, match=r"prompt 'a red cat sitting on a table' contains NaN/inf: the language "
                                             r"CLIP 't5' produced non-finite token states, computing in torch.float16"
                                             r"\. In fp16 .* dtype bf16 or fp32"):
        check_conditioning(encoder, adapter.name, ids, hidden, tokens, pooled)


def test_check_command_reports_non_finite_conditioning(tmp_path, encoder_dirs, capsys):
    adapter = overflowing_adapter(tmp_path, "sdxl")
    assert check_main(["--encoder", str(encoder_dirs["chinese_clip"]), "--adapter", str(adapter), "猫"]) == 2
    assert "error: PEA conditioning for prompt '猫' contains NaN/inf" in capsys.readouterr().err
