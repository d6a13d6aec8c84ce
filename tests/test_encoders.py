"""Each encoder backend against the model family's own forward, built independently."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import transformers

from adapters import EncoderLoadError, load_language_encoder
from adapters.encoders import padding_mask
from tests.standins.encoders import make_byt5

PROMPTS = ["一只红色的猫坐在桌子上", "a red cat", "красная кошка", ""]


def reference_states(kind, folder, ids, mask):
    """Last-layer token states from the full upstream model classes."""
    T = transformers
    if kind == "open_clip":
        import open_clip
        cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
        tower = str(folder / cfg["text_cfg"]["hf_model_name"])
        cfg["text_cfg"].update(hf_model_name=tower, hf_tokenizer_name=tower, hf_model_pretrained=False)
        model = open_clip.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
        model.load_state_dict(torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True))
        model.text.output_tokens = True
        return model.eval().encode_text(ids)[1]
    if kind in ("t5", "mt5", "umt5"):
        return T.AutoModelForSeq2SeqLM.from_pretrained(folder).encoder(
            input_ids=ids, attention_mask=mask).last_hidden_state
    full = {"chinese_clip": T.ChineseCLIPModel, "clip": T.CLIPModel, "altclip": T.AltCLIPModel}[kind]
    return full.from_pretrained(folder).text_model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("kind", ["chinese_clip", "clip", "altclip", "t5", "mt5", "umt5", "open_clip"])
def test_backend_matches_upstream_model(encoder_dirs, kind):
    encoder = load_language_encoder(encoder_dirs[kind])
    assert encoder.kind == ("t5" if kind in ("mt5", "umt5") else kind)
    ids = encoder.tokenize(PROMPTS)
    assert ids.shape == (len(PROMPTS), encoder.context_length)
    with torch.no_grad():
        ours = encoder(ids)
        mask = padding_mask(ids, encoder.special_tokens)
        ref = reference_states(kind, encoder_dirs[kind], ids, mask)
    assert ours.shape == (len(PROMPTS), encoder.context_length, encoder.hidden_size)
    assert (ours - ref).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in encoder.parameters())


def test_padding_mask_follows_first_end_token(encoder_dirs):
    encoder = load_language_encoder(encoder_dirs["clip"])  # CLIP pads with its end token
    ids = encoder.tokenize(["a cat"])
    mask = padding_mask(ids, encoder.special_tokens)
    n_real = len(encoder.tokenizer("a cat")["input_ids"])
    assert mask[0, :n_real].tolist() == [1] * n_real and mask[0, n_real:].sum() == 0


def test_defaults_and_overrides(encoder_dirs):
    assert load_language_encoder(encoder_dirs["chinese_clip"]).context_length == 52
    enc = load_language_encoder(encoder_dirs["chinese_clip"], context_length=64, dtype=torch.bfloat16)
    assert enc.context_length == 64 and enc.dtype == torch.bfloat16
    assert enc.encode(["猫"]).shape == (1, 64, enc.hidden_size)
    assert load_language_encoder(encoder_dirs["altclip"]).hidden_size == 24  # the projected width


def test_bad_folders_say_what_is_wrong(tmp_path, encoder_dirs):
    with pytest.raises(EncoderLoadError, match="not found"):
        load_language_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match="empty.*config.json"):
        load_language_encoder(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EncoderLoadError, match="model_type 'bert'.*supported"):
        load_language_encoder(tmp_path / "bert")
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((encoder_dirs["t5"] / f).read_bytes())
    with pytest.raises(EncoderLoadError, match="tokenizer"):
        load_language_encoder(no_tok)


def refuse_links(monkeypatch):
    """Make links fail as on a stock Windows account (WinError 1314)."""
    def no_links(*_args, **_kwargs):
        raise OSError(1314, "A required privilege is not held by the client")

    monkeypatch.setattr(os, "symlink", no_links)
    monkeypatch.setattr(os, "link", no_links)


@pytest.mark.parametrize("kind", ["chinese_clip", "clip", "altclip", "t5", "mt5", "umt5", "byt5", "open_clip"])
def test_single_file_pack_gives_the_same_states(tmp_path, monkeypatch, encoder_dirs, kind):
    """Packed, then loaded where links are refused (Windows): the same tokens and states as the folder,
    and nothing left in the temporary folder."""
    from adapters.encoders.single_file import main as pack_main

    folder = make_byt5(tmp_path / "byt5") if kind == "byt5" else encoder_dirs[kind]
    dest = tmp_path / f"{kind}.safetensors"
    assert pack_main([str(folder), str(dest), "--context-length", "40"]) == 0
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    refuse_links(monkeypatch)
    packed = load_language_encoder(dest)
    unpacked = load_language_encoder(folder, context_length=40)
    assert (packed.kind, packed.context_length, packed.name, packed.path) == (unpacked.kind, 40, folder.name, dest)
    prompts = [*PROMPTS, "a RED cat <pad> </s> [SEP] <s>"]  # special tokens as text: tokenizers differ there
    ids = unpacked.tokenize(prompts)
    assert torch.equal(packed.tokenize(prompts), ids)
    with torch.no_grad():
        assert torch.equal(packed(ids), unpacked(ids))
    assert list(system_tmp.iterdir()) == []  # the tokenizer's files lay there only while loading
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, "system_tmp", *(["byt5"] if kind == "byt5" else [])])


def test_plain_safetensors_is_not_a_language_clip(tmp_path):
    import safetensors.torch

    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(EncoderLoadError, match="without the config and tokenizer.*single_file"):
        load_language_encoder(tmp_path / "weights.safetensors")


BYT5_LAYOUTS = {"safetensors shards": {}, "pickle": {"pickled": True, "shard_size": "50GB"},
                "pickle shards": {"pickled": True}}


@pytest.mark.parametrize("layout", BYT5_LAYOUTS)
def test_extracted_byt5_encoder_loads_as_a_single_file(tmp_path, layout):
    import safetensors
    from adapters.encoders.extract import main as extract_main

    folder = make_byt5(tmp_path / "byt5-tiny", **BYT5_LAYOUTS[layout])
    index = "pytorch_model.bin.index.json" if "pickle" in layout else "model.safetensors.index.json"
    assert (folder / index).is_file() == layout.endswith("shards")
    dest = tmp_path / "byt5-tiny-encoder.safetensors"
    assert extract_main([str(folder), str(dest)]) == 0
    packed, full = load_language_encoder(dest), load_language_encoder(folder)
    assert (packed.kind, packed.context_length, packed.use_attention_mask) == ("t5", 256, False)
    assert (full.context_length, full.use_attention_mask) == (256, False)
    ids = full.tokenize(["红烧狮子头", "a cat"])
    assert ids.shape == (2, 256) and torch.equal(packed.tokenize(["红烧狮子头", "a cat"]), ids)
    with torch.no_grad():
        assert torch.equal(packed(ids), full(ids))
    with safetensors.safe_open(str(dest), framework="pt") as f:
        keys = set(f.keys())
    assert "shared.weight" in keys and "encoder.embed_tokens.weight" not in keys  # the tied copy is not repeated
    assert not any(k.startswith(("decoder.", "lm_head.")) for k in keys)
    assert dest.stat().st_size < sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def pad_checkpoint(folder: Path, pickled: bool) -> tuple[Path, dict]:
    """Pad the one weight file in ``folder`` with large encoder and decoder tensors (and, in a
    pickle, a strided view); return the file and the encoder tensors added."""
    import safetensors.torch

    path = folder / ("pytorch_model.bin" if pickled else "model.safetensors")
    state = torch.load(path, weights_only=True) if pickled else safetensors.torch.load_file(str(path))
    added = {"encoder.padding_for_size": torch.zeros(100 * 2**20, dtype=torch.float32)}  # 400 MiB
    if pickled:
        added["encoder.strided_view"] = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t()
    state.update(added, **{"decoder.padding_for_size": torch.zeros(50 * 2**20, dtype=torch.float32)})
    if pickled:
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})
    return path, added


PEAK_MEMORY = """
import sys

def peak_bytes():
    \"\"\"The process's peak resident memory: getrusage on Linux and macOS, the peak working set on Windows.\"\"\"
    try:
        import resource
    except ImportError:
        import psutil
        return psutil.Process().memory_info().peak_wset
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
"""


@pytest.mark.parametrize("pickled", [False, True], ids=["safetensors", "pickle"])
def test_extraction_streams_instead_of_loading_the_checkpoint(tmp_path, pickled):
    import safetensors.torch

    folder = tmp_path / "big"
    make_byt5(folder, shard_size="50GB", pickled=pickled)
    path, added = pad_checkpoint(folder, pickled)
    size = path.stat().st_size
    if not any(importlib.util.find_spec(m) for m in ("resource", "psutil")):
        pytest.skip("peak memory cannot be read here: needs resource (Linux, macOS) or psutil (Windows)")
    code = (f"{PEAK_MEMORY}\nfrom adapters.encoders.extract import extract_encoder\nbefore = peak_bytes()\n"
            f"extract_encoder({str(folder)!r}, {str(tmp_path / 'out.safetensors')!r})\nprint(peak_bytes() - before)")
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).resolve().parents[1]).stdout.strip())
    assert grown < 0.25 * size, f"peak memory grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"
    out = safetensors.torch.load_file(str(tmp_path / "out.safetensors"))
    assert "decoder.padding_for_size" not in out
    for key, tensor in added.items():
        assert out[key].dtype == tensor.dtype and torch.equal(out[key], tensor)


class NotATensor:
    pass


def test_pickles_that_cannot_be_streamed_are_refused(tmp_path):
    from adapters.encoders.extract import extract_encoder

    legacy = make_byt5(tmp_path / "legacy", shard_size="50GB", pickled=True)
    state = torch.load(legacy / "pytorch_model.bin", weights_only=True)
    torch.save(state, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(EncoderLoadError, match=r"legacy.*pytorch_model.bin.*cannot be memory-mapped.*zip format"):
        extract_encoder(legacy, tmp_path / "out.safetensors")
    unsafe = make_byt5(tmp_path / "unsafe", shard_size="50GB", pickled=True)
    torch.save({**state, "encoder.note": NotATensor()}, unsafe / "pytorch_model.bin")
    with pytest.raises(EncoderLoadError, match=r"unsafe.*pytorch_model.bin holds Python objects.*refused"):
        extract_encoder(unsafe, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("encoder_masks", [True, False], ids=["t5 masked", "byt5 unmasked"])
def test_pairing_refuses_an_adapter_trained_with_the_other_padding_mask(tmp_path, encoder_dirs, encoder_masks):
    from adapters import EncoderSpec, IncompatibleError, check_pairing, load_adapter
    from tests.standins.encoders import TINY, make_adapter

    folder = encoder_dirs["t5"] if encoder_masks else make_byt5(tmp_path / "byt5-tiny")
    encoder = load_language_encoder(folder)
    assert encoder.use_attention_mask == encoder_masks

    def adapter(name, attention_mask, official=False):
        spec = EncoderSpec("t5", folder.name, context_length=encoder.context_length, attention_mask=attention_mask)
        return load_adapter(make_adapter(tmp_path / name, "flux", TINY["hidden"], encoder=spec, official=official))

    check_pairing(encoder, adapter("same.safetensors", encoder_masks).info, "same.safetensors")
    check_pairing(encoder, adapter("unstated.safetensors", None).info, "unstated.safetensors")
    check_pairing(encoder, adapter("official.bin", None, official=True).info, "official.bin")  # no metadata
    other = adapter("other.safetensors", not encoder_masks)
    trained, loaded = ("attended (not masked)", "masked") if encoder_masks else ("masked", "attended (not masked)")
    flag = "--attention-mask" if encoder_masks else "--no-attention-mask"
    with pytest.raises(IncompatibleError, match=rf"'other.safetensors' was trained with padding {re.escape(trained)} "
                                                rf"inside t5 '{folder.name}'.*'{folder.name}' \(t5\) has its padding "
                                                rf"{re.escape(loaded)}.*Load the encoder.*adapters.convert.*{flag}'"):
        check_pairing(encoder, other.info, "other.safetensors")
