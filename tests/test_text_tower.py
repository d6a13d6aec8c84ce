"""Loading only the text tower's tensors of a checkpoint (two-tower CLIPs, encoder-decoder T5s)."""
import json

import pytest
import torch

from adapters import EncoderLoadError, load_language_encoder
from adapters.encoders.hf_text import hf_encoder_from_parts, load_tokenizer
from adapters.encoders.weights import open_checkpoint, pick, under_prefix

TEXT_PREFIXES = {"chinese_clip": ("text_model.",), "altclip": ("text_model.",), "clip": ("text_model.",),
                 "t5": ("shared.", "encoder.")}


class Recording:
    """A tensor source that remembers which tensors were read."""

    def __init__(self, source):
        self.source, self.read = source, []

    def keys(self):
        return self.source.keys()

    def get_tensor(self, name):
        self.read.append(name)
        return self.source.get_tensor(name)


@pytest.mark.parametrize("kind", TEXT_PREFIXES)
def test_only_the_text_towers_tensors_are_read(encoder_dirs, kind):
    folder = encoder_dirs[kind]
    config = json.loads((folder / "config.json").read_text())
    with open_checkpoint(folder) as tensors:
        recording = Recording(tensors)
        encoder = hf_encoder_from_parts(config, load_tokenizer(folder), recording, name=kind, path=folder)
        other = [k for k in tensors.keys() if not k.startswith(TEXT_PREFIXES[kind])]
    assert other, "the stand-in must hold another tower (vision) or a decoder"
    assert recording.read and all(k.startswith(TEXT_PREFIXES[kind]) for k in recording.read)
    ids = encoder.tokenize(["一只红色的猫", "a red cat"])
    with torch.no_grad():
        assert torch.equal(encoder(ids), load_language_encoder(folder)(ids))


def copy_without_weights(source, folder):
    """``source``'s config and tokenizer files in a new ``folder``, without its safetensors weights."""
    folder.mkdir()
    for f in source.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())


def test_a_pickled_two_tower_checkpoint_loads_its_text_tower(tmp_path, encoder_dirs):
    import safetensors.torch

    folder = tmp_path / "pickled"
    source = encoder_dirs["chinese_clip"]
    copy_without_weights(source, folder)
    torch.save(safetensors.torch.load_file(str(source / "model.safetensors")), folder / "pytorch_model.bin")
    pickled, reference = load_language_encoder(folder), load_language_encoder(source)
    ids = reference.tokenize(["山水画"])
    with torch.no_grad():
        assert torch.equal(pickled(ids), reference(ids))


def test_a_checkpoint_without_the_text_tower_says_so(tmp_path, encoder_dirs):
    import safetensors.torch

    folder = tmp_path / "vision_only"
    source = encoder_dirs["chinese_clip"]
    copy_without_weights(source, folder)
    state = safetensors.torch.load_file(str(source / "model.safetensors"))
    safetensors.torch.save_file({k: v for k, v in state.items() if not k.startswith("text_model.")},
                                str(folder / "model.safetensors"))
    with pytest.raises(EncoderLoadError, match=r"No weights of the ChineseCLIPModel in .*vision_only.*text_model\.\*"):
        load_language_encoder(folder)


def test_open_clip_keeps_the_text_prefix_only_when_present():
    tensors = {"text.a": 1, "visual.b": 2}
    assert pick(_Dict(tensors), under_prefix(tensors, "text.")) == {"a": 1}
    assert pick(_Dict({"a": 1}), under_prefix({"a": 1}, "text.")) == {"a": 1}


class _Dict(dict):
    def get_tensor(self, name):
        return self[name]


def test_the_stand_in_vision_tower_replaces_a_legacy_vision_config_dict(encoder_dirs):
    """Configs saved by older transformers repeat the vision config as vision_config_dict, which
    the config class merges back in: it must not bring the real vision tower's size with it."""
    from adapters.encoders.hf_text import TINY_VISION, tower_config

    config = json.loads((encoder_dirs["chinese_clip"] / "config.json").read_text())
    config["vision_config_dict"] = {**config["vision_config"], "hidden_size": 1280, "num_hidden_layers": 32}
    tower, model_config = tower_config(config, encoder_dirs["chinese_clip"])
    assert tower.attr == "text_model"
    vision = model_config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers) == (TINY_VISION["hidden_size"], TINY_VISION["num_hidden_layers"])
    assert model_config.text_config.hidden_size == config["text_config"]["hidden_size"]
