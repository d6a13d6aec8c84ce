"""Distil a PEA adapter from one of your checkpoints, headless.

    python training/train_adapter.py --demo
    python training/train_adapter.py --checkpoint sd_xl_base_1.0.safetensors \\
        --encoder ComfyUI/models/language_clip/chinese-clip-vit-huge-patch14 \\
        --manifest data/train.jsonl --output runs/zh_sdxl --steps 70000 --batch-size 4
    torchrun --nproc_per_node 8 training/train_adapter.py ...   (DDP; rank 0 writes files)

Objective (PEA as published; the authors' hybrid training), per sample:
    (1 - kd) * λ_SD * L_SD + kd * (λ_L * L_LKD + λ_F * L_FKD + λ_T * L_text)
kd = 1 for a parallel sample (manifest kind "parallel": a caption with its English twin): it
learns from the teacher only (logit and feature KD); kd = 0 for a native sample (kind "native",
no English twin): it learns from its image only (the denoising loss L_SD). --sd-on-parallel
gives parallel samples L_SD too: this project's reading of the ablation rows of the paper's
Table 2, which does not say which samples get L_SD there.
CFG dropout replaces a sample's caption by the empty prompt on both sides: the student's
language tokens, the teacher's English tokens and its pooled vector (SDXL), as inference CFG
does (the official SDXL script keeps the conditional pooled vector).
The teacher reads each English caption as literal text cut to 77 tokens, as the authors' does:
no ComfyUI prompt weights, no embedding: lookups, no further 77-token windows.
Images are resized to cover their aspect-ratio bucket and centre-cropped. SDXL's size ids give
the bucket size as original and target size and crop 0,0, on the teacher's and the student's
side alike: what PEA Encode Prompt gives at inference. (The authors' SDXL script gives each
image's real original size and a random crop with its offsets.)
A step whose loss or adapter gradients are not finite is skipped (optimiser and schedule
untouched) and counted; --max-bad-steps in a row stop the run.

ComfyUI is imported from the folder the pack sits in, or from COMFYUI_PATH.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the pack's folder, not training/, heads the import path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from adapters.families import FAMILIES  # noqa: E402
from comfy_runtime import import_comfy  # noqa: E402
from training.step.unet_pass import budget_option  # noqa: E402

DEMO_HONOURS = ("demo", "output", "steps", "seed", "overwrite", "cpu")
"""What ``--demo`` uses; it trains its own miniature world, so every other option is refused."""


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
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output folder that holds a previous run, deleting that run's files "
                        "(adapter, log, plot, summary, checkpoints, previews; nothing else)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5, official)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW weight decay (default 0: the official run's effective value)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then constant (default 100)")
    p.add_argument("--clip-grad", type=float, default=0.0,
                   help="clip the adapter's gradient norm to this (default 0: no clipping, as the official run)")
    p.add_argument("--noise-offset", type=float, default=0.0,
                   help="per-channel noise offset (the official SDXL script uses 0.5; default 0: off)")
    p.add_argument("--cfg-dropout", type=float, default=0.1,
                   help="probability that a sample's caption becomes the empty prompt, for the student and "
                        "the teacher (tokens and pooled vector)")
    p.add_argument("--lambda-sd", type=float, default=1.0,
                   help="weight of the denoising loss L_SD, on native samples (all samples with --sd-on-parallel)")
    p.add_argument("--lambda-logit", type=float, default=1.0, help="weight of logit KD, on parallel samples")
    p.add_argument("--lambda-feature", type=float, default=0.1,
                   help="weight of feature KD (every down, mid and up block), on parallel samples")
    p.add_argument("--lambda-text", type=float, default=0.0,
                   help="weight of text-space alignment to the teacher's tokens, on parallel samples "
                        "(a GlueGen-style baseline; PEA uses 0)")
    p.add_argument("--sd-on-parallel", action="store_true",
                   help="give parallel samples L_SD too (not PEA: this project's reading of the paper's Table 2 "
                        "ablation rows, which the paper leaves open)")
    p.add_argument("--max-bad-steps", type=int, default=20,
                   help="stop after this many steps in a row with a non-finite loss or gradients (0: never)")
    p.add_argument("--resolution", type=int, help="bucket area side (default: the family's, "
                   + ", ".join(f"{f.resolution} {f.label}" for f in FAMILIES.values() if f.trainable) + ")")
    p.add_argument("--hidden", type=int, nargs="+", help="adapter hidden widths (default: the family's, "
                   + ", ".join(f"{' '.join(map(str, f.hidden))} {f.label}" for f in FAMILIES.values() if f.trainable) + ")")
    p.add_argument("--cache-dir", type=Path, help="cache VAE latents and teacher encodings here (both frozen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="N",
                   help="keep the newest N checkpoints, delete older ones after each save (0 keeps all)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--preview-every", type=int, default=0)
    p.add_argument("--preview-prompt", action="append", default=[], help="repeatable")
    p.add_argument("--languages", nargs="*", default=[])
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where CUDA is available")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each UNet pass into one graph (GPU; the first steps compile for minutes)")
    p.add_argument("--memory-budget", type=budget_option, default=1.0,
                   help="share of the UNet's attention blocks whose student activations are kept, 0..1 "
                        "(lower: less memory; the cheap parts of the others are recomputed in backward)")
    return p


def refuse_for_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse error naming the options ``--demo`` was given but cannot honour."""
    given = [f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
             if dest not in DEMO_HONOURS and value != parser.get_default(dest)]
    if given:
        honoured = ", ".join(f"--{d}" for d in DEMO_HONOURS[1:])
        parser.error(f"--demo trains its own miniature world and cannot honour {', '.join(given)}; "
                     f"it takes only {honoured}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        refuse_for_demo(parser, args)
    if args.keep_checkpoints < 0:
        parser.error("--keep-checkpoints must be 0 (keep all) or more")
    from adapters import PEAError

    try:
        return train(parser, args)
    except PEAError as e:
        raise SystemExit(f"error: {e}") from None


def train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.demo:
        import_comfy(cpu=True)
        from training.miniworld.demo import DEMO_STEPS, run_demo

        run_demo(args.output, steps=args.steps or DEMO_STEPS, seed=args.seed, overwrite=args.overwrite)
        return 0
    missing = [f"--{n}" for n in ("checkpoint", "encoder") if getattr(args, n) is None]
    if args.manifest is None and not args.shards:
        missing.append("--manifest or --shards")
    if missing:
        parser.error(f"{', '.join(missing)} required (or --demo)")
    from braceexpand import braceexpand

    from adapters import load_language_encoder
    from training.base_checkpoint import load_base
    from training.data.sampling import read_manifest
    from training.distributed import DistInfo
    from training.config import TrainConfig
    from training.loop import Trainer
    from training.step.objective import LossWeights
    from training.runs.previous import check_run_folder, claim_run_folder

    cfg = TrainConfig(
        output=args.output, steps=args.steps or 1000, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, clip_grad=args.clip_grad,
        noise_offset=args.noise_offset, cfg_dropout=args.cfg_dropout,
        weights=LossWeights(args.lambda_sd, args.lambda_logit, args.lambda_feature, args.lambda_text,
                            sd_on_parallel=args.sd_on_parallel),
        max_bad_steps=args.max_bad_steps, resolution=args.resolution,
        hidden=tuple(args.hidden) if args.hidden else None,
        init_adapter=args.init_adapter, resume=args.resume, cache_dir=args.cache_dir, seed=args.seed,
        save_every=args.save_every, log_every=args.log_every, preview_every=args.preview_every,
        preview_prompts=args.preview_prompt, languages=args.languages, overwrite=args.overwrite,
        keep_checkpoints=args.keep_checkpoints, memory_budget=args.memory_budget, compile=args.compile)
    claim_run_folder(cfg.output)  # before minutes of loading: one run at a time in a folder
    check_run_folder(cfg.output, cfg.adapter_name, cfg.resume, cfg.overwrite)
    records = read_manifest(args.manifest, args.image_root) if args.manifest else None
    shards = [url for pattern in args.shards or [] for url in braceexpand(pattern)]
    import_comfy(cpu=args.cpu or None)
    trainer = Trainer(cfg, load_base(args.checkpoint), load_language_encoder(args.encoder, context_length=args.context_length),
                      records, DistInfo.from_env(), shards=shards or None)
    final = trainer.run()
    print(f"adapter: {final} ({trainer.skipped.count} images and {trainer.guard.skipped} steps skipped, "
          f"{trainer.captions.over} captions cut to the encoder's {trainer.captions.window} tokens; see summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
