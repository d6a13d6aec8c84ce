"""The free-token oracle: how far logit + feature KD alone steer a miniature-world teacher.

    python -m training.miniworld.oracle --family sdxl     # 16 training captions, 400 steps

One free token tensor per caption (no language encoder, no adapter), initialised at the empty
prompt's tokens and trained with the students' KD terms (λ_L 1, λ_F 0.1, the taps of
``training.step.taps``) against the teacher's conditioning of the English caption, on the
caption's own drawn image; then sampled and judged as the proof's rows are (CFG 5 against the
teacher's empty prompt, 4 images per caption). The pooled vector stays the teacher's: only the
tokens are free. Where the oracle reaches the teacher and the students do not, the KD objective
and the teacher are not what stops them: what their path (a frozen encoder, a position-wise
adapter) can produce, or how it is trained, is (docs/world_proof.md).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from adapters import PEAError
from training.miniworld.judge import accuracy, drawn_images
from training.miniworld.proof import WORLDS, Conditioner, World, build_world, sample
from training.step.distill import sample_draws, sdxl_label
from training.step.objective import LossWeights, distillation_loss, prediction_target
from training.step.taps import tap_names
from training.step.unet_pass import UNetPasses

IMAGES_PER_CAPTION = 4
KD_ONLY = LossWeights(sd=0.0)
"""The students' KD weights (λ_L 1, λ_F 0.1) and no ``L_SD``: every caption is a parallel one."""


def distil_free_tokens(world: World, teacher: Conditioner, pairs: list[dict], steps: int, lr: float,
                       seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """Free tokens ``[N, L, C]`` for the English captions of ``pairs``, trained with Adam against
    ``teacher``'s conditioning; and the KD losses every 100 steps and at the last."""
    import comfy.model_management as mm

    mm.load_models_gpu([world.parts.model], force_full_load=True)
    device = world.parts.model.load_device
    base = world.parts.model.model
    ms = base.model_sampling
    tokens, pooled = (None if t is None else t.to(device) for t in teacher([p["en"] for p in pairs]))
    empty = teacher([""])[0].to(device)
    with torch.no_grad():
        latents = base.process_latent_in(world.parts.vae.encode(drawn_images(pairs)).float().to(device))
    free = empty.repeat(len(pairs), 1, 1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([free], lr=lr)
    taps = tap_names(base.diffusion_model)
    passes = UNetPasses(base.diffusion_model, taps)
    y = sdxl_label(base, pooled, (64, 64), {})
    kd_mask, log = torch.ones(len(pairs), device=device), []
    for step in range(steps):
        t, noise, _ = zip(*(sample_draws(seed, step, i, latents.shape[1:], 0.0) for i in range(len(pairs))))
        sigma = ms.sigma(torch.cat(t).float().to(device))
        noisy = ms.noise_scaling(sigma, torch.stack(noise).to(device), latents)
        student, teacher_features = passes.both(base, noisy, sigma, teacher=(tokens, y), student=(free, y))
        loss, parts = distillation_loss(student, teacher_features, prediction_target(ms, sigma, noisy, latents),
                                        kd_mask, taps, KD_ONLY)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step + 1, "lkd": parts["lkd"].mean().item(), "fkd": parts["fkd"].mean().item()})
    return free.detach(), log


def run_oracle(output: Path, family: str = "sdxl", captions: int = 16, steps: int = 400, lr: float = 1e-2,
               seed: int = 0) -> dict:
    """The oracle on ``captions`` training captions drawn with ``seed``: the KD log and the judge's
    accuracy for the teacher's own tokens and for the free tokens."""
    world = build_world(output, family, progress=False)
    pairs = [p for p in world.pairs if not p["held_out"] and not p["native"]]
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:captions]
    teacher = Conditioner(world)  # its text encodings are kept: the training and the rows share them
    free, log = distil_free_tokens(world, teacher, pairs, steps, lr, seed)
    tokens, pooled = teacher([p["en"] for p in pairs])
    truth = [p for p in pairs for _ in range(IMAGES_PER_CAPTION)]

    def each_image(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.cpu().repeat_interleave(IMAGES_PER_CAPTION, 0)

    rows = {}
    for row, cond in (("teacher, English prompts", tokens), ("free tokens (KD only)", free)):
        images = sample(world.parts, (each_image(cond), each_image(pooled)), teacher([""]), seed)
        rows[row] = accuracy(world.judge.read(images), truth)
    return {"family": family, "captions": captions, "steps": steps, "lr": lr, "kd": log, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("pea_runs/oracle"))
    p.add_argument("--family", choices=sorted(WORLDS), default="sdxl")
    p.add_argument("--captions", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    args = p.parse_args(argv)
    try:
        from comfy_runtime import import_comfy

        import_comfy(cpu=args.cpu or None)
        result = run_oracle(args.output, args.family, args.captions, args.steps, args.lr)
    except PEAError as e:
        raise SystemExit(f"error: {e}") from None
    for entry in result["kd"]:
        print(f"step {entry['step']:5d}  logit KD {entry['lkd']:.4f}  feature KD {entry['fkd']:.3f}")
    for row, acc in result["rows"].items():
        print(f"{row:26s} " + "  ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
