"""The training loop: data, distillation, optimiser, checkpoints, logs, previews, DDP."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from adapters import AdapterInfo, AdapterShape, EncoderSpec, LanguageEncoder, PEAAdapter, load_adapter, save_adapter
from .checkpoints import load_checkpoint, save_checkpoint, set_rng_state
from .data import (IMAGE_ERRORS, ManifestBatches, Record, ShardBatches, SkipCounter, assign_buckets, load_image,
                   make_buckets)
from .distill import Batch, Distiller, TeacherText
from .objective import LossWeights
from .preview import render_previews
from .report import RunLog, plot_losses


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
    memory_budget: float = 1.0
    """Share of the UNet's attention blocks whose student activations are kept (others recomputed)."""
    compile: bool = False
    """torch.compile each UNet pass into one graph."""


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """torchrun's environment; initialises the process group (gloo on CPU, NCCL on CUDA)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


def base_family(base_model) -> tuple[str, int, int | None]:
    """("sd15"|"sdxl", context width, pooled width or None) of a ComfyUI BaseModel."""
    import comfy.model_base

    context = base_model.model_config.unet_config["context_dim"]
    if isinstance(base_model, comfy.model_base.SDXL):
        return "sdxl", context, 1280
    return "sd15", context, None


def new_adapter(base_model, encoder: LanguageEncoder, hidden: tuple[int, ...] | None) -> PEAAdapter:
    """An adapter sized for the base family (token and pooled widths) and the encoder (input)."""
    head, context, pooled = base_family(base_model)
    hidden = hidden or ((1024, 1024) if head == "sdxl" else (2048, 2048))
    out_dim = pooled if head == "sdxl" else context
    return PEAAdapter(AdapterShape(head, encoder.hidden_size, tuple(hidden), out_dim, context, pooled))


def warmup_schedule(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


class Trainer:
    """Distils a PEA adapter from ``parts`` (a loaded checkpoint) behind ``encoder``."""

    def __init__(self, cfg: TrainConfig, parts, encoder: LanguageEncoder, records: list[Record] | None = None,
                 dist_info: DistInfo | None = None, shards: list[str] | None = None):
        import comfy.model_management as mm

        self.cfg, self.parts, self.dist = cfg, parts, dist_info or DistInfo()
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
        self.teacher = TeacherText(parts.clip, cfg.cache_dir, parts.name, memory=cfg.memory_cache)
        self._latent_memo: dict = {}
        empty = self.teacher.encode("")
        self.distiller = Distiller(self.base, self.encoder, self.trained, encoder.tokenize([""]),
                                   (empty["tokens"], empty.get("pooled")), cfg.weights, cfg.cfg_dropout, cfg.seed,
                                   cfg.memory_budget, cfg.compile)
        self.skipped = SkipCounter()
        buckets = make_buckets(self.resolution, step=64 if self.resolution >= 256 else 8)
        if shards:
            self.records = []
            self.batches = ShardBatches(shards, buckets, cfg.batch_size, self.skipped, self.dist.world, self.dist.rank)
        else:
            self.records, sizes = assign_buckets(records, buckets, self.skipped)
            self.batches = ManifestBatches(self.records, sizes, cfg.batch_size, self.dist.world, self.dist.rank, cfg.seed)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_schedule(cfg.warmup))
        self.step = 0

    # ---- data -------------------------------------------------------------------------
    def latents(self, record: Record, bucket: tuple[int, int]) -> torch.Tensor:
        """VAE latents of one image (scaled for the model), cached when a cache folder is set."""
        if self.cfg.memory_cache:
            key = (record.image, bucket)
            if key not in self._latent_memo:
                self._latent_memo[key] = self._latents(record, bucket)
            return self._latent_memo[key]
        return self._latents(record, bucket)

    @torch.no_grad()
    def _latents(self, record: Record, bucket: tuple[int, int]) -> torch.Tensor:
        path = None
        if self.cfg.cache_dir:
            key = hashlib.sha1(f"{self.parts.name}\0{record.image}\0{bucket}".encode()).hexdigest()
            path = self.cfg.cache_dir / "latents" / key[:2] / f"{key}.pt"
            if path.is_file():
                return torch.load(path, weights_only=True)
        pixels = load_image(record, bucket)[None]
        latent = self.base.process_latent_in(self.parts.vae.encode(pixels).float())[0].cpu()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(latent, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        return latent

    def make_batch(self, bucket: tuple[int, int], records: list[Record], sample_ids: list[int]) -> Batch | None:
        kept, latents, recs = [], [], []
        for record, sid in zip(records, sample_ids):
            try:
                latents.append(self.latents(record, bucket))
            except IMAGE_ERRORS as e:
                self.skipped.add(record.image, e)
                continue
            kept.append(sid)
            recs.append(record)
        if not kept:
            return None
        tokens, pooled = self.teacher.encode_batch([r.en if (r.en and not r.native) else "" for r in recs])
        return Batch(
            latents=torch.stack(latents).to(self.device), teacher_tokens=tokens.to(self.device),
            teacher_pooled=None if pooled is None else pooled.to(self.device),
            ids=self.encoder.tokenize([r.text for r in recs]).to(self.device),
            kd_mask=torch.tensor([0.0 if r.native else 1.0 for r in recs], device=self.device),
            pixel_size=bucket, sample_ids=kept)

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
                "skipped": self.skipped.count, "adapter_info": self.adapter_info().to_json()}

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.adapter.load_state_dict(ckpt["adapter"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.skipped.count = int(ckpt["skipped"])
        set_rng_state(ckpt["rng"])

    # ---- loop -------------------------------------------------------------------------
    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.dist.world > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()

    def train_step(self, stream) -> dict:
        """One optimiser step over ``grad_accum`` micro-batches; the global mean of each loss part."""
        sums = torch.zeros(7, dtype=torch.float64)  # loss, sd, lkd*m, fkd*m, samples, kd samples, text*m
        for micro in range(self.cfg.grad_accum):
            batch = None
            while batch is None:
                batch = self.make_batch(*next(stream))
            last = micro == self.cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.trained.no_sync()
            with sync:
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
        s = self.reduce(sums)
        kd = max(s[5].item(), 1.0)
        return {"step": self.step, "loss": s[0].item() / s[4].item(), "sd": s[1].item() / s[4].item(),
                "lkd": s[2].item() / kd, "fkd": s[3].item() / kd, "text": s[6].item() / kd, "samples": int(s[4].item()),
                "lr": self.scheduler.get_last_lr()[0]}

    def run(self) -> Path:
        cfg, out = self.cfg, self.cfg.output
        if cfg.resume:
            self.restore(cfg.resume)
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
            if self.dist.main and cfg.save_every and (self.step % cfg.save_every == 0 or self.step == cfg.steps):
                save_checkpoint(out / "checkpoints", self.step, self.state())
                plot_losses(log.entries(), out / "loss.png")
            if self.dist.main and cfg.preview_every and self.step % cfg.preview_every == 0:
                self.preview(out / "previews" / f"step_{self.step:07d}.png")
        bar.close()
        final = out / cfg.adapter_name
        if self.dist.main:
            save_adapter(self.adapter, self.adapter_info(), final)
            plot_losses(log.entries(), out / "loss.png")
            if cfg.preview_prompts:
                self.preview(out / "previews" / "final.png")
            (out / "summary.json").write_text(json.dumps(
                {"adapter": str(final), "steps": self.step, "skipped_images": self.skipped.count,
                 "skipped_examples": self.skipped.examples}, ensure_ascii=False, indent=2))
        if self.dist.world > 1:
            dist.barrier()
        return final

    def preview(self, dest: Path) -> Path | None:
        if not self.cfg.preview_prompts:
            return None
        size = (self.resolution, self.resolution)
        return render_previews(self.parts, self.encoder, self.adapter, self.cfg.preview_prompts, size, dest,
                               steps=self.cfg.preview_steps, seed=self.cfg.seed)

    @torch.no_grad()
    def evaluate(self, records: list[Record], draws_key: int = 10**9) -> dict:
        """Mean loss parts over ``records`` with fixed draws and no CFG dropout (held-out pairs)."""
        dropout, self.distiller.cfg_dropout = self.distiller.cfg_dropout, 0.0
        sums = torch.zeros(4, dtype=torch.float64)
        bucket = (self.resolution, self.resolution)
        for lo in range(0, len(records), self.cfg.batch_size):
            ids = list(range(lo, min(lo + self.cfg.batch_size, len(records))))
            batch = self.make_batch(bucket, [records[i] for i in ids], ids)
            if batch is None:
                continue
            _, parts = self.distiller(batch, draws_key)
            sums += torch.tensor([parts["lkd"].sum().item(), parts["fkd"].sum().item(),
                                  parts["sd"].sum().item(), len(parts["sd"])], dtype=torch.float64)
        self.distiller.cfg_dropout = dropout
        n = max(sums[3].item(), 1)
        w = self.cfg.weights
        return {"lkd": sums[0].item() / n, "fkd": sums[1].item() / n, "sd": sums[2].item() / n,
                "kd": (w.logit * sums[0].item() + w.feature * sums[1].item()) / n}
