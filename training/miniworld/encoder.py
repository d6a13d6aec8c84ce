"""The students' language encoder: a tiny Chinese-CLIP (a BERT text tower with its own tokenizer,
reading Chinese and Russian), as initialised or pretrained the way a real Chinese-CLIP is.

PEA puts its adapter on a *pretrained* language encoder: Chinese-CLIP learned what its words mean
from Chinese image-text pairs before any adapter sees it. The tiny encoder built in code knows
nothing. Pretrained here, its text tower and projection learn CLIP-style (a symmetric contrastive
loss) against a small image encoder on the world's drawn images and their Chinese and Russian
captions: training combinations only (no held-out combination, no withheld colour, no teacher).
The pretrained weights ship as ``data/student_encoder_clip.safetensors``; rebuild them with

    python -m training.miniworld.encoder --write-encoder
"""
from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
import transformers
from torch import nn
from tqdm import tqdm

from adapters import PEAError
from adapters.demo_files import make_chinese_clip
from adapters.file_format import atomic_write

from training.miniworld.judge import drawn_images
from training.miniworld.world import read_pairs

LANGUAGES = ("zh", "ru")
ENCODER_WIDTH = 64
MAX_POSITIONS = 80
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 1500, 128, 1e-3
WITHHELD = "orange"
"""The colour the shipped encoder never saw, which the SDXL world withholds from its students too
(``proof.WORLDS``)."""
SHIPPED_ENCODER = Path(__file__).with_name("data") / "student_encoder_clip.safetensors"
TRAINED_PREFIXES = ("text_model.", "text_projection.")


def make_student_encoder(folder: Path, pretrained: bool) -> Path:
    """The students' encoder folder (Hugging Face layout): the tiny Chinese-CLIP built at seed 0,
    its vocabulary covering every caption of the world, with the shipped pretrained text tower when
    ``pretrained``."""
    pairs = read_pairs()
    texts = [p[lang] for p in pairs for lang in LANGUAGES if p[lang]]
    folder = make_chinese_clip(folder, extra_text=texts, max_positions=MAX_POSITIONS, hidden=ENCODER_WIDTH)
    if pretrained:
        model = transformers.ChineseCLIPModel.from_pretrained(str(folder))
        load_text_tower(model, SHIPPED_ENCODER)
        model.save_pretrained(str(folder))
    return folder


def load_text_tower(model: nn.Module, path: Path) -> None:
    """Put the pretrained text tower and projection of ``path`` into ``model``."""
    state = safetensors.torch.load_file(str(path))
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k.startswith(TRAINED_PREFIXES) and k not in state]
    if wrong or missing:
        raise PEAError(f"{path}: does not fit the world's student encoder ({len(wrong)} unexpected or misshapen "
                       f"tensors, {len(missing)} missing, e.g. {(wrong + missing)[:2]}); rebuild it with "
                       f"python -m training.miniworld.encoder --write-encoder")
    model.load_state_dict(state, strict=False)


def pretraining_pairs(withheld: str = WITHHELD) -> list[dict]:
    """The pairs the encoder learns from: the training combinations but those of ``withheld``."""
    return [p for p in read_pairs() if not p["held_out"] and p["color"] != withheld]


def image_encoder(out_dim: int) -> nn.Module:
    """A small CNN for 64x64 images, the other tower of the contrastive pretraining."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                         nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.GELU(),
                         nn.Linear(128, out_dim))


def image_batch(pairs: list[dict]) -> torch.Tensor:
    """The drawn images of ``pairs`` as the image encoder reads them: [N, 3, 64, 64], centred on 0."""
    return drawn_images(pairs).permute(0, 3, 1, 2) - 0.5


def text_features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Unit-length CLIP text features: the projected state at [CLS], as Chinese-CLIP computes them."""
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    return nn.functional.normalize(model.text_projection(model.text_model(**ids).last_hidden_state[:, 0]), dim=-1)


def pretrain(model, tokenizer, pairs: list[dict], steps: int = PRETRAIN_STEPS, seed: int = 0,
             progress: bool = True) -> tuple[list[float], nn.Module]:
    """Train ``model``'s text tower CLIP-style on ``pairs`` (each step: ``PRETRAIN_BATCH`` distinct
    combinations, each under one of its captions); returns the loss per step and the image encoder."""
    torch.manual_seed(seed)
    images = image_batch(pairs)
    captions = [[p[lang] for lang in LANGUAGES if p[lang]] for p in pairs]
    vision = image_encoder(model.config.projection_dim)
    scale = nn.Parameter(torch.tensor(2.659))  # CLIP's initial temperature, log(1 / 0.07)
    params = [*model.text_model.parameters(), *model.text_projection.parameters(), *vision.parameters(), scale]
    optimizer = torch.optim.AdamW(params, lr=PRETRAIN_LR, weight_decay=0.01)
    labels, losses = torch.arange(min(PRETRAIN_BATCH, len(pairs))), []
    for _ in tqdm(range(steps), disable=not progress, desc="encoder", dynamic_ncols=True):
        idx = torch.randperm(len(pairs))[:len(labels)]
        texts = [captions[i][torch.randint(len(captions[i]), (1,)).item()] for i in idx]
        seen = nn.functional.normalize(vision(images[idx] + 0.05 * torch.randn_like(images[idx])), dim=-1)
        logits = scale.exp().clamp(max=100) * text_features(model, tokenizer, texts) @ seen.T
        loss = (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, vision.eval()


@torch.no_grad()
def retrieval(model, tokenizer, vision: nn.Module, pairs: list[dict], lang: str) -> float:
    """Share of ``pairs`` whose ``lang`` caption finds its own image among theirs."""
    seen = nn.functional.normalize(vision(image_batch(pairs)), dim=-1)
    found = (text_features(model, tokenizer, [p[lang] for p in pairs]) @ seen.T).argmax(1)
    return (found == torch.arange(len(pairs))).float().mean().item()


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Rebuild the shipped pretrained student encoder (minutes on a CPU).")
    parser.add_argument("--write-encoder", action="store_true", required=True)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = make_student_encoder(Path(tmp) / "encoder", pretrained=False)
        clip = transformers.ChineseCLIPModel.from_pretrained(str(built))
        tok = transformers.BertTokenizerFast.from_pretrained(str(built))
    curve, images_tower = pretrain(clip, tok, pretraining_pairs())
    unseen = [p for p in read_pairs() if p["held_out"] and not p["native"] and p["color"] != WITHHELD]
    print(f"loss {curve[0]:.3f} -> {curve[-1]:.4f}; held-out combinations found by their caption: "
          + ", ".join(f"{lang} {retrieval(clip, tok, images_tower, unseen, lang):.2f}" for lang in LANGUAGES))
    weights = {k: v.contiguous() for k, v in clip.state_dict().items() if k.startswith(TRAINED_PREFIXES)}
    atomic_write(SHIPPED_ENCODER, lambda tmp: safetensors.torch.save_file(weights, tmp))
    print(f"wrote {SHIPPED_ENCODER}")
