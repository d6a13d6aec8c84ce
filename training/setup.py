"""Setting a run up before its first step: the run folder prepared, the base model loaded on the
device, the adapter (new or ``--init-adapter``), the caches and the batch maker, the
distillation step, the batch order, the optimiser and its schedule."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from adapters import LanguageEncoder, PEAAdapter, check_pairing, load_adapter
from adapters.families import Family
from adapters.pairing import check_base_model
from training.base_checkpoint import BaseParts, new_adapter, trainable_family
from training.config import TrainConfig
from training.data.batches import BatchMaker
from training.data.caches import LatentCache, TeacherText
from training.data.captions import CaptionWindow
from training.data.sampling import ManifestBatches, ManifestError, Record, ShardBatches, SkipCounter, assign_buckets, make_buckets
from training.distributed import DistInfo
from training.runs.previous import prepare_run_folder
from training.step.distill import Distiller
from training.step.guard import StepGuard

log = logging.getLogger(__name__)


def warmup_schedule(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


class RunSetup:
    """Everything a run trains with, built from its settings; :class:`training.loop.Trainer` runs it."""

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
        self.distiller = Distiller(self.base, self.encoder, self.trained, empty_ids=encoder.tokenize([""]),
                                   empty_teacher=(empty["tokens"], empty.get("pooled")), config=cfg.step_config())
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
