"""Hostile model files, round 2: tokenizers that crash the tokenizers library or name a class not
made for their model, and sizes read from files that would allocate without bound."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters import AdapterFileError, EncoderLoadError, EncoderSpec, load_language_encoder
from adapters.clip_score import load_clip_scorer
from adapters.encoders.hf_text import load_tokenizer
from adapters.encoders.single_file import pack_encoder
from adapters.errors import TokenizerError
from adapters.file_format import read_adapter
from tests.standins.encoders import make_adapter, make_marian
from evaluation.translate import Translator, load_translator
from tests.broken_files import PANIC_PROMPT, edit_json, repack, with_adapter_metadata, with_panicking_tokenizer
from training.data.captions import CaptionWindow
from training.data.sampling import Record


@pytest.fixture(scope="module")
def chinese_pack(tmp_path_factory, encoder_dirs):
    return pack_encoder(load_language_encoder(encoder_dirs["chinese_clip"]),
                        tmp_path_factory.mktemp("packs") / "chinese_clip.safetensors")


@pytest.fixture(scope="module")
def panicking(tmp_path_factory, encoder_dirs):
    """A two-tower Chinese-CLIP whose tokenizer.json panics on prompts of more than ten characters."""
    return with_panicking_tokenizer(encoder_dirs["chinese_clip"], tmp_path_factory.mktemp("hostile") / "panicking")


def test_a_tokenizer_panic_is_the_packs_error_naming_the_model(panicking):
    encoder = load_language_encoder(panicking)
    assert encoder.tokenize(["一只猫"]).shape == (1, encoder.context_length)  # short prompts still tokenize
    with pytest.raises(TokenizerError, match=f"The tokenizer of {panicking} crashed on this text .*"
                                             f"retry-limit-in-match over.*damaged or hostile"):
        encoder.encode([PANIC_PROMPT])
    assert encoder.tokenize(["一只猫"]).shape == (1, encoder.context_length)  # and still do after a panic


def test_the_evaluators_translator_turns_the_panic_into_the_packs_error(tmp_path, panicking):
    """A translation model whose tokenizer.json panics (MarianMT's own tokenizer is sentencepiece, so
    the panicking tokenizer is put beside a real MarianMT model)."""
    marian = load_translator(make_marian(tmp_path / "opus-mt-zh-en"))
    hostile = Translator(marian.model, load_tokenizer(panicking), marian.folder)
    with pytest.raises(TokenizerError, match="The tokenizer of .*opus-mt-zh-en crashed on this text"):
        hostile.translate([PANIC_PROMPT], "zh")


def test_the_scorer_and_the_trainers_caption_check_turn_the_panic_into_the_packs_error(panicking):
    with pytest.raises(TokenizerError, match="The tokenizer of .*panicking crashed"):
        load_clip_scorer(panicking).embed_texts([PANIC_PROMPT])
    encoder = load_language_encoder(panicking)
    window = CaptionWindow(encoder.tokenizer, encoder.context_length, encoder.path)
    with pytest.raises(TokenizerError, match="The tokenizer of .*panicking crashed"):
        window.measure([Record(image=Path("a.png"), text=PANIC_PROMPT, en=None, native=True)])


@pytest.mark.parametrize("tokenizer_class", ["AutoModel", "T5Tokenizer", "os.system", 3, ["BertTokenizer"]])
def test_only_tokenizer_classes_made_for_the_model_type_are_accepted(tmp_path, encoder_dirs, tokenizer_class):
    folder = tmp_path / "zh"
    shutil.copytree(encoder_dirs["chinese_clip"], folder)
    edit_json(folder / "tokenizer_config.json", tokenizer_class=tokenizer_class)
    with pytest.raises(TokenizerError, match=r"zh: tokenizer_config.json names tokenizer_class .*, which is not a "
                                             r"tokenizer for model_type 'chinese_clip' \(accepted: BertTokenizer, "):
        load_language_encoder(folder)


# --- context lengths read from files --------------------------------------------------------

PEAK_RSS = """
import json, resource, sys, time
from adapters import AdapterFileError, EncoderLoadError, EncoderSpec, load_language_encoder
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
try:
    load_language_encoder(sys.argv[1]).encode(["一只红色的猫"])
    outcome = "loaded"
except EncoderLoadError as e:
    outcome = str(e)
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start,
                  "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""
"""Loads (and encodes with) a language CLIP in a fresh process; prints the error, the time taken and how
far the process's peak resident memory (getrusage's ru_maxrss, KiB on Linux) grew past its level after imports."""


def test_a_huge_context_length_in_a_packed_header_is_refused_fast_with_bounded_memory(tmp_path, chinese_pack):
    hostile = repack(chinese_pack, tmp_path / "long.safetensors", lambda h: {**h, "context_length": 10**9})
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(hostile)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["outcome"] == (f"{hostile}: header field 'context_length' is 1000000000, expected a whole number "
                                 f"from 1 to 1024")
    assert result["seconds"] < 5 and result["growth_mb"] < 100, result


@pytest.mark.parametrize("length", [10**8, 100000, 1025])
def test_a_context_length_in_a_packed_header_beyond_the_nodes_maximum_is_refused(tmp_path, chinese_pack, length):
    hostile = repack(chinese_pack, tmp_path / "long.safetensors", lambda h: {**h, "context_length": length})
    with pytest.raises(EncoderLoadError, match=f"header field 'context_length' is {length}, expected a whole number "
                                               f"from 1 to 1024$"):
        load_language_encoder(hostile)


@pytest.mark.parametrize("value", ["77", -5, 77.5, 0, True, None, 10**9, float("inf"), [77] * 100000])
def test_an_open_clip_context_length_that_is_not_a_sane_whole_number_is_refused(tmp_path, encoder_dirs, value):
    folder = tmp_path / "oc"
    shutil.copytree(encoder_dirs["open_clip"], folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["context_length"] = value
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderLoadError, match=r"oc/open_clip_config.json: text_cfg.context_length is .{1,45}, "
                                               r"expected a whole number from 1 to 1024$"):
        load_language_encoder(folder)


@pytest.mark.parametrize("kind,length,fits,message", [
    ("chinese_clip", 100000, 64, "context length is 100000, expected a whole number from 1 to 1024"),
    ("chinese_clip", 65, 64, "context length is 65, but the encoder has only 64 positions: expected at most 64"),
    ("open_clip", 79, 78, "context length is 79, but the encoder has only 78 positions: expected at most 78"),
])
def test_a_context_length_beyond_the_encoders_positions_is_refused(encoder_dirs, kind, length, fits, message):
    with pytest.raises(EncoderLoadError, match=f"Language encoder .*{kind}: {message}$"):
        load_language_encoder(encoder_dirs[kind], context_length=length)
    assert load_language_encoder(encoder_dirs[kind], context_length=fits).context_length == fits


# --- adapter metadata and model configs: numbers, nesting and sizes ---------------------------

def _set(field: str, value: str):
    """A metadata edit putting the raw JSON ``value`` at ``field`` (shape.in_dim, encoder.context_length, ...)."""
    def edit(text: str) -> str:
        data = json.loads(text)
        group, key = field.split(".")
        data[group][key] = "VALUE"
        return json.dumps(data).replace('"VALUE"', value)
    return edit


@pytest.mark.parametrize("field,value,message", [
    ("shape.in_dim", "1e999", "metadata field 'shape.in_dim' is inf, expected a whole number from 1 to 65536"),
    ("shape.in_dim", "9" * 5000, "metadata 'pea_adapter' is not valid JSON: Exceeds the limit (4300 digits)"),
    ("shape.in_dim", "-3", "metadata field 'shape.in_dim' is -3, expected a whole number from 1 to 65536"),
    ("shape.hidden_dims", json.dumps([48] * 10**6),
     "metadata field 'shape.hidden_dims' is an array of 1000000, expected an array of at most 64 widths"),
    ("shape.head", json.dumps("x" * 10**6), f"metadata field 'shape.head' is '{'x' * 39}..., expected one of"),
    ("encoder.context_length", "1e9", "metadata field 'encoder.context_length' is 1000000000.0, expected a whole "
                                      "number from 1 to 1024 or null"),
    ("encoder.context_length", "1000000000", "metadata field 'encoder.context_length' is 1000000000, expected"),
    ("encoder.name", "[" * 10000 + "]" * 10000, "metadata 'pea_adapter' nests arrays or objects too deep to be read"),
], ids=["1e999", "5000-digits", "negative", "million-widths", "million-character-head", "1e9-float", "1e9",
        "nested-10000-deep"])
def test_adapter_metadata_numbers_nesting_and_lengths_are_bounded_with_short_messages(tmp_path, field, value, message):
    path = make_adapter(tmp_path / "meta.safetensors", "sd15", 32, encoder=EncoderSpec("chinese_clip", "x", 52, True))
    with_adapter_metadata(path, _set(field, value))
    with pytest.raises(AdapterFileError) as refused:
        read_adapter(path)
    assert str(refused.value).startswith(f"{path}: {message}"), str(refused.value)[:300]
    assert len(str(refused.value)) < 400


def _edit_config(folder: Path, *keys: str, value) -> None:
    config = json.loads((folder / "config.json").read_text())
    target = config
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("kind,keys,value,message", [
    ("chinese_clip", ("text_config", "num_hidden_layers"), 100000, "num_hidden_layers is 100000, expected a whole "
                                                                   "number up to 256"),
    ("chinese_clip", ("text_config", "hidden_size"), 2.5, "hidden_size is 2.5, expected a whole number up to 32768"),
    ("t5", ("num_layers",), 256, None),  # fits the bounds; the budget below refuses the width
    ("clip", ("text_config", "intermediate_size"), 131072, None),
    ("altclip", ("text_config", "vocab_size"), 2**22, None),
])
def test_a_config_describing_a_model_beyond_the_budget_is_refused_before_it_is_built(tmp_path, encoder_dirs, kind,
                                                                                    keys, value, message):
    folder = tmp_path / kind
    shutil.copytree(encoder_dirs[kind], folder)
    _edit_config(folder, *keys, value=value)
    if message is None:  # make the model big as well as deep
        width = ("text_config", "hidden_size") if keys[0] == "text_config" else ("d_model",)
        _edit_config(folder, *width, value=32768)
        message = r"describes a model of about \d+ billion parameters \(\d+ layers of width 32768\), more than the 12"
    start = time.monotonic()
    with pytest.raises(EncoderLoadError, match=rf"{kind}/config.json:? {message}"):
        load_language_encoder(folder)
    assert time.monotonic() - start < 10


def test_an_open_clip_text_tower_and_a_scorer_config_are_held_to_the_budget(tmp_path, encoder_dirs):
    folder = tmp_path / "oc"
    shutil.copytree(encoder_dirs["open_clip"], folder)
    tower = next(p for p in folder.iterdir() if (p / "config.json").is_file())
    _edit_config(tower, "num_hidden_layers", value=100000)
    with pytest.raises(EncoderLoadError, match=r"\(its config.json\): num_hidden_layers is 100000, expected"):
        load_language_encoder(folder)
    with pytest.raises(EncoderLoadError, match=r"config.json: num_hidden_layers is 100000, expected"):
        load_clip_scorer(folder)
    zh = tmp_path / "zh"
    shutil.copytree(encoder_dirs["chinese_clip"], zh)
    _edit_config(zh, "vision_config", "num_hidden_layers", value=100000)
    with pytest.raises(EncoderLoadError, match=r"zh/config.json \(vision_config\): num_hidden_layers is 100000"):
        load_clip_scorer(zh)
