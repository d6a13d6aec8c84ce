"""Convert an official PEA adapter (``pytorch_model.bin``) to the pack's safetensors format.

    python -m adapters.convert pytorch_model.bin models/pea_adapters/pea_sdxl_zh.safetensors \\
        --encoder-kind chinese_clip --encoder-name OFA-Sys/chinese-clip-vit-huge-patch14 \\
        --context-length 52 --languages zh

``--to-official`` writes the other way, a plain state dict for the authors' scripts.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .errors import PEAError
from .file_format import read_adapter, save_adapter, save_official

DTYPES = {"keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="official .bin/.pt state dict, or one of our .safetensors files")
    p.add_argument("dest", help="output file")
    p.add_argument("--to-official", action="store_true", help="write a plain PyTorch state dict instead")
    p.add_argument("--encoder-kind", help="chinese_clip, clip, altclip, t5, open_clip, ...")
    p.add_argument("--encoder-name", help="the encoder's model id, for people reading the file")
    p.add_argument("--context-length", type=int, help="padded token length used in training")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--attention-mask", dest="attention_mask", action="store_true", default=None,
                      help="padding was masked inside the encoder (the default of every backend but byT5)")
    mask.add_argument("--no-attention-mask", dest="attention_mask", action="store_false")
    p.add_argument("--languages", nargs="*", help="language codes, e.g. zh en ru")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="keep", help="tensor dtype to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        state, info = read_adapter(args.source)
    except PEAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if DTYPES[args.dtype] is not None:
        state = {k: v.to(DTYPES[args.dtype]) for k, v in state.items()}
    if args.to_official:
        save_official(state, args.dest)
    else:
        for field in ("kind", "name", "context_length", "attention_mask"):
            value = getattr(args, f"encoder_{field}" if field in ("kind", "name") else field)
            if value is not None:
                setattr(info.encoder, field, value)
        if args.languages is not None:
            info.languages = args.languages
        info.training.setdefault("converted_from", str(args.source))
        save_adapter(state, info, args.dest)
    shape = info.shape
    print(f"wrote {args.dest}: {shape.head} head, {shape.in_dim} -> {list(shape.hidden_dims)} -> "
          f"{shape.out_dim}, tokens {shape.token_dim}, pooled {shape.pooled_dim}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
