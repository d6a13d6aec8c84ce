"""Tiny real-format files for the demos (``python -m adapters.check --demo``, the miniature
world): a Chinese-CLIP whose vocabulary covers the given texts, and an adapter with random
weights. Configs are the real transformers config classes at tiny widths; the tokenizer is built
here with the ``tokenizers`` library. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .file_format import save_adapter
from .metadata import AdapterInfo, EncoderSpec
from .module import AdapterShape, PEAAdapter

CORPUS = [
    "一只红色的猫坐在桌子上", "红烧狮子头", "山水画，雾气弥漫的山谷", "一个灯笼挂在门口",
    "蓝色的天空和白色的云", "a red cat sitting on a table", "a lantern hanging at the door",
    "blue sky with white clouds", "красная кошка сидит на столе", "фонарь у двери",
    "빨간 고양이가 탁자 위에 앉아 있다", "un gatto rosso seduto sul tavolo", "赤い猫がテーブルの上に座っている",
    "masterpiece, best quality, detailed", "a photo of a dog", "油画风格的城市夜景",
]
TINY = dict(hidden=32, heads=2, layers=2, inter=64)


def wordpiece(extra: list[str] = ()) -> Tokenizer:
    normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    texts = [normalizer.normalize_str(line) for line in [*CORPUS, *extra]]
    chars = sorted({c for line in texts for c in line if not c.isspace()})
    words = sorted({w for line in texts[len(CORPUS):] for w in line.split() if len(w) > 1})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + words
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    return tok


def bert_tokenizer(extra: list[str] = ()):
    """A WordPiece tokenizer: the characters of the corpus and of ``extra`` texts (CJK text is
    read a character at a time, as BERT-Chinese does) and the whole words of ``extra``."""
    return transformers.BertTokenizerFast(tokenizer_object=wordpiece(extra), pad_token="[PAD]",
                                          unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                          mask_token="[MASK]")


def bert_like(tokenizer, hidden: int = TINY["hidden"], **extra) -> dict:
    t = TINY
    return dict(vocab_size=len(tokenizer), hidden_size=hidden, num_attention_heads=t["heads"],
                num_hidden_layers=t["layers"], intermediate_size=t["inter"] * hidden // t["hidden"],
                pad_token_id=tokenizer.pad_token_id, **extra)


def save_model(model, tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


IMAGE_SIZE = 32
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tiny_vision(cls):
    return cls(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
               image_size=IMAGE_SIZE, patch_size=16, projection_dim=16)


def save_image_processor(processor_class, folder: Path) -> None:
    """The ``preprocessor_config.json`` the published two-tower repos carry, at the tiny image size."""
    processor_class(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                    image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(str(folder))


def make_chinese_clip(folder: Path, seed: int = 0, extra_text: list[str] = (), max_positions: int = 64,
                      hidden: int = TINY["hidden"]) -> Path:
    """A full two-tower Chinese-CLIP (BERT text tower ``hidden`` wide, a ViT vision tower and the
    image processor's config), as the OFA-Sys repos ship it; its vocabulary covers the built-in
    corpus and ``extra_text``."""
    torch.manual_seed(seed)
    tok = bert_tokenizer(extra_text)
    C = transformers
    text = C.ChineseCLIPTextConfig(**bert_like(tok, hidden, max_position_embeddings=max_positions))
    vision = tiny_vision(C.ChineseCLIPVisionConfig)
    cfg = C.ChineseCLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    save_image_processor(C.ChineseCLIPImageProcessor, folder)
    return save_model(C.ChineseCLIPModel(cfg), tok, folder)


def make_adapter(path: Path, head: str, in_dim: int, hidden: tuple[int, ...] = (48, 48), seed: int = 0,
                 encoder: EncoderSpec | None = None, official: bool = False) -> Path:
    """A random adapter file: ours (safetensors + metadata) or the official pickle layout."""
    torch.manual_seed(seed)
    shape = AdapterShape.for_head(head, in_dim, hidden)
    adapter = PEAAdapter(shape)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.2)
    if official:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({f"module.{k}": v.half() for k, v in adapter.state_dict().items()}, path)
        return path
    return save_adapter(adapter, AdapterInfo(shape=shape, encoder=encoder or EncoderSpec(),
                                             languages=["zh", "en"]), path)
