"""A run's records: the adapter's metadata, checkpoints (written, pruned, restored) and the
summary; rank 0 writes."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from adapters import AdapterInfo, EncoderSpec
from training.runs.files import find_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint, set_rng_state, write_summary
from training.step.guard import check_weights_finite


class RunRecords:
    """What :class:`training.loop.Trainer` records of its run (the attributes are the trainer's)."""

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

    def write_summary(self, adapter: Path | None, **extra) -> None:
        write_summary(self.cfg.output / "summary.json", {
            "adapter": str(adapter) if adapter else None, "steps": self.step, "skipped_steps": self.guard.skipped,
            "skipped_images": self.skipped.count, "skipped": self.skipped.reasons, "captions": self.captions.summary(),
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None, **extra})
