"""The miniature world's English teacher: a tiny UNet trained from scratch on English captions.

A real user's checkpoint already reads English; the tiny UNet built in code does not, and a
random teacher gives the student nothing language-specific to learn. This trains the UNet of
``parts`` on the world's English captions with the ordinary diffusion loss, through ComfyUI's
model code, with the conditioning of the model's family (SDXL: pooled vector and size ids too).
One teacher per family ships in ``data/``; rebuild one with

    python -m training.miniworld.teacher --write-teacher [--family sdxl]
"""
from __future__ import annotations

from pathlib import Path

import safetensors
import safetensors.torch
import torch
from tqdm import tqdm

from adapters import PEAError
from adapters.families import family_of
from adapters.file_format import atomic_write

from training.data.caches import TeacherText
from training.data.sampling import Record, load_image, read_manifest
from training.step.distill import sample_generator, sdxl_label
from training.step.objective import per_sample_mse, prediction_target
from training.miniworld.tiny_base import (TINY_PARTS, VAE_CALIBRATION, calibrate_vae, read_vae_calibration,
                                          set_vae_calibration, vae_calibration)
from training.miniworld.world import read_pairs, write_dataset

TEACHER_STEPS, TEACHER_LR = 1200, 2e-3
LABEL_LR_SCALE = 0.01
"""The SDXL teacher's label embedding (pooled vector and size ids) trains at this fraction of
``TEACHER_LR``. Its 1536 size-id inputs never change in this world (every image is 64x64), and
Adam moves a weight by about the learning rate whatever its input, so at the full rate the layer's
output moved like a bias at about 870 times the rate (the sum of those inputs' magnitudes): in the
first SDXL teacher it grew from 0.1 to 8.5 (mean absolute value), 61% of the summed embedding sat
below -4 where SiLU is flat, and the UNet read neither its timestep nor its pooled vector
(docs/world_proof.md)."""
SHIPPED_TEACHERS = {"sd15": Path(__file__).with_name("data") / "teacher_unet.safetensors",
                    "sdxl": Path(__file__).with_name("data") / "teacher_unet_sdxl.safetensors"}
"""The shipped teacher UNet of each family's tiny base (``tiny_base.TINY_PARTS``), trained at seed 0."""


def train_teacher(parts, records: list[Record], steps: int, size: int, batch_size: int = 32, lr: float = 1e-3,
                  caption_dropout: float = 0.1, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``parts.model``'s UNet on (image, English caption) pairs; returns the loss per step."""
    base = parts.model.model
    unet = base.diffusion_model
    text = TeacherText(parts.clip)
    with torch.no_grad():
        latents = base.process_latent_in(parts.vae.encode(torch.stack([load_image(r.image, (size, size))
                                                                       for r in records])).float())
        tokens, pooled = text.encode_batch([r.en or "" for r in records])
        empty = text.encode("")
    unet.requires_grad_(True).train()
    label = [p for name, p in unet.named_parameters() if name.startswith("label_emb.")]
    groups = [{"params": [p for name, p in unet.named_parameters() if not name.startswith("label_emb.")]}]
    if label:
        groups.append({"params": label, "lr": lr * LABEL_LR_SCALE})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    ms, outputs, losses, sizes = base.model_sampling, {}, [], {}
    hook = unet.register_forward_hook(lambda _m, _i, out: outputs.__setitem__("out", out))
    order = torch.Generator().manual_seed(seed)
    try:
        for step in tqdm(range(steps), disable=not progress, desc="teacher", dynamic_ncols=True):
            idx = torch.randint(0, len(records), (batch_size,), generator=order)
            draws = [sample_generator(seed, step, i) for i in range(batch_size)]
            t = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in draws])
            noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in draws])
            drop = torch.cat([torch.rand(1, generator=g) < caption_dropout for g in draws])
            context = torch.where(drop[:, None, None], empty["tokens"], tokens[idx])
            y = None if pooled is None else sdxl_label(
                base, torch.where(drop[:, None], empty["pooled"], pooled[idx]), (size, size), sizes)
            sigma = ms.sigma(t.float())
            noisy = ms.noise_scaling(sigma, noise, latents[idx])
            base.apply_model(noisy, sigma, c_crossattn=context, y=y)
            loss = per_sample_mse(outputs["out"], prediction_target(ms, sigma, noisy, latents[idx])).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        hook.remove()
        unet.requires_grad_(False).eval()
    return losses


def save_unet(parts, path: Path, dtype: torch.dtype = torch.float32) -> None:
    """The UNet's weights, and (as metadata) the TAESD calibration its training latents were made with."""
    state = {k: v.to(dtype).contiguous() for k, v in parts.model.model.diffusion_model.state_dict().items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(state, tmp, metadata=vae_calibration(parts)))


def load_unet(parts, path: Path) -> bool:
    """The UNet's weights and the TAESD calibration saved with them; False, loading nothing, for a
    file without that calibration (written before teachers kept it)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        calibration = f.metadata() or {}
        if not all(name in calibration for name in VAE_CALIBRATION):
            return False
        try:
            numbers = read_vae_calibration(calibration)
        except ValueError as e:
            raise PEAError(f"{path}: the teacher's VAE calibration (file metadata) is damaged: {e}. Delete the "
                           f"file to train the teacher again.") from None
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    parts.model.model.diffusion_model.load_state_dict(state)
    set_vae_calibration(parts, numbers)
    return True


def teacher_records(folder: Path) -> list:
    """The English teacher's training set: every training pair under its English captions."""
    return read_manifest(write_dataset(folder, [p for p in read_pairs() if not p["held_out"]], ("en",), name="teacher"))


def prepare_teacher(parts, folder: Path, cache: Path, seed: int = 0, progress: bool = True) -> None:
    """Give the tiny UNet its English teacher weights and the TAESD the calibration they were
    trained with: the shipped file of its family, else a cached one, else a freshly trained one
    (seeds other than 0 always train their own)."""
    for path in (SHIPPED_TEACHERS[family_of(parts.model).head], cache):
        if seed == 0 and path.is_file() and load_unet(parts, path):
            return
    records = teacher_records(folder)
    calibrate_vae(parts, torch.stack([load_image(r.image, (64, 64)) for r in records]))
    train_teacher(parts, records, TEACHER_STEPS, 64, lr=TEACHER_LR, seed=seed, progress=progress)
    save_unet(parts, cache)


if __name__ == "__main__":
    import argparse
    import tempfile

    from comfy_runtime import import_comfy

    parser = argparse.ArgumentParser(description="Rebuild a shipped miniature-world teacher (minutes on a CPU).")
    parser.add_argument("--write-teacher", action="store_true", required=True)
    parser.add_argument("--family", choices=sorted(TINY_PARTS), default="sd15")
    args = parser.parse_args()
    import_comfy(cpu=True)
    with tempfile.TemporaryDirectory() as tmp:
        world_parts = TINY_PARTS[args.family](seed=0)
        train_records = teacher_records(Path(tmp))
        calibrate_vae(world_parts, torch.stack([load_image(r.image, (64, 64)) for r in train_records]))
        train_teacher(world_parts, train_records, TEACHER_STEPS, 64, lr=TEACHER_LR)
        save_unet(world_parts, SHIPPED_TEACHERS[args.family], dtype=torch.float16)
    print(f"wrote {SHIPPED_TEACHERS[args.family]}")
