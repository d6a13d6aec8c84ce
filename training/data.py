"""Training data: a JSONL manifest over an image folder, aspect-ratio buckets, a deterministic
sharded batch order, and images that fail to load skipped and counted (never fatal).

Manifest lines: ``{"image": "rel/or/abs.png", "text": "目标语言的描述", "en": "English caption",
"kind": "parallel" | "native"}``; ``en`` may be absent for native samples.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

KINDS = ("parallel", "native")
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


@dataclass(frozen=True)
class Record:
    image: Path
    text: str
    en: str | None
    native: bool


class ManifestError(ValueError):
    """A manifest line is not what the trainer expects; the message names file, line and field."""


def read_manifest(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """Parse a JSONL manifest; image paths are relative to ``image_root`` (default: its folder)."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e})") from e
        kind = item.get("kind", "parallel")
        if kind not in KINDS:
            raise ManifestError(f"{where}: field 'kind' is {kind!r}, expected one of {KINDS}")
        for field in ("image", "text"):
            if not isinstance(item.get(field), str) or not item[field]:
                raise ManifestError(f"{where}: field '{field}' must be a non-empty string")
        en = item.get("en")
        if kind == "parallel" and not isinstance(en, str):
            raise ManifestError(f"{where}: a parallel sample needs an English caption in field 'en'")
        records.append(Record(root / item["image"], item["text"], en, kind == "native"))
    if not records:
        raise ManifestError(f"{path} has no samples")
    return records


def make_buckets(resolution: int, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) pairs of about ``resolution``² pixels, multiples of ``step``."""
    buckets = set()
    w = step
    while w <= resolution * max_ratio:
        h = int(resolution * resolution / w) // step * step
        if h >= step and max(w / h, h / w) <= max_ratio:
            buckets.add((w, h))
        w += step
    buckets.add((resolution // step * step,) * 2)
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))


class SkipCounter:
    """Images that could not be read: how many, and the first few reasons."""

    def __init__(self):
        self.count = 0
        self.examples: list[str] = []

    def add(self, path: Path, error: Exception) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{path}: {error}")


def assign_buckets(records: list[Record], buckets: list[tuple[int, int]],
                   skipped: SkipCounter) -> tuple[list[Record], list[tuple[int, int]]]:
    """Read each image's size (header only); unreadable images are skipped and counted."""
    kept, sizes = [], []
    for record in records:
        try:
            with Image.open(record.image) as im:
                size = im.size
        except IMAGE_ERRORS as e:
            skipped.add(record.image, e)
            continue
        kept.append(record)
        sizes.append(nearest_bucket(*size, buckets))
    return kept, sizes


def load_image(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """Resize to cover the bucket, centre-crop: ``[H, W, 3]`` floats in [0, 1] (ComfyUI IMAGE)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = bucket
        scale = max(w / im.width, h / im.height)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)


@dataclass(frozen=True)
class BatchPosition:
    """Where in the endless, deterministic batch order a run is."""

    epoch: int
    batch: int


class BucketBatches:
    """Deterministic global batches, each from one bucket, split over ranks.

    Epoch ``e`` shuffles each bucket with ``seed + e``, cuts it into global batches of
    ``batch_size * world`` (the remainder waits for the next epoch), and shuffles the order of
    the batches. Rank ``r`` takes its slice of every global batch, so N processes at batch B
    see exactly what one process at batch N*B sees.
    """

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, world: int = 1, rank: int = 0, seed: int = 0):
        self.by_bucket: dict[tuple[int, int], list[int]] = {}
        for i, b in enumerate(buckets):
            self.by_bucket.setdefault(b, []).append(i)
        self.batch_size, self.world, self.rank, self.seed = batch_size, world, rank, seed
        if self.batches_per_epoch(0) == 0:
            raise ValueError(f"no bucket holds a full global batch of {batch_size * world} images; "
                             f"lower the batch size or add images")

    def epoch(self, epoch: int) -> list[tuple[tuple[int, int], list[int]]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        glob = self.batch_size * self.world
        batches = []
        for bucket in sorted(self.by_bucket):
            idx = list(self.by_bucket[bucket])
            rng.shuffle(idx)
            batches += [(bucket, idx[i:i + glob]) for i in range(0, len(idx) - glob + 1, glob)]
        rng.shuffle(batches)
        lo = self.rank * self.batch_size
        return [(bucket, idx[lo:lo + self.batch_size]) for bucket, idx in batches]

    def batches_per_epoch(self, epoch: int) -> int:
        glob = self.batch_size * self.world
        return sum(len(v) // glob for v in self.by_bucket.values())

    def position(self, n: int) -> BatchPosition:
        """The position of the ``n``-th batch since the start."""
        per = self.batches_per_epoch(0)
        return BatchPosition(n // per, n % per)

    def iterate(self, start: int = 0) -> Iterator[tuple[tuple[int, int], list[int]]]:
        pos = self.position(start)
        epoch, offset = pos.epoch, pos.batch
        while True:
            yield from self.epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0
