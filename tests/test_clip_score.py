"""CLIPScore with both towers of a language CLIP, against the upstream model classes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from PIL import Image

from adapters import load_language_encoder
from adapters.clip_score import load_clip_scorer
from adapters.encoders.single_file import pack_encoder
from adapters.errors import EncoderLoadError

TEXTS = ["一只红色的猫坐在桌子上", "a red cat sitting on a table", "красная кошка сидит на столе"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    sizes = [(48, 40), (32, 32), (70, 50)]  # not square, not the model's size: preprocessing matters
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def upstream_clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return 100 * torch.clamp((image_features * text_features).sum(-1), min=0)


def features(output) -> torch.Tensor:
    return output if torch.is_tensor(output) else output.pooler_output


@pytest.mark.parametrize("kind, model_class", [("chinese_clip", "ChineseCLIPModel"), ("clip", "CLIPModel"),
                                               ("altclip", "AltCLIPModel")])
def test_hugging_face_clip_score_equals_the_upstream_model(encoder_dirs, images, kind, model_class):
    folder = encoder_dirs[kind]
    scorer = load_clip_scorer(folder)
    model = getattr(transformers, model_class).from_pretrained(str(folder), local_files_only=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    inputs = processor(text=TEXTS, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_features = features(model.get_image_features(pixel_values=inputs["pixel_values"]))
        text_features = features(model.get_text_features(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs["attention_mask"]))
    torch.testing.assert_close(scorer.embed_images(images), image_features, atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.embed_texts(TEXTS), text_features, atol=1e-5, rtol=0)
    expected = upstream_clip_score(image_features, text_features)
    assert torch.allclose(scorer.score(images, TEXTS), expected, atol=1e-5, rtol=0)
    one_text = upstream_clip_score(image_features, text_features[:1])
    # one text is encoded without the batch's padding: the 0-100 score may differ by a few float32 steps
    assert torch.allclose(scorer.score(images, TEXTS[0]), one_text, atol=1e-4, rtol=0)


def test_open_clip_score_equals_open_clip_encode_image_and_text(encoder_dirs, images):
    import open_clip

    folder = encoder_dirs["open_clip"]
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    tower = folder / "xlm-roberta-large"
    text_cfg = {**cfg["model_cfg"]["text_cfg"], "hf_model_name": str(tower), "hf_tokenizer_name": str(tower),
                "hf_model_pretrained": False}
    model = open_clip.CustomTextCLIP(cfg["model_cfg"]["embed_dim"], cfg["model_cfg"]["vision_cfg"], text_cfg)
    model.load_state_dict(torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True))
    model.eval()
    transform = open_clip.image_transform(cfg["model_cfg"]["vision_cfg"]["image_size"], is_train=False,
                                          mean=cfg["preprocess_cfg"]["mean"], std=cfg["preprocess_cfg"]["std"])
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tower), context_length=77)
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([transform(im) for im in images]))
        text_features = model.encode_text(tokenizer(TEXTS))
    scores = load_clip_scorer(folder).score(images, TEXTS)
    expected = upstream_clip_score(image_features, text_features)
    assert torch.allclose(scores, expected, atol=1e-5, rtol=0)
    assert (scores > 0).any(), "the comparison should not rest on clamped zeros alone"


def test_a_text_tower_alone_is_refused_with_what_is_needed(encoder_dirs, tmp_path):
    packed = pack_encoder(load_language_encoder(encoder_dirs["chinese_clip"]), tmp_path / "zh-text.safetensors")
    with pytest.raises(EncoderLoadError, match="zh-text.safetensors is a single file.*only its text tower.*vision tower"):
        load_clip_scorer(packed)

    text_only = tmp_path / "chinese-clip-text"
    full = transformers.ChineseCLIPModel.from_pretrained(str(encoder_dirs["chinese_clip"]), local_files_only=True)
    full.text_model.save_pretrained(str(text_only))
    transformers.AutoTokenizer.from_pretrained(str(encoder_dirs["chinese_clip"])).save_pretrained(str(text_only))
    with pytest.raises(EncoderLoadError, match=r"config.json describes model_type 'chinese_clip_text_model'.*vision tower"):
        load_clip_scorer(text_only)

    with pytest.raises(EncoderLoadError, match="model_type 't5'.*vision tower"):
        load_clip_scorer(encoder_dirs["t5"])


def test_vision_weights_missing_from_a_two_tower_folder_are_named(encoder_dirs, tmp_path):
    import shutil

    stripped = tmp_path / "chinese-clip-no-vision"
    shutil.copytree(encoder_dirs["chinese_clip"], stripped)
    weights = safetensors.torch.load_file(str(stripped / "model.safetensors"))
    safetensors.torch.save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")},
                                str(stripped / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EncoderLoadError, match="chinese-clip-no-vision have no vision tower .*vision_model"):
        load_clip_scorer(stripped)

    open_clip_folder = tmp_path / "xlmr-no-vision"
    shutil.copytree(encoder_dirs["open_clip"], open_clip_folder)
    bin_path = open_clip_folder / "open_clip_pytorch_model.bin"
    state = torch.load(bin_path, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("visual.")}, bin_path)
    with pytest.raises(EncoderLoadError, match="open_clip_pytorch_model.bin holds no vision tower"):
        load_clip_scorer(open_clip_folder)


def test_missing_folder_and_mismatched_counts_are_errors(encoder_dirs, tmp_path, images):
    with pytest.raises(EncoderLoadError, match="CLIP for scoring not found"):
        load_clip_scorer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        load_clip_scorer(encoder_dirs["chinese_clip"]).score(images, TEXTS[:2])


def test_standin_makers_write_both_towers(encoder_dirs):
    for kind in ("chinese_clip", "clip", "altclip"):
        assert (encoder_dirs[kind] / "preprocessor_config.json").is_file()
        keys = safetensors.torch.load_file(str(encoder_dirs[kind] / "model.safetensors"))
        assert any(k.startswith("vision_model.") for k in keys)


@pytest.mark.parametrize("kind", ["altclip", "clip", "chinese_clip"])
def test_texts_at_and_past_the_text_limit_are_scored_as_their_start(encoder_dirs, images, kind):
    """AltCLIP's XLM-R tower holds max_position_embeddings less pad_token_id + 1 tokens (80 -> 78):
    a text at that limit and one past it score, the longer one as its first 78 tokens."""
    scorer = load_clip_scorer(encoder_dirs[kind])
    config = transformers.AutoConfig.from_pretrained(str(encoder_dirs[kind]), local_files_only=True).text_config
    expected = {"altclip": config.max_position_embeddings - config.pad_token_id - 1, "clip": 77, "chinese_clip": 52}
    assert scorer.text_limit == expected[kind]
    lengths = {n: scorer.text_lengths(["猫 " * n])[0] for n in range(10, 90)}
    at = next(n for n, length in lengths.items() if length == scorer.text_limit)
    texts = ["猫 " * at, "猫 " * (at + 30)]
    assert scorer.truncated(texts) == [False, True]
    scores = scorer.score(images[:2], texts)
    assert torch.isfinite(scores).all()
    assert torch.allclose(scorer.embed_texts(texts[1:]), scorer.embed_texts(["猫 " * (at + 5)]), atol=1e-5)
