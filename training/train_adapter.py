"""Distil a PEA adapter from one of your checkpoints, headless.

    python training/train_adapter.py --demo
    python training/train_adapter.py --checkpoint sd_xl_base_1.0.safetensors \\
        --encoder ComfyUI/models/language_clip/chinese-clip-vit-huge-patch14 \\
        --manifest data/train.jsonl --output runs/zh_sdxl --steps 70000 --batch-size 4
    torchrun --nproc_per_node 8 training/train_adapter.py ...   (DDP; rank 0 writes files)

ComfyUI is imported from the folder the pack sits in, or from COMFYUI_PATH.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the pack's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.comfy_runtime import import_comfy  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="tiny models and the shipped corpus, on CPU, in minutes")
    p.add_argument("--checkpoint", help="a checkpoint path, or a name under models/checkpoints")
    p.add_argument("--encoder", type=Path, help="language encoder folder or packed file")
    p.add_argument("--context-length", type=int, help="encoder padding length (default: the backend's)")
    p.add_argument("--manifest", type=Path, help="JSONL: image, text, en, kind (parallel|native)")
    p.add_argument("--image-root", type=Path, help="folder image paths are relative to (default: the manifest's)")
    p.add_argument("--shards", nargs="+", help="webdataset tar shards instead of a manifest, e.g. 'data/{000..099}.tar'")
    p.add_argument("--output", type=Path, default=Path("pea_runs/demo"), help="run folder")
    p.add_argument("--init-adapter", type=Path, help="continue training from an adapter file")
    p.add_argument("--resume", type=Path, help="a checkpoint file or run folder to continue exactly")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--lambda-sd", type=float, default=1.0)
    p.add_argument("--lambda-logit", type=float, default=1.0)
    p.add_argument("--lambda-feature", type=float, default=0.1)
    p.add_argument("--lambda-text", type=float, default=0.0,
                   help="text-space alignment to the teacher's tokens (a GlueGen-style baseline; PEA uses 0)")
    p.add_argument("--resolution", type=int, help="bucket area side (default: 512 SD1.5, 1024 SDXL)")
    p.add_argument("--hidden", type=int, nargs="+", help="adapter hidden widths (default 1024 1024 SDXL, 2048 2048 SD1.5)")
    p.add_argument("--cache-dir", type=Path, help="cache VAE latents and teacher encodings here (both frozen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--preview-every", type=int, default=0)
    p.add_argument("--preview-prompt", action="append", default=[], help="repeatable")
    p.add_argument("--languages", nargs="*", default=[])
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where CUDA is available")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each UNet pass into one graph (GPU; the first steps compile for minutes)")
    p.add_argument("--memory-budget", type=float, default=1.0,
                   help="share of the UNet's attention blocks whose student activations are kept, 0..1 "
                        "(lower: less memory; the cheap parts of the others are recomputed in backward)")
    return p


def unet_weight_dtype() -> torch.dtype:
    """bf16 UNet weights where the device computes in bf16, fp32 elsewhere: the training step runs
    the UNet in its weight dtype without autocast (fp16 would need loss scaling)."""
    import comfy.model_management as mm

    return torch.bfloat16 if mm.should_use_bf16(mm.get_torch_device()) else torch.float32


def load_parts(name: str):
    """MODEL/CLIP/VAE through ComfyUI's own checkpoint loader, the UNet in its training dtype."""
    import comfy.sd
    import folder_paths

    from training.tiny_base import BaseParts

    path = Path(name) if Path(name).is_file() else folder_paths.get_full_path("checkpoints", name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths("checkpoints"))
        raise SystemExit(f"error: checkpoint '{name}' not found (a path, or a name under: {searched})")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"), model_options={"dtype": unet_weight_dtype()})
    if clip is None:
        raise SystemExit(f"error: {path} has no text encoder; the teacher needs the checkpoint's own CLIP")
    return BaseParts(model, clip, vae, Path(path).name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.memory_budget <= 1.0:
        build_parser().error(f"--memory-budget must lie in [0, 1], got {args.memory_budget}")
    import_comfy(cpu=args.cpu or args.demo or None)
    if args.demo:
        from training.demo import DEMO_STEPS, run_demo

        run_demo(args.output, steps=args.steps or DEMO_STEPS, seed=args.seed)
        return 0
    missing = [f"--{n}" for n in ("checkpoint", "encoder") if getattr(args, n) is None]
    if args.manifest is None and not args.shards:
        missing.append("--manifest or --shards")
    if missing:
        build_parser().error(f"{', '.join(missing)} required (or --demo)")
    from braceexpand import braceexpand

    from adapters import load_language_encoder
    from training.data import read_manifest
    from training.objective import LossWeights
    from training.trainer import DistInfo, TrainConfig, Trainer

    cfg = TrainConfig(
        output=args.output, steps=args.steps or 1000, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, clip_grad=args.clip_grad,
        cfg_dropout=args.cfg_dropout,
        weights=LossWeights(args.lambda_sd, args.lambda_logit, args.lambda_feature, args.lambda_text),
        resolution=args.resolution, hidden=tuple(args.hidden) if args.hidden else None,
        init_adapter=args.init_adapter, resume=args.resume, cache_dir=args.cache_dir, seed=args.seed,
        save_every=args.save_every, log_every=args.log_every, preview_every=args.preview_every,
        preview_prompts=args.preview_prompt, languages=args.languages, memory_budget=args.memory_budget,
        compile=args.compile)
    records = read_manifest(args.manifest, args.image_root) if args.manifest else None
    shards = [url for pattern in args.shards or [] for url in braceexpand(pattern)]
    trainer = Trainer(cfg, load_parts(args.checkpoint), load_language_encoder(args.encoder, context_length=args.context_length),
                      records, DistInfo.from_env(), shards=shards or None)
    final = trainer.run()
    print(f"adapter: {final} ({trainer.skipped.count} images skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
