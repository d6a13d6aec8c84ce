"""From sampled records to the step's ``Batch``, prepared ahead of the loop.

``BatchMaker.prepare`` runs on a worker thread (``Prefetcher``): cached latents and teacher
encodings are read and the other images decoded there, while the loop trains on the previous
batch. ``BatchMaker.finish`` runs on the main thread: what is not cached goes through ComfyUI's
VAE and CLIP (whose model management is not thread-safe), and the batch moves to the device.
Images that fail to load are skipped and counted once, when their batch is used, and not
tried again.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from training.data.caches import LatentCache, TeacherText, stack_conditioning
from training.data.sampling import Record, SkipCounter, load_image
from training.step.distill import Batch
from training.data.images import IMAGE_ERRORS


@dataclass
class Prepared:
    """A batch as far as the worker thread takes it: per kept record, a cached latent or the
    decoded pixels, and the cached teacher encoding or None."""

    bucket: tuple[int, int]
    records: list[Record]
    sample_ids: list[int]
    latents: list[torch.Tensor | None]
    pixels: list[torch.Tensor | None]
    teacher: list[dict | None]
    failed: list[tuple[Record, Exception]]


def teacher_caption(record: Record) -> str:
    """The English caption the teacher reads: a parallel sample's twin; none for a native one."""
    return record.en if (record.en and not record.native) else ""


class BatchMaker:
    def __init__(self, latents: LatentCache, teacher: TeacherText, tokenize, skipped: SkipCounter, device):
        self.latents, self.teacher, self.tokenize = latents, teacher, tokenize
        self.skipped, self.device = skipped, device

    def prepare(self, bucket: tuple[int, int], records: list[Record], sample_ids: list[int]) -> Prepared:
        """Cache reads and image decoding (no ComfyUI model runs): safe on a worker thread."""
        out = Prepared(bucket, [], [], [], [], [], [])
        for record, sid in zip(records, sample_ids):
            if record in self.skipped:
                continue
            latent, pixels = self.latents.lookup(record, bucket), None
            if latent is None:
                try:
                    pixels = load_image(record, bucket)
                except IMAGE_ERRORS as e:
                    out.failed.append((record, e))
                    continue
            out.records.append(record)
            out.sample_ids.append(sid)
            out.latents.append(latent)
            out.pixels.append(pixels)
            out.teacher.append(self.teacher.lookup(teacher_caption(record)))
        return out

    def finish(self, prepared: Prepared) -> Batch | None:
        """Encode what was not cached, stack, move to the device; None when no image loaded."""
        for record, error in prepared.failed:
            self.skipped.add(record, error)
        recs = prepared.records
        if not recs:
            return None
        latents = [z if z is not None else self.latents.encode(r, prepared.bucket, px)
                   for r, z, px in zip(recs, prepared.latents, prepared.pixels)]
        teacher = [t if t is not None else self.teacher.encode(teacher_caption(r))
                   for r, t in zip(recs, prepared.teacher)]
        tokens, pooled = stack_conditioning(teacher)
        return Batch(
            latents=torch.stack(latents).to(self.device), teacher_tokens=tokens.to(self.device),
            teacher_pooled=None if pooled is None else pooled.to(self.device),
            ids=self.tokenize([r.text for r in recs]).to(self.device),
            kd_mask=torch.tensor([0.0 if r.native else 1.0 for r in recs], device=self.device),
            pixel_size=prepared.bucket, sample_ids=prepared.sample_ids)

    def __call__(self, bucket: tuple[int, int], records: list[Record], sample_ids: list[int]) -> Batch | None:
        """Prepare and finish in one go (evaluation, tests)."""
        return self.finish(self.prepare(bucket, records, sample_ids))


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """``prepare(*item)`` for each item of ``items`` on a worker thread, up to ``depth`` ahead,
    handed out in order; an error on the worker is raised where the item is taken."""

    def __init__(self, items: Iterator[tuple], prepare: Callable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(items, prepare), name="pea-batch-prefetch",
                                        daemon=True)
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, items: Iterator[tuple], prepare: Callable) -> None:
        try:
            for item in items:
                if not self._put(prepare(*item)):
                    return
            self._put(_Failed(StopIteration()))
        except BaseException as e:  # handed to the main thread
            self._put(_Failed(e))

    def __iter__(self):
        return self

    def __next__(self):
        value = self._queue.get()
        if isinstance(value, _Failed):
            raise value.error
        return value

    def close(self) -> None:
        """Stop the worker (it finishes the item in hand) and wait for it."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
