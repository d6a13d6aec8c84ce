"""The training loop: batches, distillation steps, the optimiser, checkpoints, logs, previews."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from adapters import AdapterInfo, EncoderSpec, LanguageEncoder, load_adapter, save_adapter
from .base import BaseParts, base_family, new_adapter
from .batches import BatchMaker
from .caching import LatentCache, TeacherText
from .captions import CaptionWindow
from .data import ManifestBatches, ManifestError, Record, ShardBatches, SkipCounter, assign_buckets, make_buckets
from .distill import Distiller
from .distributed import DistInfo
from .objective import LossWeights
from .preview import render_previews
from .run_files import (RunLog, load_checkpoint, plot_losses, prune_checkpoints, save_checkpoint, set_rng_state,
                        write_summary)
from .run_folder import check_later_checkpoints, prepare_run_folder

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    output: Path
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: int = 100
    clip_grad: float = 1.0
    cfg_dropout: float = 0.1
    weights: LossWeights = field(default_factory=LossWeights)
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
        family, _, _ = base_family(self.base)
        self.resolution = cfg.resolution or (1024 if family == "sdxl" else 512)
        if cfg.init_adapter:
            adapter = load_adapter(cfg.init_adapter)
            adapter.requires_grad_(True).train()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                adapter = new_adapter(self.base, encoder, cfg.hidden)
        self.adapter = adapter.to(self.device)
        self.trained = self.adapter
        if self.dist.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(self.adapter)
        self.skipped = SkipCounter()
        self.teacher = TeacherText(parts.clip, cfg.cache_dir, parts.name, memory=cfg.memory_cache)
        latents = LatentCache(self.base, parts.vae, cfg.cache_dir, parts.name, memory=cfg.memory_cache)
        self.make_batch = BatchMaker(latents, self.teacher, self.encoder.tokenize, self.skipped, self.device)
        empty = self.teacher.encode("")
        self.distiller = Distiller(self.base, self.encoder, self.trained, encoder.tokenize([""]),
                                   (empty["tokens"], empty.get("pooled")), cfg.weights, cfg.cfg_dropout, cfg.seed)
        buckets = make_buckets(self.resolution, step=64 if self.resolution >= 256 else 8)
        self.captions = CaptionWindow(encoder.tokenizer, encoder.context_length)
        if shards:
            self.records = []
            self.batches = ShardBatches(shards, buckets, cfg.batch_size, self.skipped, self.dist.world, self.dist.rank,
                                        self.captions)
        else:
            self.records, sizes = assign_buckets(records, buckets, self.skipped)
            if not self.records:
                raise ManifestError(f"none of the {len(records)} images can be used: "
                                    f"{'; '.join(self.skipped.examples(3))}")
            if self.dist.main:
                self.captions.measure(self.records)
                self.report_data(len(records))
            self.batches = ManifestBatches(self.records, sizes, cfg.batch_size, self.dist.world, self.dist.rank, cfg.seed)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_schedule(cfg.warmup))
        self.step = 0

    def report_data(self, total: int) -> None:
        """Warn about skipped images and captions cut to the encoder's window."""
        if self.skipped.count:
            logger.warning("%d of %d images are skipped (see summary.json at the end): %s", self.skipped.count, total,
                        "; ".join(self.skipped.examples(5)))
        if self.captions.message():
            logger.warning("%s", self.captions.message())

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
                      "resolution": self.resolution, "images": len(self.records),
                      "skipped_images": self.skipped.count})

    def state(self) -> dict:
        return {"adapter": self.adapter.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "data": self.batches.position(self.step * self.cfg.grad_accum),
                "skipped": dict(self.skipped.reasons), "adapter_info": self.adapter_info().to_json()}

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.adapter.load_state_dict(ckpt["adapter"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        if isinstance(ckpt["skipped"], dict):  # checkpoints before per-image counting kept only a number
            self.skipped.merge([ckpt["skipped"]])
        set_rng_state(ckpt["rng"])

    # ---- loop -------------------------------------------------------------------------
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, stream) -> dict:
        """One optimiser step over ``grad_accum`` micro-batches; the global mean of each loss part."""
        sums = torch.zeros(7, dtype=torch.float64)  # loss, sd, lkd*m, fkd*m, samples, kd samples, text*m
        for micro in range(self.cfg.grad_accum):
            batch = None
            while batch is None:
                batch = self.make_batch(*next(stream))
            last = micro == self.cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.trained.no_sync()
            with sync, self.autocast():
                loss, parts = self.distiller(batch, self.step * self.cfg.grad_accum + micro)
                (loss / self.cfg.grad_accum).backward()
            m = parts["kd_mask"]
            sums += torch.tensor([parts["loss"].sum().item(), parts["sd"].sum().item(),
                                  (parts["lkd"] * m).sum().item(), (parts["fkd"] * m).sum().item(),
                                  len(m), m.sum().item(), (parts["text"] * m).sum().item()], dtype=torch.float64)
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        s = self.dist.sum(sums.to(self.device)).cpu()
        kd = max(s[5].item(), 1.0)
        return {"step": self.step, "loss": s[0].item() / s[4].item(), "sd": s[1].item() / s[4].item(),
                "lkd": s[2].item() / kd, "fkd": s[3].item() / kd, "text": s[6].item() / kd, "samples": int(s[4].item()),
                "lr": self.scheduler.get_last_lr()[0]}

    def run(self) -> Path:
        cfg, out = self.cfg, self.cfg.output
        if cfg.resume:
            self.restore(cfg.resume)
            if self.dist.main:
                check_later_checkpoints(out / "checkpoints", self.step, cfg.overwrite)
        log = RunLog(out / "log.jsonl", self.step) if self.dist.main else None
        stream = self.batches.iterate(self.step * cfg.grad_accum)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.dist.main),
                   desc="PEA distillation", dynamic_ncols=True)
        self.adapter.train()
        while self.step < cfg.steps:
            start = time.perf_counter()
            entry = self.train_step(stream)
            entry["samples_per_s"] = entry["samples"] / (time.perf_counter() - start)
            entry["skipped_images"] = self.skipped.count
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", sd=f"{entry['sd']:.4f}", lkd=f"{entry['lkd']:.4f}",
                            fkd=f"{entry['fkd']:.4f}", sps=f"{entry['samples_per_s']:.1f}")
            if log and (self.step % cfg.log_every == 0 or self.step == cfg.steps or self.step == 1):
                log.write(entry)
            saving = cfg.save_every and (self.step % cfg.save_every == 0 or self.step == cfg.steps)
            if saving:  # every process: the checkpoint holds the images any of them skipped
                self.skipped.merge(self.dist.gather(self.skipped.reasons))
            if self.dist.main and saving:
                save_checkpoint(out / "checkpoints", self.step, self.state())
                prune_checkpoints(out / "checkpoints", cfg.keep_checkpoints)
                plot_losses(log.entries(), out / "loss.png")
            if self.dist.main and cfg.preview_every and self.step % cfg.preview_every == 0:
                self.preview(out / "previews" / f"step_{self.step:07d}.png")
        bar.close()
        final = out / cfg.adapter_name
        self.skipped.merge(self.dist.gather(self.skipped.reasons))
        if isinstance(self.batches, ShardBatches):  # each process measured its own shards' captions
            self.captions.merge(self.dist.gather(self.captions.summary())[1:])
        if self.dist.main:
            save_adapter(self.adapter, self.adapter_info(), final)
            plot_losses(log.entries(), out / "loss.png")
            if cfg.preview_prompts:
                self.preview(out / "previews" / "final.png")
            write_summary(out / "summary.json", {"adapter": str(final), "steps": self.step,
                                                 "skipped_images": self.skipped.count, "skipped": self.skipped.reasons,
                                                 "captions": self.captions.summary()})
        self.dist.barrier()
        return final

    def preview(self, dest: Path) -> Path | None:
        if not self.cfg.preview_prompts:
            return None
        size = (self.resolution, self.resolution)
        return render_previews(self.parts, self.encoder, self.adapter, self.cfg.preview_prompts, size, dest,
                               steps=self.cfg.preview_steps, seed=self.cfg.seed)
