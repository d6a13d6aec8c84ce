"""The training loop: batches prefetched on a worker thread, distillation steps behind the
non-finite guard, the optimiser, checkpoints, logs, previews."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from adapters import save_adapter
from training.data.batches import Prefetcher, Prepared
from training.data.sampling import ShardBatches
from training.step.distill import Batch
from training.runs.loss_window import SUMS, LossWindow, loss_sums, non_finite
from training.step.guard import NonFiniteError, check_weights_finite, gradients_finite
from training.runs.previews import render_previews
from training.runs.previous import check_later_checkpoints, release_run_folder
from training.runs.files import RunLog, plot_losses
from training.runs.records import RunRecords
from training.setup import RunSetup

log = logging.getLogger(__name__)


class Trainer(RunRecords, RunSetup):
    """Distils a PEA adapter from ``parts`` (a loaded checkpoint) behind ``encoder``: built by
    :class:`training.setup.RunSetup`, recorded by :class:`training.runs.records.RunRecords`,
    stepped here."""

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
        Raises NonFiniteError (after writing the summary) when the guard stops the run. The run
        folder's lock is released at the end, whatever happens."""
        try:
            return self._run()
        finally:
            if self.dist.main:
                release_run_folder(self.cfg.output)

    def _run(self) -> Path:
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

    def preview(self, dest: Path) -> Path | None:
        if not self.cfg.preview_prompts:
            return None
        size = (self.resolution, self.resolution)
        return render_previews(self.parts, self.encoder, self.adapter, self.cfg.preview_prompts, size, dest,
                               steps=self.cfg.preview_steps, seed=self.cfg.seed)
