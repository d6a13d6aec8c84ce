"""Tiny stand-in language encoders, in the real file layouts, for the tests (the demos' own
Chinese-CLIP and adapter builders are :mod:`adapters.demo_files`).

Configs are the real transformers / open_clip config classes at tiny widths; tokenizers are
trained here with the ``tokenizers`` library on a small multilingual corpus. Nothing is
downloaded.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from adapters.demo_files import (  # noqa: F401  (TINY, make_adapter: stand-ins the tests take from here too)
    CLIP_MEAN, CLIP_STD, CORPUS, IMAGE_SIZE, TINY, bert_like, make_adapter, make_chinese_clip, save_image_processor,
    save_model, tiny_vision)

def _unigram(bos: str | None, eos: str, pad: str, unk: str, vocab_size: int = 400) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = [t for t in (bos, pad, eos, unk) if t]
    tok.train_from_iterator(CORPUS * 4, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=unk))
    single = f"{bos} $A {eos}" if bos else f"$A {eos}"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, tok.token_to_id(t)) for t in (bos, eos) if t])
    return tok


def xlmr_tokenizer():
    return transformers.XLMRobertaTokenizerFast(
        tokenizer_object=_unigram("<s>", "</s>", "<pad>", "<unk>"), bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<unk>")


def t5_tokenizer():
    return transformers.T5TokenizerFast(tokenizer_object=_unigram(None, "</s>", "<pad>", "<unk>"),
                                        eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                        extra_ids=0)


def clip_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("<|startoftext|>", "<|endoftext|>")])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def make_clip(folder: Path, seed: int = 0) -> Path:
    """A full two-tower CLIP in Hugging Face format with its image processor's config (as the
    English, Japanese, Korean ... CLIPs ship)."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    C = transformers
    text = C.CLIPTextConfig(vocab_size=len(tok), hidden_size=TINY["hidden"], intermediate_size=TINY["inter"],
                            num_attention_heads=TINY["heads"], num_hidden_layers=TINY["layers"],
                            max_position_embeddings=77, projection_dim=16,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    cfg = C.CLIPConfig(text_config=text.to_dict(), vision_config=tiny_vision(C.CLIPVisionConfig).to_dict(),
                       projection_dim=16)
    save_image_processor(C.CLIPImageProcessor, folder)
    return save_model(C.CLIPModel(cfg), tok, folder)


def make_altclip(folder: Path, seed: int = 0) -> Path:
    """A full AltCLIP (XLM-R text tower projected to ``project_dim``, a ViT, the image processor's config)."""
    torch.manual_seed(seed)
    tok = xlmr_tokenizer()
    C = transformers
    text = C.AltCLIPTextConfig(**bert_like(tok, max_position_embeddings=80, project_dim=24,
                                            type_vocab_size=1))
    cfg = C.AltCLIPConfig(text_config=text.to_dict(),
                          vision_config=tiny_vision(C.AltCLIPVisionConfig).to_dict(), projection_dim=16)
    save_image_processor(C.CLIPImageProcessor, folder)
    return save_model(C.AltCLIPModel(cfg), tok, folder)


def make_t5(folder: Path, model_type: str = "t5", seed: int = 0) -> Path:
    """A full encoder-decoder T5 / mT5 / umT5 checkpoint; the backend keeps the encoder."""
    torch.manual_seed(seed)
    tok = t5_tokenizer()
    config_cls, model_cls = {
        "t5": (transformers.T5Config, transformers.T5ForConditionalGeneration),
        "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration),
        "umt5": (transformers.UMT5Config, transformers.UMT5ForConditionalGeneration),
    }[model_type]
    cfg = config_cls(vocab_size=len(tok), d_model=TINY["hidden"], d_kv=16, d_ff=TINY["inter"],
                     num_layers=2, num_decoder_layers=1, num_heads=TINY["heads"],
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.pad_token_id, feed_forward_proj="gated-gelu")
    return save_model(model_cls(cfg), tok, folder)


def make_byt5(folder: Path, seed: int = 0, shard_size: str = "20KB", pickled: bool = False) -> Path:
    """A byT5-shaped encoder-decoder (T5 config, byte vocabulary of 384, ``ByT5Tokenizer``),
    saved in safetensors shards of ``shard_size`` as google/byt5-small..-xl are; the source that
    ``python -m adapters.encoders.extract`` packs into one language-CLIP file.

    ``pickled`` writes PyTorch pickles instead, as google/byt5-xxl publishes its weights: one
    ``pytorch_model.bin`` (the whole state dict, tied embeddings sharing storage) when everything
    fits in one shard, else ``pytorch_model-*.bin`` shards and ``pytorch_model.bin.index.json``."""
    torch.manual_seed(seed)
    tok = transformers.ByT5Tokenizer()
    cfg = transformers.T5Config(vocab_size=384, d_model=TINY["hidden"], d_kv=8, d_ff=TINY["inter"], num_layers=2,
                                num_decoder_layers=1, num_heads=4, feed_forward_proj="gated-gelu",
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                decoder_start_token_id=tok.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    model = transformers.T5ForConditionalGeneration(cfg)
    model.save_pretrained(str(folder), max_shard_size=shard_size)
    tok.save_pretrained(str(folder))
    if pickled:
        _safetensors_to_pickles(folder, model)
    return folder


def _safetensors_to_pickles(folder: Path, model: torch.nn.Module) -> None:
    """Replace the safetensors weights in ``folder`` by pickles in the same shards."""
    import safetensors.torch

    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        return
    layout = json.loads(index.read_text())
    names = {f: f.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")
             for f in set(layout["weight_map"].values())}
    for shard, name in names.items():
        torch.save(safetensors.torch.load_file(str(folder / shard)), folder / name)
        (folder / shard).unlink()
    layout["weight_map"] = {k: names[f] for k, f in layout["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(layout, indent=2))
    index.unlink()


def make_open_clip(folder: Path, seed: int = 0, hf_name: str = "xlm-roberta-large") -> Path:
    """An open_clip xlm-roberta CLIP (both towers): open_clip_config.json with its preprocess_cfg,
    open_clip_pytorch_model.bin, and the text tower's config and tokenizer in a subfolder."""
    import open_clip

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tower = folder / hf_name.split("/")[-1]
    tok = xlmr_tokenizer()
    tower_cfg = transformers.XLMRobertaConfig(**bert_like(tok, max_position_embeddings=80, type_vocab_size=1))
    tower.mkdir(exist_ok=True)
    tower_cfg.save_pretrained(str(tower))
    tok.save_pretrained(str(tower))
    model_cfg = {"embed_dim": TINY["hidden"],
                 "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                 "text_cfg": {"hf_model_name": str(tower), "hf_tokenizer_name": str(tower),
                              "hf_pooler_type": "mean_pooler", "hf_model_pretrained": False}}
    model = open_clip.CustomTextCLIP(model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg["text_cfg"])
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    model_cfg["text_cfg"].update(hf_model_name=hf_name, hf_tokenizer_name=hf_name)
    del model_cfg["text_cfg"]["hf_model_pretrained"]
    preprocess_cfg = {"mean": CLIP_MEAN, "std": CLIP_STD}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                             indent=2))
    return folder


ENCODER_MAKERS = {"chinese_clip": make_chinese_clip, "clip": make_clip, "altclip": make_altclip,
                  "t5": make_t5, "open_clip": make_open_clip}


def _sentencepiece(lines: list[str], path: Path, vocab_size: int) -> list[str]:
    """Train a unigram sentencepiece model on ``lines`` into ``path``; its pieces."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        minloglevel=2, num_threads=1)
    path.write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def make_marian(folder: Path, seed: int = 0) -> Path:
    """A MarianMT translation model into English (Helsinki-NLP opus-mt layout: source.spm,
    target.spm, a shared vocab.json, config.json, weights), its sentencepiece models trained here
    on the corpus; random weights, so its "translations" are arbitrary English pieces."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    english = [line for line in CORPUS if line.isascii()]
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "source.spm", Path(tmp) / "target.spm"
        pieces = _sentencepiece(CORPUS, source, 300) + _sentencepiece(english, target, 120)
        vocab = {"</s>": 0, "<unk>": 1}
        for piece in pieces:
            vocab.setdefault(piece, len(vocab))
        vocab["<pad>"] = len(vocab)
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tok = transformers.MarianTokenizer(str(source), str(target), str(Path(tmp) / "vocab.json"))
        tok.save_pretrained(str(folder))
    cfg = transformers.MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=vocab["<pad>"], eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0)
    model = transformers.MarianMTModel(cfg)
    model.generation_config.max_length = 24
    model.save_pretrained(str(folder))
    return folder
