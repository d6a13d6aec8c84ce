"""The training loop: batches prefetched on a worker thread, distillation steps behind the
non-finite guard, the optimiser, checkpoints, logs, previews."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from adapters import AdapterInfo, EncoderSpec, LanguageEncoder, PEAAdapter, check_pairing, load_adapter, save_adapter
from adapters.families import Family
from adapters.pairing import check_base_model
from .base import BaseParts, new_adapter, trainable_family
from .batches import BatchMaker, Prefetcher, Prepared
from .caching import LatentCache, TeacherText
from .captions import CaptionWindow
from .data import ManifestBatches, ManifestError, Record, ShardBatches, SkipCounter, assign_buckets, make_buckets
from .distill import Batch, Distiller
from .distributed import DistInfo
from .loss_window import SUMS, LossWindow, loss_sums, non_finite
from .nonfinite import NonFiniteError, StepGuard, check_weights_finite, gradients_finite
from .objective import LossWeights
from .preview import render_previews
from .run_files import (RunLog, find_checkpoint, load_checkpoint, plot_losses, prune_checkpoints, save_checkpoint,
                        set_rng_state, write_summary)
from .run_folder import check_later_checkpoints, prepare_run_folder

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Defaults as the authors' official run trains (``METHOD.md``): AdamW at lr 1e-5 with 100
    warm-up steps, no weight decay, no gradient clipping, no noise offset."""

    output: Path
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup: int = 100
    clip_grad: float = 0.0
    """Clip the adapter's gradient norm to this (0: no clipping)."""
    noise_offset: float = 0.0
    cfg_dropout: float = 0.1
    weights: LossWeights = field(default_factory=LossWeights)
    max_bad_steps: int = 20
    """Stop after this many steps in a row with a non-finite loss or gradients (0: never)."""
    resolution: int | None = None
    hidden: tuple[int, ...] | None = None
    init_adapter: Path | None = None
    resume: Path | None = None
    cache_dir: Path | None = None
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    preview_every: int = 0
    preview_prompts: list[str] = field(default_factory=list)
    preview_steps: int = 12
    languages: list[str] = field(default_factory=list)
    adapter_name: str = "adapter.safetensors"
    progress: bool = True
    memory_cache: bool = False
    """Keep latents and teacher encodings in memory too (small datasets: the demo, tests)."""
    overwrite: bool = False
    """Start over a previous run in ``output``: its files are deleted first (a new run refuses otherwise)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep; 0 keeps every one."""
    memory_budget: float = 1.0
    """Share of the UNet's attention blocks whose student activations are kept (others recomputed)."""
    compile: bool = False
    """torch.compile each UNet pass into one graph."""


def warmup_schedule(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


class Trainer:
    """Distils a PEA adapter from ``parts`` (a loaded checkpoint) behind ``encoder``."""

    def __init__(self, cfg: TrainConfig, parts: BaseParts, encoder: LanguageEncoder, records: list[Record] | None = None,
                 dist_info: DistInfo | None = None, shards: list[str] | None = None):
        import comfy.model_management as mm

        self.cfg, self.parts, self.dist = cfg, parts, dist_info or DistInfo()
        if self.dist.main:  # before any process writes a file
            prepare_run_folder(cfg.output, cfg.adapter_name, cfg.resume, cfg.overwrite, cfg.cache_dir)
        self.dist.barrier()
        mm.load_models_gpu([parts.model], force_full_load=True)
        self.device = parts.model.load_device
        self.base = parts.model.model
        self.encoder = encoder.to(self.device)
        family = trainable_family(parts.model, parts.name)
        self.resolution = cfg.resolution or family.resolution
        self.adapter = self.initial_adapter(family).to(self.device)
        self.trained = self.adapter
        if self.dist.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(self.adapter)
        self.skipped = SkipCounter()
        self.teacher = TeacherText(parts.clip, cfg.cache_dir, parts.name, memory=cfg.memory_cache)
        latents = LatentCache(self.base, parts.vae, cfg.cache_dir, parts.name, memory=cfg.memory_cache)
        self.make_batch = BatchMaker(latents, self.teacher, self.encoder.tokenize, self.skipped, self.device)
        if cfg.cache_dir and self.dist.world > 1:  # rank 0 writes what every rank reads first
            if self.dist.main:
                self.teacher.encode("")
            self.dist.barrier()
        empty = self.teacher.encode("")
        self.distiller = Distiller(self.base, self.encoder, self.trained, encoder.tokenize([""]),
                                   (empty["tokens"], empty.get("pooled")), cfg.weights, cfg.cfg_dropout, cfg.seed,
                                   cfg.noise_offset, cfg.memory_budget, cfg.compile)
        self.captions = CaptionWindow(encoder.tokenizer, encoder.context_length, encoder.path)
        self.records, self.batches = self.batch_order(records, shards)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_schedule(cfg.warmup))
        self.guard = StepGuard(cfg.max_bad_steps)
        self.last_checkpoint: Path | None = None
        self.step = 0

    def initial_adapter(self, family: Family) -> PEAAdapter:
        """``--init-adapter`` (checked against the encoder and the family), else a new one."""
        cfg = self.cfg
        if cfg.init_adapter:
            adapter = load_adapter(cfg.init_adapter)
            check_pairing(self.encoder, adapter.info, str(cfg.init_adapter))
            check_base_model(adapter.shape, str(cfg.init_adapter), self.parts.name, family)
            return adapter.requires_grad_(True).train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return new_adapter(family, self.encoder, cfg.hidden)

    def batch_order(self, records: list[Record] | None, shards: list[str] | None):
        """(the usable manifest records, the endless batch order of this process)."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world
        buckets = make_buckets(self.resolution, step=64 if self.resolution >= 256 else 8)
        if shards:
            return [], ShardBatches(shards, buckets, cfg.batch_size, self.skipped, world, rank, self.captions)
        kept, sizes = assign_buckets(records, buckets, self.skipped)
        if not kept:
            raise ManifestError(f"none of the {len(records)} images can be used: "
                                f"{'; '.join(self.skipped.examples(3))}")
        if self.dist.main:
            self.captions.measure(kept)
            self.report_data(len(records))
        self.warn_if_nothing_trains(kept)
        return kept, ManifestBatches(kept, sizes, cfg.batch_size, world, rank, cfg.seed)

    def warn_if_nothing_trains(self, records: list[Record]) -> None:
        native = any(r.native for r in records)
        parallel = any(not r.native for r in records)
        if not self.cfg.weights.terms(native, parallel):
            log.warning(
                "nothing can train: the manifest has %s, and %s. Parallel samples get only the KD terms "
                "(--lambda-logit, --lambda-feature, --lambda-text; --sd-on-parallel adds L_SD), native samples "
                "only L_SD (--lambda-sd).", "native and parallel samples" if native and parallel else
                "only native samples" if native else "only parallel samples", self.cfg.weights)

    def report_data(self, total: int) -> None:
        """Warn about skipped images and captions cut to the encoder's window."""
        if self.skipped.count:
            log.warning("%d of %d images are skipped (see summary.json at the end): %s", self.skipped.count, total,
                    "; ".join(self.skipped.examples(5)))
        if self.captions.message():
            log.warning("%s", self.captions.message())

    # ---- state ------------------------------------------------------------------------
    def adapter_info(self) -> AdapterInfo:
        enc = self.encoder
        return AdapterInfo(
            shape=self.adapter.shape,
            encoder=EncoderSpec(enc.kind, enc.name, "last", enc.context_length, enc.use_attention_mask),
            languages=list(self.cfg.languages),
            training={"teacher": self.parts.name, "steps": self.step, "global_batch":
                      self.cfg.batch_size * self.cfg.grad_accum * self.dist.world, "lr": self.cfg.lr,
                      "loss_weights": asdict(self.cfg.weights), "cfg_dropout": self.cfg.cfg_dropout,
                      "noise_offset": self.cfg.noise_offset, "resolution": self.resolution,
                      "images": len(self.records), "skipped_images": self.skipped.count,
                      "skipped_steps": self.guard.skipped})

    def state(self) -> dict:
        return {"adapter": self.adapter.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "data": self.batches.position(self.step * self.cfg.grad_accum),
                "skipped": dict(self.skipped.reasons), "guard": self.guard.state(),
                "adapter_info": self.adapter_info().to_json()}

    def restore(self, path: Path) -> None:
        self.last_checkpoint = find_checkpoint(path)
        ckpt = load_checkpoint(self.last_checkpoint)
        self.adapter.load_state_dict(ckpt["adapter"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        if isinstance(ckpt["skipped"], dict):  # checkpoints before per-image counting kept only a number
            self.skipped.merge([ckpt["skipped"]])
        self.guard.restore(ckpt.get("guard", {}))
        set_rng_state(ckpt["rng"])

    def save_checkpoint(self) -> None:
        """Every process checks the adapter (the same on all) is finite and hands in the images it
        skipped; rank 0 writes, then prunes old checkpoints."""
        check_weights_finite(self.adapter, f"the checkpoint of step {self.step}", self.last_checkpoint)
        self.skipped.merge(self.dist.gather(self.skipped.reasons))
        if self.dist.main:
            self.last_checkpoint = save_checkpoint(self.cfg.output / "checkpoints", self.step, self.state())
            prune_checkpoints(self.cfg.output / "checkpoints", self.cfg.keep_checkpoints)

    # ---- loop -------------------------------------------------------------------------
    def next_batch(self, stream: Iterator[Prepared]) -> Batch:
        batch = None
        while batch is None:
            batch = self.make_batch.finish(next(stream))
        return batch

    def train_step(self, stream: Iterator[Prepared]) -> tuple[torch.Tensor, list[str]]:
        """One optimiser step over ``grad_accum`` micro-batches, unless the loss or the adapter's
        gradients are not finite: then the optimiser and the schedule are left untouched.

        Returns the step's loss sums over every process (``loss_window.SUMS``, on the CPU: the
        step's one host sync, which the guard needs) and what was not finite (empty: stepped)."""
        sums = torch.zeros(len(SUMS) + 1, device=self.device)  # + 1: gradients not finite
        for micro in range(self.cfg.grad_accum):
            batch = self.next_batch(stream)
            last = micro == self.cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.trained.no_sync()
            with sync:  # the Distiller runs the UNet in its weight dtype, no autocast
                loss, parts = self.distiller(batch, self.step * self.cfg.grad_accum + micro)
                (loss / self.cfg.grad_accum).backward()
            sums[:-1] += loss_sums(parts)
        sums[-1] = (~gradients_finite(self.adapter.parameters())).float()
        sums = self.dist.sum(sums).cpu()
        self.step += 1
        bad = non_finite(sums) + (["adapter gradients"] if sums[-1] > 0 else [])
        if not bad:
            if self.cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.cfg.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, bad

    def run(self) -> Path:
        """Train to ``cfg.steps``; write the adapter, the log, the loss plot and the summary.
        Raises NonFiniteError (after writing the summary) when the guard stops the run."""
        cfg, out = self.cfg, self.cfg.output
        if cfg.resume:
            self.restore(cfg.resume)
            if self.dist.main:
                check_later_checkpoints(out / "checkpoints", self.step, cfg.overwrite)
        log_file = RunLog(out / "log.jsonl", self.step) if self.dist.main else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.dist.main),
                   desc="PEA distillation", dynamic_ncols=True)
        self.adapter.train()
        try:
            self.train_steps(log_file, bar)
            final = out / cfg.adapter_name
            check_weights_finite(self.adapter, f"the adapter {final}", self.last_checkpoint)
        except NonFiniteError as e:
            if self.dist.main:
                self.write_summary(None, stopped=str(e))
            raise
        finally:
            bar.close()
        self.skipped.merge(self.dist.gather(self.skipped.reasons))
        if isinstance(self.batches, ShardBatches):  # each process measured its own shards' captions
            self.captions.merge(self.dist.gather(self.captions.summary())[1:])
        if self.dist.main:
            save_adapter(self.adapter, self.adapter_info(), final)
            plot_losses(log_file.entries(), out / "loss.png")
            if cfg.preview_prompts:
                self.preview(out / "previews" / "final.png")
            self.write_summary(final)
        self.dist.barrier()
        return final

    def train_steps(self, log_file: RunLog | None, bar: tqdm) -> None:
        """The steps up to ``cfg.steps``, with their logs, checkpoints and previews."""
        cfg, out = self.cfg, self.cfg.output
        window, started = LossWindow(), time.perf_counter()
        with Prefetcher(self.batches.iterate(self.step * cfg.grad_accum), self.make_batch.prepare) as stream:
            while self.step < cfg.steps:
                sums, bad = self.train_step(stream)
                bar.update(1)
                if bad:
                    self.skip_step(bad, log_file, bar)
                else:
                    self.guard.good()
                    window.add(sums)
                due = self.step % cfg.log_every == 0 or self.step == cfg.steps or self.step == 1
                if due and window.steps:  # skipped steps have their own lines
                    entry = self.log_entry(window, time.perf_counter() - started)
                    started = time.perf_counter()
                    if log_file:
                        log_file.write(entry)
                    bar.set_postfix({k: f"{entry[k]:.4f}" for k in ("loss", "sd", "lkd", "fkd") if k in entry}
                                    | {"sps": f"{entry['samples_per_s']:.1f}", "skipped": self.guard.skipped})
                if cfg.save_every and (self.step % cfg.save_every == 0 or self.step == cfg.steps):
                    self.save_checkpoint()
                    if log_file:
                        plot_losses(log_file.entries(), out / "loss.png")
                if self.dist.main and cfg.preview_every and self.step % cfg.preview_every == 0:
                    self.preview(out / "previews" / f"step_{self.step:07d}.png")

    def log_entry(self, window: LossWindow, seconds: float) -> dict:
        steps = window.steps
        entry = {"step": self.step, **window.means(), "lr": self.scheduler.get_last_lr()[0]}
        entry["samples_per_s"] = entry["samples"] * steps / seconds
        entry["skipped_images"] = self.skipped.count
        entry["skipped_steps"] = self.guard.skipped
        return entry

    def skip_step(self, bad: list[str], log_file: RunLog | None, bar: tqdm) -> None:
        """Count a step skipped for non-finite ``bad`` parts, log it at once, stop after too many."""
        try:
            self.guard.skip(self.step, bad, self.last_checkpoint)
        finally:
            bar.set_postfix(skipped=self.guard.skipped)
            if log_file:
                log_file.write({"step": self.step, "skipped": f"non-finite {', '.join(bad)}",
                                "skipped_steps": self.guard.skipped, "skipped_in_a_row": self.guard.in_a_row})

    def write_summary(self, adapter: Path | None, **extra) -> None:
        write_summary(self.cfg.output / "summary.json", {
            "adapter": str(adapter) if adapter else None, "steps": self.step, "skipped_steps": self.guard.skipped,
            "skipped_images": self.skipped.count, "skipped": self.skipped.reasons, "captions": self.captions.summary(),
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None, **extra})

    def preview(self, dest: Path) -> Path | None:
        if not self.cfg.preview_prompts:
            return None
        size = (self.resolution, self.resolution)
        return render_previews(self.parts, self.encoder, self.adapter, self.cfg.preview_prompts, size, dest,
                               steps=self.cfg.preview_steps, seed=self.cfg.seed)
