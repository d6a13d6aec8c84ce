"""Hostile model files, round 2: tokenizers that crash the tokenizers library or name a class not
made for their model, and sizes read from files that would allocate without bound."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import EncoderLoadError, load_language_encoder
from adapters.clip_score import load_clip_scorer
from adapters.errors import TokenizerError
from adapters.encoders.single_file import pack_encoder
from tests.broken_files import PANIC_PROMPT, edit_json, repack, with_panicking_tokenizer
from training.captions import CaptionWindow
from training.data import Record


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
from adapters import EncoderLoadError, load_language_encoder
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


@pytest.mark.parametrize("length", [10**9, 10**8, 100000])
def test_a_huge_context_length_in_a_packed_header_is_refused_fast_with_bounded_memory(tmp_path, chinese_pack,
                                                                                     length):
    hostile = repack(chinese_pack, tmp_path / "long.safetensors", lambda h: {**h, "context_length": length})
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(hostile)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["outcome"] == (f"{hostile}: header field 'context_length' is {length}, expected a whole number "
                                 f"from 1 to 1024")
    assert result["seconds"] < 5 and result["growth_mb"] < 100, result


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
