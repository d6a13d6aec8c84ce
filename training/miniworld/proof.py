"""Does PEA distillation work? Measured end to end in the miniature world, on a CPU.

    python -m training.miniworld.proof              # the whole table, 3 seeds
    python -m training.miniworld.proof --quick      # one seed, the PEA row only, no lantern (the CI test)
    python -m training.miniworld.proof --seed 1 --output runs/seed1          # one seed of the table ...
    python -m training.miniworld.proof --merge runs/seed0 runs/seed1 runs/seed2 --output runs/table
                                                    # ... and one table from seeds run side by side
    python -m training.miniworld.proof --family sdxl   # the same world behind an SDXL-shaped teacher

The world (``training/miniworld/world.py``): coloured shapes captioned in English, Chinese and
Russian, plus a lantern (灯笼) captioned in Chinese only. The teacher is a tiny SD1.5-family
UNet trained from scratch on the English captions behind ComfyUI's SD1 CLIP, or with ``--family
sdxl`` a tiny UNet of ComfyUI's SDXL class behind its CLIP-L + CLIP-G text encoder, reading the
pooled vector and size ids through its label embedding (each shipped, rebuilt by ``python -m
training.miniworld.teacher --write-teacher [--family sdxl]``). The students are a different language encoder (a
Chinese-CLIP-shaped BERT with its own tokenizer and weights, reading Chinese and Russian) plus a
PEA adapter, distilled from the frozen teacher by this pack's ``Trainer`` on parallel captions,
the lantern images joining as native samples (``L_SD`` only). A judge trained on drawn images
(shipped, rebuilt by ``python -m training.miniworld.judge --write-judge``) reads colour, shape, place
and size back from images sampled with ComfyUI's sampler for held-out prompts (attribute
combinations never trained on).

Every setting of the proof (the constants below; the rest are ``TrainConfig``'s defaults):

- Teacher (``teacher.prepare_teacher``): 1200 steps, batch 32, AdamW lr 2e-3, weight decay 0, no
  warm-up, caption dropout 0.1, 64x64 images (SDXL: size ids 64x64, crop 0,0); shipped, so the
  proof reuses it.
- Student encoder (``encoder.py``): 64-d, context length 77 (the teacher's, so text alignment
  compares tokens); as initialised in the SD1.5 world, pretrained CLIP-style on the world's
  training images and their Chinese and Russian captions in the SDXL world (shipped).
  Adapter: hidden widths 256, 256 (SD1.5 head, 64-d tokens out; SDXL head, 64-d pooled trunk
  widened to 96-d tokens).
- Students: 1200 steps, batch 32 (SD1.5 world) or 64 (SDXL world, ``WorldSpec.batch``; the
  authors' SDXL run's global batch was 320) on one process (``--quick`` and the CI test: 600 steps
  (SD1.5) or 400 (SDXL) of batch 32, ``WorldSpec.quick_steps`` and ``quick_batch``), one 64x64
  bucket (8x8 latents),
  AdamW lr 1e-2, weight decay 0.01, 20 linear warm-up steps then constant, no gradient clipping,
  no noise offset, CFG dropout 0.1, loss weights λ_SD 1, λ_L 1, λ_F 0.1 (λ_T 1 and the others 0
  in the text-space row), seeds 0, 1, 2 (``--seed K``: one).
  The official run's lr 1e-5, weight decay 0 and 100 warm-up steps are for 70,000 steps of a
  full-size adapter; a tiny adapter over 1200 steps needs the larger lr (see the README).
- Sampling: ComfyUI's euler sampler, normal schedule, 20 steps, CFG 5, 64x64; 2 images per
  held-out prompt, 8 per lantern prompt; the judge reads each image.
- Rows: *PEA as published* (parallel captions: logit + feature KD; native lantern captions:
  ``L_SD``); four ablation rows that give every sample ``L_SD`` (``sd_on_parallel``), which is
  this project's reading of the paper's Table 2 (the paper does not say which samples get
  ``L_SD`` there, and no ablation code was released), so each differs from *PEA as published*
  in two factors: ``L_SD`` on parallel samples and the KD terms; text-space alignment
  (GlueGen-style, no UNet). The SDXL world measures *PEA as published* and the KD-free row.
- The SDXL world's students never see an orange shape (no caption, no image): the teacher knows
  orange by its English word only, the analogue of a LoRA trigger word. Its ``trigger`` rows ask
  for orange inside Chinese prompts, through the pack's own PEA CLIP (Apply PEA Adapter with the
  teacher's CLIP): the English word read by the language encoder (*PEA alone*), or in backticks,
  read by the teacher's CLIP and joined after the PEA tokens (*PEA + English span*); 4 images
  per prompt for all 48 orange combinations. Orange prompts are left out of the other rows.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters import LanguageEncoder, PEAError, load_adapter, load_language_encoder
from adapters.file_format import atomic_write
from training.data.caches import TeacherText
from training.data.sampling import read_manifest
from training.config import TrainConfig
from training.loop import Trainer
from training.miniworld.encoder import LANGUAGES, WITHHELD, make_student_encoder
from training.miniworld.judge import Judge, accuracy, drawn_images, load_judge
from training.miniworld.teacher import prepare_teacher
from training.miniworld.tiny_base import TINY_PARTS
from training.miniworld.world import COLORS, read_pairs, write_dataset
from training.step.objective import LossWeights

STUDENTS = {  # the ablation rows as this project reads the paper's Table 2: L_SD on every sample (sd_on_parallel)
    "fine-tuning only (L_SD)": LossWeights(1.0, 0.0, 0.0, sd_on_parallel=True),
    "L_SD + logit KD": LossWeights(1.0, 1.0, 0.0, sd_on_parallel=True),
    "L_SD + feature KD": LossWeights(1.0, 0.0, 0.1, sd_on_parallel=True),
    "L_SD + logit + feature KD": LossWeights(1.0, 1.0, 0.1, sd_on_parallel=True),
    "PEA as published": LossWeights(1.0, 1.0, 0.1),
    "text-space alignment (GlueGen-style)": LossWeights(0.0, 0.0, 0.0, text=1.0),
}
OURS = "PEA as published"
"""Parallel captions: logit + feature KD only; the native lantern captions: L_SD only."""
KD_FREE = "fine-tuning only (L_SD)"


@dataclass(frozen=True)
class WorldSpec:
    """What a family's world measures: its student rows, their batch, the colour its students never
    see (the trigger-word analogue; None: every colour is trained), and the steps and batch of
    ``--quick`` (the CI floor's one student, cheaper than the table's: tests/host/test_world_proof.py
    gives the measured basis); whether the students' encoder is the pretrained one
    (``encoder.make_student_encoder``) or as initialised."""

    rows: tuple[str, ...]
    batch: int
    quick_steps: int
    quick_batch: int
    withheld: str | None = None
    pretrained_encoder: bool = False


WORLDS = {"sd15": WorldSpec(tuple(STUDENTS), batch=32, quick_steps=600, quick_batch=32),
          "sdxl": WorldSpec((KD_FREE, OURS), batch=64, quick_steps=400, quick_batch=32, withheld=WITHHELD,
                            pretrained_encoder=True)}
TRIGGER_SAMPLES_PER_PROMPT = 4
STUDENT_STEPS = 1200
ADAPTER_HIDDEN = (256, 256)
STUDENT_LR = 1e-2
SAMPLES_PER_PROMPT = 2
LANTERN_SAMPLES_PER_PROMPT = 8
"""The lantern rows rest on 6 held-out prompts: more images each keep their spread narrow."""
SAMPLER = {"steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}


@dataclass
class World:
    parts: object
    encoder: LanguageEncoder
    encoder_folder: Path
    judge: Judge
    pairs: list[dict]
    """Every pair of the world but those of the withheld colour."""
    withheld: list[dict]
    """The pairs of the withheld colour (ordinary shapes), never seen by the students."""
    manifest: Path
    output: Path


def build_world(output: Path, family: str = "sd15", progress: bool = True) -> World:
    """Teacher, student encoder, judge and the students' training manifest."""
    spec, pairs = WORLDS[family], read_pairs()
    data = output / "data"
    parts = TINY_PARTS[family](seed=0)
    prepare_teacher(parts, data, output / "teacher_unet.safetensors", 0, progress)
    folder = make_student_encoder(output / "language_clip" / "zh-ru-clip-tiny", spec.pretrained_encoder)
    encoder = load_language_encoder(folder, context_length=77)  # the teacher's length: text alignment compares tokens
    withheld = [p for p in pairs if p["color"] == spec.withheld]
    pairs = [p for p in pairs if p["color"] != spec.withheld]
    manifest = write_dataset(data, [p for p in pairs if not p["held_out"]], LANGUAGES, name="students")
    return World(parts, encoder, folder, load_judge(), pairs, [p for p in withheld if not p["native"]], manifest,
                 output)


Conditioning = tuple[torch.Tensor, "torch.Tensor | None"]
"""Cross-attention tokens [N, L, C] and, for SDXL, the pooled vector [N, P]."""


def comfy_conditioning(cond: Conditioning, size: int = 64) -> list:
    """ComfyUI's CONDITIONING for a batch; SDXL's size ids as the students were trained with them."""
    tokens, pooled = cond
    extra = {} if pooled is None else {"pooled_output": pooled.float().cpu(), "width": size, "height": size,
                                       "target_width": size, "target_height": size, "crop_w": 0, "crop_h": 0}
    return [[tokens.float().cpu(), extra]]


@torch.no_grad()
def sample(parts, positive: Conditioning, negative: Conditioning, seed: int) -> torch.Tensor:
    """Images [N, 64, 64, 3] for a batch of conditionings, through ComfyUI's sampler and VAE."""
    import comfy.sample

    latent = torch.zeros(positive[0].shape[0], 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(parts.model, noise, positive=comfy_conditioning(positive),
                                  negative=comfy_conditioning(negative), latent_image=latent, denoise=1.0,
                                  disable_pbar=True, seed=seed, **SAMPLER)
    return parts.vae.decode(samples).clamp(0, 1).cpu()


class Conditioner:
    """Prompts -> conditioning, for the teacher or for a student."""

    def __init__(self, world: World, adapter=None):
        self.world, self.adapter = world, adapter
        self.teacher = TeacherText(world.parts.clip, memory=True) if adapter is None else None

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> Conditioning:
        if self.adapter is None:
            return self.teacher.encode_batch(texts)
        return self.adapter(self.world.encoder.encode(texts).float())


class PackConditioner:
    """Prompts -> conditioning through the pack's own PEA CLIP: the student's adapter file applied
    as Apply PEA Adapter applies it, with the teacher's CLIP as the checkpoint's CLIP, so English
    spans in backticks go to the teacher's CLIP (``nodes/english_route.py``)."""

    def __init__(self, encoder_folder: Path, english_clip, adapter_file: Path):
        from comfy_runtime import load_pack

        nodes = load_pack().nodes
        language_clip = nodes.language_clip.load_language_clip(encoder_folder, dtype="fp32", device="cpu",
                                                               context_length=77)
        self.clip = nodes.pea_clip.adapter_clip(language_clip.clip, load_adapter(adapter_file), english_clip,
                                                adapter_file.name)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> Conditioning:
        encoded = [self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True) for text in texts]
        pooled = [p for _, p in encoded]
        return torch.cat([c for c, _ in encoded]), None if pooled[0] is None else torch.cat(pooled)


def score(world: World, conditioner, pairs: list[dict], texts: list[str], seed: int,
          per_prompt: int = SAMPLES_PER_PROMPT):
    """Judge's accuracy on images sampled for ``texts`` (each ``per_prompt`` times)."""
    texts = [t for t in texts for _ in range(per_prompt)]
    truth = [p for p in pairs for _ in range(per_prompt)]
    images = sample(world.parts, conditioner(texts), conditioner([""]), seed)
    return accuracy(world.judge.read(images), truth), images[::per_prompt]


def train_student(world: World, name: str, weights: LossWeights, seed: int, steps: int, batch: int, progress: bool):
    """Distil one student with the pack's Trainer; returns its adapter and the adapter file it wrote."""
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    run = world.output / "students" / f"{slug}_seed{seed}"
    cfg = TrainConfig(output=run, steps=steps, batch_size=batch, lr=STUDENT_LR, weight_decay=0.01, warmup=20,
                      resolution=64, hidden=ADAPTER_HIDDEN, save_every=steps, log_every=20, seed=seed, weights=weights,
                      cache_dir=world.output / "cache", languages=list(LANGUAGES), memory_cache=True,
                      progress=progress, adapter_name="adapter.safetensors", overwrite=True)  # its own scratch runs
    trainer = Trainer(cfg, world.parts, world.encoder, read_manifest(world.manifest))
    adapter_file = trainer.run()
    return trainer.adapter.eval(), adapter_file


def translate(pairs: list[dict]) -> dict[str, str]:
    """The dictionary baseline: every Chinese and Russian caption to its English twin."""
    return {p[lang]: p["en"] for p in pairs for lang in LANGUAGES if p[lang]}


def trigger_prompts(pairs: list[dict], word: str, span: bool) -> list[str]:
    """The Chinese captions of ``pairs`` with their colour word replaced by the English ``word``,
    in backticks when ``span``: "一个小的`orange`圆形在左边"."""
    return [p["zh"].replace(COLORS[p["color"]][0], f"`{word}`" if span else word) for p in pairs]


def run_proof(output: Path, seeds: Sequence[int] = (0, 1, 2), rows: tuple[str, ...] | None = None,
              steps: int = STUDENT_STEPS, progress: bool = True, concept: bool = True, family: str = "sd15",
              batch: int | None = None) -> dict:
    """Measure every row (default: the family's, ``WORLDS``) for each of ``seeds`` (and, with
    ``concept``, the lantern rows and, where the family's world withholds a colour, the trigger
    rows), training each student ``steps`` steps of ``batch`` (default: the family's); write
    proof.json and, when seed 0 is among them, samples.png; return the results."""
    start = time.perf_counter()
    spec = WORLDS[family]
    rows = spec.rows if rows is None else rows
    batch = spec.batch if batch is None else batch
    world = build_world(output, family, progress)
    held = [p for p in world.pairs if p["held_out"] and not p["native"]]
    lanterns = [p for p in world.pairs if p["held_out"] and p["native"]] if concept else []
    dictionary = translate(world.pairs)
    triggers = world.withheld if concept else []
    every_pair = world.pairs + world.withheld
    judge_real = accuracy(world.judge.read(drawn_images(every_pair)), every_pair)
    results: dict = {"family": family, "seeds": list(seeds), "steps": steps, "batch": batch,
                     "judge_on_drawn_images": judge_real,
                     "held_out_prompts": len(held), "trigger_prompts": len(triggers), "withheld": spec.withheld,
                     "lantern_prompts": len(lanterns), "samples_per_prompt": SAMPLES_PER_PROMPT,
                     "lantern_samples_per_prompt": LANTERN_SAMPLES_PER_PROMPT, "rows": {}}
    grid: dict[str, torch.Tensor] = {"ground truth": drawn_images(held + lanterns)}

    def record(row: str, seed: int, acc: dict, images: torch.Tensor | None = None) -> None:
        results["rows"].setdefault(row, []).append(acc)
        if images is not None and seed == 0:
            grid[row] = images

    teacher, sampled = Conditioner(world), {}

    def score_teacher(pairs: list[dict], texts: list[str], seed: int, per_prompt: int = SAMPLES_PER_PROMPT):
        # the dictionary gives ordinary captions their exact English twins: sample those once
        key = (tuple(texts), seed, per_prompt)
        if key not in sampled:
            sampled[key] = score(world, teacher, pairs, texts, seed, per_prompt)
        return sampled[key]

    for seed in seeds:
        acc, images = score_teacher(held, [p["en"] for p in held], seed)
        record("teacher, English prompts", seed, acc, images)
        for lang in LANGUAGES:
            acc, images = score_teacher(held, [dictionary[p[lang]] for p in held], seed)
            record(f"translation ({lang}) -> teacher", seed, acc)
        if concept:
            acc, images = score_teacher(lanterns, [dictionary[p["zh"]] for p in lanterns], seed,
                                        LANTERN_SAMPLES_PER_PROMPT)
            record("concept 灯笼: translation -> teacher", seed, acc, images)
        if triggers:
            acc, _ = score_teacher(triggers, [p["en"] for p in triggers], seed, TRIGGER_SAMPLES_PER_PROMPT)
            record(f"trigger {spec.withheld}: teacher, English prompts", seed, acc)
        for name in rows:
            adapter, adapter_file = train_student(world, name, STUDENTS[name], seed, steps, batch, progress)
            student = Conditioner(world, adapter)
            for lang in LANGUAGES:
                acc, images = score(world, student, held, [p[lang] for p in held], seed)
                record(f"{name} ({lang})", seed, acc, images if lang == "zh" else None)
            if concept and name == OURS:
                acc, images = score(world, student, lanterns, [p["zh"] for p in lanterns], seed,
                                    LANTERN_SAMPLES_PER_PROMPT)
                record(f"concept 灯笼: {OURS}", seed, acc, images)
            if triggers and name == OURS:
                through_pack = PackConditioner(world.encoder_folder, world.parts.clip, adapter_file)
                for label, span in (("PEA alone", False), ("PEA + English span", True)):
                    acc, _ = score(world, through_pack, triggers, trigger_prompts(triggers, spec.withheld, span), seed,
                                   TRIGGER_SAMPLES_PER_PROMPT)
                    record(f"trigger {spec.withheld}: {label} (zh)", seed, acc)
    results["minutes"] = (time.perf_counter() - start) / 60
    if len(grid) > 1:
        save_grid(grid, len(held), output / "samples.png", lanterns=min(3, len(lanterns)))
    return finish(results, output)


def finish(results: dict, output: Path) -> dict:
    """Summarise the rows over seeds, write proof.json, print the table."""
    results["summary"] = {row: summarize(accs) for row, accs in results["rows"].items()}
    text = json.dumps(results, indent=2, ensure_ascii=False)
    atomic_write(output / "proof.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print_table(results)
    return results


def merge_proofs(folders: list[Path], output: Path) -> dict:
    """One table from runs of single seeds (``--seed``) made side by side: their rows joined in
    seed order, minutes added up, seed 0's samples.png copied."""
    runs = sorted(((json.loads((f / "proof.json").read_text(encoding="utf-8")), f) for f in folders),
                  key=lambda run: run[0]["seeds"])
    seeds = [seed for run, _ in runs for seed in run["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise PEAError(f"the runs to merge repeat a seed ({seeds}): give each seed's folder once")
    merged = {**runs[0][0], "seeds": seeds, "rows": {}, "minutes": sum(run["minutes"] for run, _ in runs)}
    for run, folder in runs:
        if run["rows"].keys() != runs[0][0]["rows"].keys():
            raise PEAError(f"{folder / 'proof.json'} measured other rows than {runs[0][1] / 'proof.json'}")
        for key in ("family", "steps", "batch"):
            if run.get(key) != runs[0][0].get(key):
                raise PEAError(f"{folder / 'proof.json'} has {key} {run.get(key)!r}, "
                               f"{runs[0][1] / 'proof.json'} {runs[0][0].get(key)!r}: merge runs made alike")
        for row, accs in run["rows"].items():
            merged["rows"].setdefault(row, []).extend(accs)
        if 0 in run["seeds"] and (folder / "samples.png").is_file():
            output.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "samples.png", output / "samples.png")
    return finish(merged, output)


def summarize(accs: list[dict]) -> dict:
    """Mean and spread (sample standard deviation; 0 for one seed) of each metric over seeds."""
    return {k: {"mean": statistics.fmean(a[k] for a in accs),
                "std": statistics.stdev(a[k] for a in accs) if len(accs) > 1 else 0.0} for k in accs[0]}


def print_table(results: dict) -> None:
    seeds = len(results["seeds"])
    judge = results["judge_on_drawn_images"]
    print("\njudge on drawn images: " + ", ".join(f"{k} {v:.3f}" for k, v in judge.items()))
    print(f"held-out prompts: {results['held_out_prompts']} (x{results['samples_per_prompt']} images), "
          f"lantern prompts: {results['lantern_prompts']} (x{results['lantern_samples_per_prompt']} images); "
          f"{seeds} seed(s); mean ± spread over seeds\n")
    keys = ("color", "shape", "place", "size", "mean", "all")
    print(f"{'row':48s}" + "".join(f"{k:>14s}" for k in keys))
    for row, s in results["summary"].items():
        print(f"{row:48s}" + "".join(f"{s[k]['mean']:8.3f}±{s[k]['std']:.3f}" for k in keys))
    teacher = results["summary"]["teacher, English prompts"]["mean"]["mean"]
    for lang in LANGUAGES:
        ours = results["summary"].get(f"{OURS} ({lang})")
        if ours:
            print(f"\nPEA ({lang}) / teacher, mean attribute accuracy: {ours['mean']['mean'] / teacher:.3f}")
    print(f"took {results['minutes']:.1f} min")


def save_grid(grid: dict[str, torch.Tensor], held: int, dest: Path, shown: int = 7, lanterns: int = 3) -> None:
    """A PNG of the first held-out prompts and lantern prompts, one row per method (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(False, i) for i in range(min(shown, held))] + [(True, i) for i in range(lanterns)]
    fig, axes = plt.subplots(len(grid), len(columns), figsize=(len(columns) * 1.1 + 3, len(grid) * 1.1),
                             squeeze=False)
    for r, (row, images) in enumerate(grid.items()):
        for c, (lantern, i) in enumerate(columns):
            axes[r][c].axis("off")
            if row == "ground truth":
                axes[r][c].imshow(images[held + i if lantern else i].numpy())
            elif row.startswith("concept") == lantern and i < len(images):
                axes[r][c].imshow(images[i].numpy())
        axes[r][0].text(-0.1, 0.5, row.replace("灯笼", "lantern"), ha="right", va="center", fontsize=8,
                        transform=axes[r][0].transAxes)
    fig.subplots_adjust(left=0.3, right=0.99, wspace=0.05, hspace=0.05)
    atomic_write(dest, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("pea_runs/world_proof"))
    p.add_argument("--family", choices=sorted(WORLDS), default="sd15",
                   help="the teacher's family: SD1.5-shaped (default) or SDXL-shaped")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds: 0, 1, ...")
    p.add_argument("--seed", type=int, help="this seed only (run seeds side by side, then --merge)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="FOLDER",
                   help="make one table, in --output, from these single-seed runs; nothing is trained")
    p.add_argument("--steps", type=int, help=f"training steps per student (default {STUDENT_STEPS}; with "
                                              f"--quick {', '.join(f'{k} {w.quick_steps}' for k, w in WORLDS.items())})")
    p.add_argument("--batch", type=int, help="students' batch (default: "
                   + ", ".join(f"{k} {w.batch}" for k, w in WORLDS.items()) + "; with --quick "
                   + ", ".join(f"{k} {w.quick_batch}" for k, w in WORLDS.items()) + ")")
    p.add_argument("--quick", action="store_true", help="one seed, the PEA row only, no lantern rows")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    args = p.parse_args(argv)
    try:
        if args.merge:
            merge_proofs(args.merge, args.output)
            return 0
        from comfy_runtime import import_comfy

        import_comfy(cpu=args.cpu or None)
        rows = (OURS,) if args.quick else None
        seeds = [0] if args.quick else [args.seed] if args.seed is not None else list(range(args.seeds))
        spec = WORLDS[args.family]
        steps = args.steps if args.steps is not None else spec.quick_steps if args.quick else STUDENT_STEPS
        batch = args.batch if args.batch is not None else spec.quick_batch if args.quick else spec.batch
        run_proof(args.output, seeds, rows, steps, not args.no_progress, concept=not args.quick, family=args.family,
                  batch=batch)
    except PEAError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
