"""Hostile and broken model files: packed files that name paths outside their folder, non-finite
weights in every format, tokenizers without their vocabulary, malformed headers."""
import json
import shutil
import subprocess
import sys
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
from tests.standins.encoders import TINY, make_adapter, make_byt5
from tests.broken_files import (edit_json, edit_safetensors_header, poison_pickle, poison_safetensors, repack,
                                rewrite_safetensors, with_member, zip_bomb)

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
    with pytest.raises(EncoderLoadError, match=r"byt5-encoder.safetensors was not written: it would not load "
                                               r"\(Language encoder byt5-encoder.safetensors, loaded as torch.float32: "
                                               r"tensor 'encoder.block.0.layer.0.SelfAttention.q.weight' holds infinite"):
        extract_encoder(folder, tmp_path / "byt5-encoder.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["byt5"]


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


# ---- decompression bombs: zip-format pickles are sized before torch.load ----------------------

@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """A byT5 folder whose zip-format pytorch_model.bin (a few MB) has a data.pkl declaring 3 GB, the
    same file as an official adapter, and an official adapter whose tensor storage declares 256 MB."""
    folder = tmp_path_factory.mktemp("bombs")
    official = make_adapter(folder / "official.bin", "sd15", TINY["hidden"], official=True)
    byt5 = make_byt5(folder / "byt5", shard_size="50GB", pickled=True)
    zip_bomb(byt5 / "pytorch_model.bin", folder / "pickle_bomb.bin", "data.pkl", 3 * 2**30)
    shutil.copy(folder / "pickle_bomb.bin", byt5 / "pytorch_model.bin")
    return {"pickle": folder / "pickle_bomb.bin", "official": official, "byt5": byt5,
            "storage": zip_bomb(official, folder / "storage_bomb.bin", "data/0", 256 * 2**20)}


def test_pickle_bombs_are_refused_fast_with_bounded_memory(bombs):
    from tests.test_encoders import PEAK_MEMORY

    assert bombs["pickle"].stat().st_size < 8 * 2**20 and bombs["storage"].stat().st_size < 2**20
    tries = [f"adapters.load_adapter({str(bombs['pickle'])!r})", f"adapters.load_adapter({str(bombs['storage'])!r})",
             f"adapters.load_language_encoder({str(bombs['byt5'])!r})"]
    code = "".join(f"try:\n    {call}\nexcept adapters.PEAError as e:\n    print(e)\n" for call in tries)
    script = (f"{PEAK_MEMORY}\nimport adapters, adapters.encoders, transformers\nbefore = peak_bytes()\n{code}"
              f"print(peak_bytes() - before)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    *messages, grown = done.stdout.strip().splitlines()
    assert int(grown) < 64 * 2**20, f"peak memory grew by {int(grown) / 2**20:.0f} MiB"
    assert len(messages) == 3 and all(len(m) < 300 and "decompression bomb" in m for m in messages), messages
    assert "pickle_bomb.bin is refused: its record 'pytorch_model/data.pkl' declares 3221225472 bytes" in messages[0]
    assert "storage_bomb.bin is refused: its tensors declare 2685" in messages[1]
    assert "byt5/pytorch_model.bin is refused" in messages[2]


def test_a_zip_checkpoint_within_the_bounds_still_loads(bombs):
    assert load_adapter(bombs["official"]).info.source == "official"


# ---- extract and single_file on hostile folders: one-line errors, nothing leaked or left ------

SECRET = "s3cr3t-credential-8f1e"
CLI_RUNS = """
import contextlib, importlib, io, json, sys, time
for name, module, argv in json.loads(sys.argv[1]):
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = importlib.import_module(module).main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException as e:
            rc = f"raised {type(e).__name__}: {e}"
    print(json.dumps([name, rc, err.getvalue(), time.monotonic() - start]), flush=True)
"""


def run_clis(runs: list[tuple[str, str, list[str]]], timeout: float = 120) -> dict[str, tuple]:
    """Run each (name, module, argv) through the module's ``main`` in one fresh Python, under a
    time limit (a read that never ends fails the test); name -> (exit code, stderr, seconds)."""
    done = subprocess.run([sys.executable, "-c", CLI_RUNS, json.dumps(runs)], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (rc, err, seconds) for name, rc, err, seconds in map(json.loads, done.stdout.splitlines())}


def hostile_byt5_folders(root: Path, secret: Path) -> dict[str, Path]:
    """A byT5 folder broken in each way extract met hostile input (name -> folder)."""
    import os
    import struct

    sharded, single = make_byt5(root / "sharded"), make_byt5(root / "single", shard_size="50GB")
    index_name = "model.safetensors.index.json"
    first_shard = sorted(json.loads((sharded / index_name).read_text())["weight_map"].values())[0]

    def variant(name: str, source: Path, change) -> None:
        folder = root / name
        shutil.copytree(source, folder, symlinks=True)
        change(folder)
        folders[name] = folder

    def index_values(value):
        def change(folder):
            index = json.loads((folder / index_name).read_text())
            index["weight_map"] = {k: value for k in index["weight_map"]}
            (folder / index_name).write_text(json.dumps(index))
        return change

    def replace(name, make):
        def change(folder):
            (folder / name).unlink()
            make(folder / name)
        return change

    def tensor_meta(**fields):
        return lambda folder: edit_safetensors_header(
            folder / "model.safetensors", lambda h: {**h, "shared.weight": {**h["shared.weight"], **fields}})

    folders: dict[str, Path] = {}
    variant("index naming /dev/zero", sharded, index_values("/dev/zero"))
    variant("numeric weight_map values", sharded, index_values(1))
    variant("a shard linking to /dev/zero", sharded, replace(first_shard, lambda p: p.symlink_to("/dev/zero")))
    variant("a named pipe as a shard", sharded, replace(first_shard, os.mkfifo))
    variant("header length 2^40", single, replace("model.safetensors",
                                                  lambda p: p.write_bytes(struct.pack("<Q", 2**40) + b"{}")))
    variant("a file under 8 bytes", single, replace("model.safetensors", lambda p: p.write_bytes(b"\x01\x02\x03")))
    variant("a JSON list header", single, replace("model.safetensors",
                                                  lambda p: p.write_bytes(struct.pack("<Q", 8) + b"[1, 2]  ")))
    variant("missing data_offsets", single, lambda folder: edit_safetensors_header(
        folder / "model.safetensors", lambda h: {**h, "shared.weight": {"dtype": "F32", "shape": [384, 32]}}))
    variant("a dtype mismatch", single, tensor_meta(dtype="F16"))
    variant("a shape mismatch", single, tensor_meta(shape=[384, 31]))
    variant("a transposed shape (valid file, will not load)", single, tensor_meta(shape=[32, 384]))
    variant("a 110 MB tokenizer_config.json", single,
            lambda folder: os.truncate(folder / "tokenizer_config.json", 110 * 2**20))
    variant("a tokenizer file linking outside", single,
            replace("added_tokens.json", lambda p: p.symlink_to(secret)))
    return folders


@pytest.fixture(scope="module")
def packing_runs(tmp_path_factory, encoder_dirs):
    """Both packing tools run (in one fresh Python) on the hostile byT5 folders and on two good folders
    beside which lie a notes.json linking to a credentials file and a 110 MB big.txt."""
    root = tmp_path_factory.mktemp("packing")
    secret = root / "credentials.json"
    secret.write_text(json.dumps({"token": SECRET}))
    folders = hostile_byt5_folders(root / "in", secret)
    byt5, clip = make_byt5(root / "byt5"), shutil.copytree(encoder_dirs["chinese_clip"], root / "chinese_clip")
    for folder in (byt5, clip):
        (folder / "notes.json").symlink_to(secret)
        with open(folder / "big.txt", "wb") as f:
            f.truncate(110 * 2**20)
    out = root / "out"
    out.mkdir()
    runs = [(name, "adapters.encoders.extract", [str(folder), str(out / "x.safetensors")])
            for name, folder in folders.items()]
    runs += [("--context-length -5", "adapters.encoders.extract",
              [str(root / "in" / "single"), str(out / "x.safetensors"), "--context-length", "-5"]),
             ("good extract", "adapters.encoders.extract", [str(byt5), str(root / "byt5.safetensors")]),
             ("good single_file", "adapters.encoders.single_file", [str(clip), str(root / "clip.safetensors")])]
    return {"root": root, "out": out, "folders": folders, "runs": runs, "results": run_clis(runs)}


@pytest.mark.skipif(sys.platform == "win32", reason="/dev/zero, named pipes and symlinks as an unprivileged user")
def test_hostile_extract_inputs_end_in_one_line_errors_and_write_nothing(packing_runs):
    results, folders = packing_runs["results"], packing_runs["folders"]
    assert set(results) == {name for name, _, _ in packing_runs["runs"]}
    loaded_back = "a transposed shape (valid file, will not load)"  # transformers logs its load report first
    for name, (rc, err, seconds) in results.items():
        if name.startswith("good "):
            continue
        lines = err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert rc == 2 and errors == lines[-1:] and "Traceback" not in err, (name, rc, err)
        assert len(lines) == 1 or name == loaded_back, (name, err)
        assert seconds < 30, (name, seconds)
    assert "/dev/zero" in results["index naming /dev/zero"][1]
    assert "not a regular file" in results["a named pipe as a shard"][1]
    assert "larger than 32 MiB" in results["a 110 MB tokenizer_config.json"][1]
    assert "links outside" in results["a tokenizer file linking outside"][1]
    assert "was not written: it would not load" in results[loaded_back][1]
    assert "expected a whole number above 0, not '-5'" in results["--context-length -5"][1]
    assert list(packing_runs["out"].iterdir()) == []
    # the loader the nodes use finds weights through the same lookup
    with pytest.raises(EncoderLoadError, match="maps .* to '/dev/zero', expected the file name of a shard"):
        load_language_encoder(folders["index naming /dev/zero"])
    with pytest.raises(EncoderLoadError, match="is not a regular file"):
        load_language_encoder(folders["a named pipe as a shard"])


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks as an unprivileged user")
def test_extract_and_single_file_embed_only_what_they_need(packing_runs):
    """The notes.json linking to a credentials file and the big.txt never enter the packed files
    people share; the outputs load."""
    results = packing_runs["results"]
    assert results["good extract"][0] == 0 and results["good single_file"][0] == 0, results
    for name in ("byt5.safetensors", "clip.safetensors"):
        path = packing_runs["root"] / name
        assert SECRET.encode() not in path.read_bytes()
        with safetensors.safe_open(str(path), framework="pt") as f:
            members = json.loads(f.metadata()["pea_language_clip"])["files"]
        assert not {"notes.json", "big.txt"} & {m.rsplit("/", 1)[-1] for m in members}
        load_language_encoder(path)
