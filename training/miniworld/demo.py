"""``train_adapter.py --demo``: distil an adapter in a miniature world, on a CPU, in minutes.

Tiny models are built in code from ComfyUI's own classes (an SD1.5-family UNet, ComfyUI's SD1
CLIP at 64-d with its real tokenizer, a TAESD VAE) and a tiny Chinese-CLIP-shaped student
encoder. The shipped corpus (training/miniworld/data/pairs.jsonl) is drawn into images. Two runs
are made: one on the true pairs and a control on shuffled (mismatched) pairs; their KD loss on
held-out pairs — attribute combinations never seen in training — shows whether the adapter
learned the language mapping (matched well below the control) or only an average.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from adapters import load_language_encoder
from adapters.file_format import atomic_write
from adapters.demo_files import make_chinese_clip

from training.data.sampling import Record, read_manifest
from training.config import TrainConfig
from training.loop import Trainer
from training.step.objective import LossWeights
from training.runs.previous import RunFolderError, previous_run_files
from training.miniworld.teacher import prepare_teacher
from training.miniworld.tiny_base import tiny_sd15_parts
from training.miniworld.world import read_pairs, write_dataset

DEMO_STEPS = 250
DEMO_ADAPTER = "pea_demo_zh.safetensors"


def demo_config(output: Path, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(output=output, steps=steps, batch_size=32, lr=3e-3, weight_decay=0.01, warmup=20,
                       resolution=64, hidden=(128,), save_every=steps, log_every=10, seed=seed,
                       weights=LossWeights(), cache_dir=output.parent / "cache", languages=["zh"],
                       preview_steps=8, adapter_name=DEMO_ADAPTER, memory_cache=True)


@torch.no_grad()
def held_out_losses(trainer: Trainer, records: list[Record], draws_key: int = 10**9) -> dict:
    """Mean loss parts of ``trainer``'s adapter over ``records`` with fixed draws and no CFG
    dropout; ``kd`` is the weighted KD loss the demo compares between its two runs."""
    distiller = trainer.distiller
    dropout, distiller.cfg_dropout = distiller.cfg_dropout, 0.0
    sums = torch.zeros(4, dtype=torch.float64)
    bucket = (trainer.resolution, trainer.resolution)
    size = trainer.cfg.batch_size
    for lo in range(0, len(records), size):
        ids = list(range(lo, min(lo + size, len(records))))
        batch = trainer.make_batch(bucket, [records[i] for i in ids], ids)
        if batch is None:
            continue
        _, parts = distiller(batch, draws_key)
        sums += torch.tensor([parts["lkd"].sum().item(), parts["fkd"].sum().item(),
                              parts["sd"].sum().item(), len(parts["sd"])], dtype=torch.float64)
    distiller.cfg_dropout = dropout
    n = max(sums[3].item(), 1)
    w = trainer.cfg.weights
    return {"lkd": sums[0].item() / n, "fkd": sums[1].item() / n, "sd": sums[2].item() / n,
            "kd": (w.logit * sums[0].item() + w.feature * sums[1].item()) / n}


def run_demo(output: Path, steps: int = DEMO_STEPS, seed: int = 0, progress: bool = True, overwrite: bool = False) -> dict:
    """Train the matched and the shuffled-pairs adapters; return and print their held-out KD losses.
    A previous demo in ``output`` is refused (RunFolderError) unless ``overwrite``."""
    if not overwrite and any(previous_run_files(output / run, DEMO_ADAPTER) for run in ("matched", "shuffled")):
        raise RunFolderError(f"{output} holds a previous demo: pass --overwrite to replace it, or choose another --output")
    pairs = [p for p in read_pairs() if not p["native"]]
    train = [p for p in pairs if not p["held_out"]]
    held_out = [p for p in pairs if p["held_out"]]
    data = output / "data"
    manifests = {"matched": write_dataset(data, train),
                 "shuffled": write_dataset(data, train, shuffle_text_seed=seed + 1, name="manifest_shuffled")}
    held_manifest = write_dataset(data / "held_out", held_out)
    encoder = load_language_encoder(make_chinese_clip(output / "language_clip" / "chinese-clip-tiny",
                                                      extra_text=[p["zh"] for p in pairs]))
    parts = tiny_sd15_parts("demo", seed)
    prepare_teacher(parts, data, output / "teacher_unet.safetensors", seed, progress)
    results = {}
    for run, manifest in manifests.items():
        cfg = replace(demo_config(output / run, steps, seed), progress=progress, overwrite=overwrite,
                      preview_prompts=[p["zh"] for p in held_out[::9]] if run == "matched" else [])
        trainer = Trainer(cfg, parts, encoder, read_manifest(manifest))
        adapter_path = trainer.run()
        results[run] = {"adapter": str(adapter_path), **held_out_losses(trainer, read_manifest(held_manifest))}
    ratio = results["matched"]["kd"] / results["shuffled"]["kd"]
    results["ratio"] = ratio
    text = json.dumps(results, indent=2)
    atomic_write(output / "demo_result.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"\nheld-out KD loss ({len(held_out)} pairs never seen in training):")
    print(f"  trained on true pairs:     {results['matched']['kd']:.5f}")
    print(f"  trained on shuffled pairs: {results['shuffled']['kd']:.5f}")
    print(f"  ratio: {ratio:.3f} (below 0.8: the adapter learned the language mapping)")
    print(f"adapter: {results['matched']['adapter']}\nloss plot: {output / 'matched' / 'loss.png'}\n"
          f"preview: {output / 'matched' / 'previews' / 'final.png'}")
    return results
