"""Training data: a JSONL manifest over an image folder, aspect-ratio buckets, a deterministic
sharded batch order, and images that fail to load skipped and counted (never fatal).

Manifest lines: ``{"image": "rel/or/abs.png", "text": "目标语言的描述", "en": "English caption",
"kind": "parallel" | "native"}``; ``en`` may be absent for native samples.
"""
from __future__ import annotations

import io
import json
import math
import random
import threading
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
    """The image file, or for shard samples a unique key (shard + sample key)."""
    text: str
    en: str | None
    native: bool
    data: bytes | None = None
    """Encoded image bytes, for samples streamed from tar shards."""

    def open_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data)) if self.data is not None else Image.open(self.image)


class ManifestError(ValueError):
    """A manifest line is not what the trainer expects; the message names file, line and field."""


def caption_fields(item: dict, where: str) -> tuple[str, str | None, bool]:
    """(text, en, native) of one sample's metadata; raises ManifestError naming the field."""
    kind = item.get("kind", "parallel")
    if kind not in KINDS:
        raise ManifestError(f"{where}: field 'kind' is {kind!r}, expected one of {KINDS}")
    if not isinstance(item.get("text"), str) or not item["text"]:
        raise ManifestError(f"{where}: field 'text' must be a non-empty string")
    en = item.get("en")
    if kind == "parallel" and not isinstance(en, str):
        raise ManifestError(f"{where}: a parallel sample needs an English caption in field 'en'")
    return item["text"], en, kind == "native"


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
        if not isinstance(item.get("image"), str) or not item["image"]:
            raise ManifestError(f"{where}: field 'image' must be a non-empty string")
        text, en, native = caption_fields(item, where)
        records.append(Record(root / item["image"], text, en, native))
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
    """Images that could not be read: how many, and the first few reasons (thread-safe: the
    batch-prefetch thread counts too)."""

    def __init__(self):
        self.count = 0
        self.examples: list[str] = []
        self._lock = threading.Lock()

    def add(self, path: Path, error: Exception) -> None:
        with self._lock:
            self.count += 1
            if len(self.examples) < 5:
                self.examples.append(f"{path}: {error}")


def assign_buckets(records: list[Record], buckets: list[tuple[int, int]],
                   skipped: SkipCounter) -> tuple[list[Record], list[tuple[int, int]]]:
    """Read each image's size (header only); unreadable images are skipped and counted."""
    kept, sizes = [], []
    for record in records:
        try:
            with record.open_image() as im:
                size = im.size
        except IMAGE_ERRORS as e:
            skipped.add(record.image, e)
            continue
        kept.append(record)
        sizes.append(nearest_bucket(*size, buckets))
    return kept, sizes


def load_image(source: Path | Record, bucket: tuple[int, int]) -> torch.Tensor:
    """Resize to cover the bucket, centre-crop: ``[H, W, 3]`` floats in [0, 1] (ComfyUI IMAGE)."""
    with (source.open_image() if isinstance(source, Record) else Image.open(source)) as im:
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
        if self.batches_per_epoch() == 0:
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

    def batches_per_epoch(self) -> int:
        glob = self.batch_size * self.world
        return sum(len(v) // glob for v in self.by_bucket.values())

    def position(self, n: int) -> BatchPosition:
        """The position of the ``n``-th batch since the start."""
        per = self.batches_per_epoch()
        return BatchPosition(n // per, n % per)

    def iterate(self, start: int = 0) -> Iterator[tuple[tuple[int, int], list[int]]]:
        pos = self.position(start)
        epoch, offset = pos.epoch, pos.batch
        while True:
            yield from self.epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0


class ManifestBatches:
    """Batches of a manifest's records: (bucket, records, sample ids)."""

    def __init__(self, records: list[Record], buckets: list[tuple[int, int]], batch_size: int,
                 world: int = 1, rank: int = 0, seed: int = 0):
        self.records = records
        self.order = BucketBatches(buckets, batch_size, world, rank, seed)

    def iterate(self, start: int = 0) -> Iterator[tuple[tuple[int, int], list[Record], list[int]]]:
        for bucket, idx in self.order.iterate(start):
            yield bucket, [self.records[i] for i in idx], idx

    def position(self, n: int) -> dict:
        pos = self.order.position(n)
        return {"epoch": pos.epoch, "batch": pos.batch}


class ShardBatches:
    """Batches streamed from webdataset tar shards (``NAME.jpg|png|webp`` + ``NAME.json`` with
    text, en, kind), bucketed on the fly; each rank reads its own shards. Unreadable samples are
    skipped and counted. Resuming replays the stream up to the saved batch."""

    IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, urls: list[str], buckets: list[tuple[int, int]], batch_size: int, skipped: "SkipCounter",
                 world: int = 1, rank: int = 0):
        if len(urls) < world:
            raise ValueError(f"{len(urls)} shards cannot be split over {world} processes")
        self.urls, self.buckets, self.batch_size, self.skipped = urls[rank::world], buckets, batch_size, skipped
        self.rank, self.world = rank, world

    def samples(self) -> Iterator[Record]:
        try:
            import webdataset as wds
        except ImportError as e:
            raise RuntimeError("tar shards need the webdataset package: pip install webdataset") from e
        while True:
            for sample in wds.WebDataset(self.urls, shardshuffle=False, empty_check=False):
                where = f"{sample.get('__url__', '?')}:{sample['__key__']}"
                image = next((sample[k] for k in self.IMAGE_KEYS if k in sample), None)
                try:
                    text, en, native = caption_fields(json.loads(sample.get("json", b"{}")), where)
                except (ManifestError, json.JSONDecodeError) as e:
                    self.skipped.add(Path(where), e)
                    continue
                if image is None:
                    self.skipped.add(Path(where), ValueError("no image in the sample"))
                    continue
                yield Record(Path(where), text, en, native, data=image)

    def iterate(self, start: int = 0) -> Iterator[tuple[tuple[int, int], list[Record], list[int]]]:
        buffers: dict[tuple[int, int], list[Record]] = {}
        emitted, counter = 0, 0
        for record in self.samples():
            try:
                with record.open_image() as im:
                    bucket = nearest_bucket(*im.size, self.buckets)
            except IMAGE_ERRORS as e:
                self.skipped.add(record.image, e)
                continue
            counter += 1
            buffers.setdefault(bucket, []).append(record)
            if len(buffers[bucket]) == self.batch_size:
                batch, buffers[bucket] = buffers[bucket], []
                emitted += 1
                if emitted > start:
                    first = (counter - self.batch_size) * self.world + self.rank
                    yield bucket, batch, list(range(first, first + self.batch_size))

    def position(self, n: int) -> dict:
        return {"batches": n}
