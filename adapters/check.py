"""Check a language encoder and a PEA adapter outside ComfyUI, and show what they produce.

    python -m adapters.check --encoder models/language_clip/chinese-clip-vit-huge-patch14 \\
        --adapter models/pea_adapters/pea_sdxl_zh.safetensors "一只红色的猫" "红烧狮子头"

``--demo`` builds a tiny Chinese-CLIP-shaped encoder and SDXL adapter first (no download),
so the whole path can be tried on any machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from .encoders import load_language_encoder
from .errors import PEAError
from .file_format import load_adapter
from .finite import check_conditioning
from .metadata import EncoderSpec
from .pairing import check_pairing, describe_shape

DEMO_PROMPTS = ["一只红色的猫坐在桌子上", "红烧狮子头", ""]


def build_demo(folder: Path) -> tuple[Path, Path]:
    """A tiny Chinese-CLIP and a matching SDXL adapter, written in the real layouts."""
    from .demo_files import TINY, make_adapter, make_chinese_clip

    encoder = make_chinese_clip(folder / "language_clip" / "chinese-clip-tiny")
    spec = EncoderSpec("chinese_clip", "chinese-clip-tiny", context_length=52, attention_mask=True)
    adapter = make_adapter(folder / "pea_adapters" / "pea_sdxl_zh_tiny.safetensors", "sdxl",
                                in_dim=TINY["hidden"], encoder=spec)
    return encoder, adapter


def report(encoder_dir: Path, adapter_path: Path, prompts: list[str]) -> None:
    encoder = load_language_encoder(encoder_dir)
    adapter = load_adapter(adapter_path)
    print(f"encoder: {encoder.describe()} from {encoder_dir}")
    print(f"adapter: {describe_shape(adapter.shape)}, input {adapter.shape.in_dim}-d, "
          f"{sum(p.numel() for p in adapter.parameters()):,} parameters ({adapter.info.source} file)")
    check_pairing(encoder, adapter.info, adapter_path.name)
    print("pairing: ok")
    with torch.no_grad():
        ids = encoder.tokenize(prompts)
        hidden = encoder(ids)
        tokens, pooled = adapter(hidden)
    check_conditioning(encoder, adapter_path.name, ids, hidden, tokens, pooled)
    for i, prompt in enumerate(prompts):
        line = f"  {prompt or '(empty prompt: the unconditional embedding)'!s}: tokens {tuple(tokens[i].shape)}"
        line += f", mean |x| {tokens[i].abs().mean():.4f}"
        if pooled is not None:
            line += f", pooled {tuple(pooled[i].shape)}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adapters.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="*", help="prompts to encode (default: a few Chinese ones)")
    p.add_argument("--encoder", type=Path, help="language encoder folder")
    p.add_argument("--adapter", type=Path, help="adapter file (.safetensors or official .bin)")
    p.add_argument("--demo", action="store_true", help="build and use tiny stand-in files")
    args = p.parse_args(argv)
    if args.demo == bool(args.encoder and args.adapter):
        p.error("give --encoder and --adapter, or --demo")
    try:
        if args.demo:
            with tempfile.TemporaryDirectory() as tmp:
                report(*build_demo(Path(tmp)), args.prompts or DEMO_PROMPTS)
        else:
            report(args.encoder, args.adapter, args.prompts or DEMO_PROMPTS)
    except PEAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
