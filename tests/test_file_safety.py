"""Hostile and broken model files: packed files that name paths outside their folder, non-finite
weights in every format, tokenizers without their vocabulary, malformed headers."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from adapters import AdapterFileError, EncoderLoadError, NonFiniteError, load_adapter, load_language_encoder
from adapters.check import main as check_main
from adapters.encoders.extract import extract_encoder
from adapters.encoders.single_file import pack_encoder
from adapters.finite import check_conditioning
from adapters.tiny import TINY, make_adapter, make_byt5
from tests.broken_files import edit_json, poison_pickle, poison_safetensors, repack, rewrite_safetensors, with_member

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


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


# --- packed files: member names, headers, no links -------------------------------------------

@pytest.mark.parametrize("member", ["../../victim/x.py", "{abs}/x.py", "C:\\x.py", "C:/x.py", "text_tower\\..\\x.py",
                                    "a/../../x.py", "./x.py", "a//x.py", "", ".hidden", "nul.json", "x.json."])
def test_a_pack_naming_a_path_outside_its_folder_is_refused_and_writes_nothing(tmp_path, private_tmp, chinese_pack,
                                                                               member):
    victim = tmp_path / "victim"  # where '../../victim/x.py' lands from a folder in private_tmp
    member = member.format(abs=tmp_path / "abs")
    hostile = repack(chinese_pack, tmp_path / "hostile.safetensors", with_member(member, "import os  # runs at start"))
    with pytest.raises(EncoderLoadError) as refused:
        load_language_encoder(hostile)
    assert f"hostile.safetensors carries a file named {member!r}" in str(refused.value)
    assert "no '..', absolute paths, drive letters or backslashes" in str(refused.value)
    assert files_under(private_tmp) == []
    assert not victim.exists() and not (tmp_path / "abs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.safetensors", "system_tmp"]


def test_members_differing_only_in_case_are_refused(tmp_path, chinese_pack):
    def twice(h):
        h["files"]["Tokenizer.json"] = h["files"]["tokenizer.json"]
        return h

    with pytest.raises(EncoderLoadError, match="carries both 'tokenizer.json' and 'Tokenizer.json'"):
        load_language_encoder(repack(chinese_pack, tmp_path / "case.safetensors", twice))


@pytest.mark.parametrize("edit,message", [
    (lambda h: "{not json", r"header 'pea_language_clip' is not valid JSON"),
    (lambda h: json.dumps([h]), r"header 'pea_language_clip' is a JSON array, expected an object"),
    (lambda h: {**h, "format_version": "1"}, r"header field 'format_version' is '1', expected a number"),
    (lambda h: {**h, "kind": "bert"}, r"header field 'kind' is 'bert', expected one of open_clip, chinese_clip"),
    (lambda h: {**h, "context_length": "52"}, r"header field 'context_length' is '52', expected a whole number from 1 to 1024"),
    (lambda h: {**h, "files": list(h["files"])}, r"header field 'files' is \[.*\], expected an object"),
    (lambda h: {**h, "files": {**h["files"], "vocab.txt": "[PAD]"}},
     r"header field 'files.vocab.txt' is not \{\"text\": ...\} or valid \{\"base64\": ...\}"),
    (lambda h: {**h, "files": {**h["files"], "spiece.model": {"base64": "not base64!"}}}, r"'files.spiece.model'"),
    (lambda h: {**h, "files": {k: v for k, v in h["files"].items() if k != "config.json"}},
     r"carries no config.json in its header"),
    (lambda h: {**h, "files": {**h["files"], "config.json": {"text": "[]"}}},
     r"\(its config.json\) is a JSON array, expected an object"),
])
def test_a_broken_pack_header_names_the_file_and_field(tmp_path, chinese_pack, edit, message):
    broken = repack(chinese_pack, tmp_path / "broken.safetensors", edit)
    with pytest.raises(EncoderLoadError, match=rf"broken.safetensors.*{message}"):
        load_language_encoder(broken)


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


def poisoned_copy(src: Path, dest: Path, weight_file: str, key: str, value: float) -> Path:
    shutil.copytree(src, dest)
    (poison_pickle if weight_file.endswith(".bin") else poison_safetensors)(dest / weight_file, key, value)
    return dest


ENCODER_POISONS = {  # kind: (weight file, checkpoint key, the model's name for it)
    "chinese_clip": ("model.safetensors", "text_model.encoder.layer.0.attention.self.query.weight",
                     "encoder.layer.0.attention.self.query.weight"),
    "t5": ("model.safetensors", "encoder.block.1.layer.1.DenseReluDense.wo.weight",
           "encoder.block.1.layer.1.DenseReluDense.wo.weight"),
    "open_clip": ("open_clip_pytorch_model.bin", "text.transformer.encoder.layer.1.output.dense.weight",
                  "transformer.encoder.layer.1.output.dense.weight"),
}


@pytest.mark.parametrize("layout", ["folder", "packed"])
@pytest.mark.parametrize("kind", ENCODER_POISONS)
def test_encoders_with_non_finite_weights_are_refused(tmp_path, encoder_dirs, kind, layout):
    weight_file, key, name = ENCODER_POISONS[kind]
    if layout == "packed":  # pack the good folder, then poison the packed tensor
        path = pack_encoder(load_language_encoder(encoder_dirs[kind]), tmp_path / f"{kind}.safetensors")
        poison_safetensors(path, key.removeprefix("text_model."), float("nan"))
    else:
        path = poisoned_copy(encoder_dirs[kind], tmp_path / kind, weight_file, key, float("nan"))
    with pytest.raises(EncoderLoadError, match=rf"Language encoder .*{path.name}, loaded as torch.float32: tensor "
                                               rf"'{name}' holds NaN values"):
        load_language_encoder(path)


def test_an_extracted_byt5_file_with_inf_is_refused(tmp_path):
    folder = make_byt5(tmp_path / "byt5", shard_size="50GB", pickled=True)
    poison_pickle(folder / "pytorch_model.bin", "encoder.block.0.layer.0.SelfAttention.q.weight", float("inf"))
    dest = extract_encoder(folder, tmp_path / "byt5-encoder.safetensors")
    with pytest.raises(EncoderLoadError, match=r"byt5-encoder.safetensors, loaded as torch.bfloat16: tensor "
                                               r"'encoder.block.0.layer.0.SelfAttention.q.weight' holds infinite"):
        load_language_encoder(dest, dtype=torch.bfloat16)


def test_encoder_weights_beyond_the_compute_dtype_are_refused(tmp_path, encoder_dirs):
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    folder = poisoned_copy(encoder_dirs["t5"], tmp_path / "t5", "model.safetensors", key, 1e30)
    assert load_language_encoder(folder, dtype=torch.bfloat16).kind == "t5"  # 1e30 fits bf16's range
    with pytest.raises(EncoderLoadError, match=rf"loaded as torch.float16: tensor '{key}' holds infinite values"):
        load_language_encoder(folder, dtype=torch.float16)


# --- the conditioning ------------------------------------------------------------------------

def overflowing_adapter(tmp_path: Path, head: str) -> Path:
    """An adapter whose weights are finite in fp32 but whose outputs overflow: every weight 1e30."""
    path = make_adapter(tmp_path / f"huge_{head}.safetensors", head, TINY["hidden"])
    return rewrite_safetensors(path, lambda _key, t: torch.full_like(t, 1e30))


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


# --- tokenizers ------------------------------------------------------------------------------

def copy_without(src: Path, dest: Path, *names: str) -> Path:
    shutil.copytree(src, dest, ignore=lambda _dir, _files: names)
    return dest


def test_a_folder_without_its_vocabulary_is_refused(tmp_path, encoder_dirs):
    folder = copy_without(encoder_dirs["chinese_clip"], tmp_path / "no_vocab", "tokenizer.json", "vocab.txt")
    assert (folder / "tokenizer_config.json").is_file()
    with pytest.raises(EncoderLoadError, match=r"No tokenizer vocabulary in .*no_vocab: expected tokenizer.json or "
                                               r"vocab.txt \(BertTokenizer\)"):
        load_language_encoder(folder)


def test_the_vocabulary_as_released_still_loads(tmp_path, encoder_dirs):
    """OFA-Sys' layout: vocab.txt and tokenizer_config.json, no tokenizer.json."""
    folder = copy_without(encoder_dirs["chinese_clip"], tmp_path / "vocab_txt", "tokenizer.json")
    tokenizer = load_language_encoder(encoder_dirs["chinese_clip"]).tokenizer
    vocabulary = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    assert len(load_language_encoder(folder).tokenizer) == len(tokenizer)


def test_a_vocabulary_much_smaller_than_the_embedding_is_refused(tmp_path, encoder_dirs):
    folder = copy_without(encoder_dirs["chinese_clip"], tmp_path / "small_vocab", "tokenizer.json")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n猫\n", encoding="utf-8")
    with pytest.raises(EncoderLoadError, match=r"small_vocab knows 6 tokens, but the model embeds 1\d\d: its "
                                               r"vocabulary file is missing or belongs to another model"):
        load_language_encoder(folder)


@pytest.mark.parametrize("tokenizer_class,message", [
    (None, r"other: tokenizer_config.json names tokenizer_class 'T5Tokenizer', which is not a tokenizer for "
           r"model_type 'chinese_clip'"),
    ("PreTrainedTokenizerFast", r"other gives token ids up to 1\d\d, but the model embeds only 1\d\d"),
])
def test_a_tokenizer_of_another_model_is_refused(tmp_path, encoder_dirs, tokenizer_class, message):
    folder = copy_without(encoder_dirs["chinese_clip"], tmp_path / "other", "tokenizer.json", "tokenizer_config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(encoder_dirs["t5"] / name, folder / name)
    if tokenizer_class:  # a generic tokenizer.json class passes the class check; its ids do not fit
        edit_json(folder / "tokenizer_config.json", tokenizer_class=tokenizer_class)
    with pytest.raises(EncoderLoadError, match=message):
        load_language_encoder(folder)


def test_a_tokenizer_without_a_padding_token_is_refused(tmp_path, encoder_dirs):
    folder = shutil.copytree(encoder_dirs["clip"], tmp_path / "no_pad")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderLoadError, match=r"no_pad has no padding token"):
        load_language_encoder(folder)


@pytest.mark.parametrize("kind,member", [("chinese_clip", "tokenizer.json"), ("open_clip", "text_tower/tokenizer.json")])
def test_a_pack_without_its_vocabulary_is_refused(tmp_path, encoder_dirs, kind, member):
    good = pack_encoder(load_language_encoder(encoder_dirs[kind]), tmp_path / "good.safetensors")
    broken = repack(good, tmp_path / "broken.safetensors",
                    lambda h: {**h, "files": {k: v for k, v in h["files"].items() if k != member}})
    with pytest.raises(EncoderLoadError, match=r"No tokenizer vocabulary in .*broken.safetensors.*: expected "
                                               r"tokenizer.json or"):
        load_language_encoder(broken)
