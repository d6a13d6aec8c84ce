"""Training data: a JSONL manifest over an image folder, aspect-ratio buckets, a deterministic
sharded batch order, and images that fail to load skipped and counted once each (never fatal).

Manifest lines: ``{"image": "rel/or/abs.png", "text": "目标语言的描述", "en": "English caption",
"kind": "parallel" | "native"}``; ``en`` may be absent for native samples. Every fault of a
manifest is reported at once, by file and line, before anything is trained.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from adapters.errors import PEAError

from training.data.captions import CaptionWindow
from training.data.images import IMAGE_ERRORS, check_size, decode_image

KINDS = ("parallel", "native")
MAX_LISTED_FAULTS = 20


@dataclass(frozen=True)
class Record:
    image: Path
    """The image file, or for shard samples a unique key (shard + sample key)."""
    text: str
    en: str | None
    native: bool
    data: bytes | None = None
    """Encoded image bytes, for samples streamed from tar shards."""
    where: str = ""
    """Where the sample is described: ``manifest:line`` or ``shard:key``."""

    @property
    def key(self) -> str:
        """Names the image once, whichever epoch or batch it turns up in."""
        return str(self.image)

    def open_image(self) -> Image.Image:
        """The image opened lazily: its header is read, its pixels are not."""
        return Image.open(io.BytesIO(self.data)) if self.data is not None else Image.open(self.image)

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else self.image.read_bytes()


class ManifestError(PEAError):
    """A manifest is not what the trainer expects; the message names file, line and field."""


class BatchingError(PEAError):
    """The data cannot fill the batches asked for (too few images in a bucket, too few shards)."""


def is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def caption_faults(item: object) -> list[str]:
    """What is wrong with one sample's metadata (kind, text, en), in words; [] when nothing."""
    if not isinstance(item, dict):
        return [f"a JSON {type(item).__name__} where an object {{\"image\", \"text\", \"en\", \"kind\"}} is expected"]
    faults = []
    kind = item.get("kind", "parallel")
    if kind not in KINDS:
        faults.append(f"field 'kind' is {kind!r}, expected one of {KINDS}")
    if not is_text(item.get("text")):
        faults.append("field 'text' must be a non-empty string")
    en = item.get("en")
    if kind == "parallel" and not is_text(en):
        faults.append("a parallel sample needs an English caption in field 'en'")
    elif en is not None and not isinstance(en, str):
        faults.append(f"field 'en' must be a string, not {type(en).__name__}")
    return faults


def caption_fields(item: object, where: str) -> tuple[str, str | None, bool]:
    """(text, en, native) of one sample's metadata; raises ManifestError naming the fields."""
    faults = caption_faults(item)
    if faults:
        raise ManifestError(f"{where}: {'; '.join(faults)}")
    return item["text"], item.get("en"), item.get("kind", "parallel") == "native"


def manifest_faults_message(path: Path, faults: list[str]) -> str:
    listed = faults[:MAX_LISTED_FAULTS]
    more = f"\n  ... and {len(faults) - len(listed)} more" if len(faults) > len(listed) else ""
    lines = f"{len(faults)} faulty line{'s' * (len(faults) > 1)}"
    return f"{path}: {lines}, nothing was trained; fix them and start again:\n  " + "\n  ".join(listed) + more


def read_manifest(path: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """Parse a JSONL manifest; image paths are relative to ``image_root`` (default: its folder).
    Raises ManifestError listing every faulty line (up to ``MAX_LISTED_FAULTS``) by file:line."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    records, faults = [], []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ManifestError(f"cannot read the manifest {path}: {e.strerror or e}") from e
    with f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                faults.append(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                faults.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            line_faults = caption_faults(item)
            if isinstance(item, dict) and not is_text(item.get("image")):
                line_faults.insert(0, "field 'image' must be a non-empty string (a path)")
            if line_faults:
                faults.append(f"{where}: {'; '.join(line_faults)}")
                continue
            records.append(Record(root / item["image"], item["text"], item.get("en"), item.get("kind") == "native",
                                  where=where))
    if faults:
        raise ManifestError(manifest_faults_message(path, faults))
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
    """Images that could not be used, each counted once (whichever epoch or rank met it), with the
    reason. ``reasons`` maps the image to why it was skipped; it is kept in checkpoints."""

    def __init__(self):
        self.reasons: dict[str, str] = {}
        self._lock = threading.Lock()  # the batch-prefetch thread counts too

    @property
    def count(self) -> int:
        return len(self.reasons)

    def __contains__(self, record: Record) -> bool:
        return record.key in self.reasons

    def add(self, item: Record | str, error: Exception | str) -> None:
        """Count ``item`` (a record, or a shard sample's name) once, with ``error`` as the reason."""
        key = item if isinstance(item, str) else item.key
        where = item.where if isinstance(item, Record) and item.where != key else ""
        with self._lock:
            self.reasons.setdefault(key, f"{error} ({where})" if where else str(error))

    def merge(self, others: list[dict[str, str]]) -> None:
        """Take in the images other processes skipped."""
        with self._lock:
            for reasons in others:
                for key, reason in reasons.items():
                    self.reasons.setdefault(key, reason)

    def examples(self, n: int = 5) -> list[str]:
        return [f"{key}: {reason}" for key, reason in itertools.islice(self.reasons.items(), n)]


def assign_buckets(records: list[Record], buckets: list[tuple[int, int]],
                   skipped: SkipCounter) -> tuple[list[Record], list[tuple[int, int]]]:
    """Read each image's size from its header (missing, unreadable and extreme images are skipped
    and counted); nothing is decoded here."""
    kept, sizes = [], []
    for record in records:
        try:
            with record.open_image() as im:
                size = check_size(im)
        except FileNotFoundError:
            skipped.add(record, "file not found")
            continue
        except IMAGE_ERRORS as e:
            skipped.add(record, e)
            continue
        kept.append(record)
        sizes.append(nearest_bucket(*size, buckets))
    return kept, sizes


def load_image(source: Path | Record, bucket: tuple[int, int]) -> torch.Tensor:
    """Decode in full (strictly), resize to cover the bucket, centre-crop: ``[H, W, 3]`` floats in
    [0, 1] (ComfyUI IMAGE); SDXL's size ids say "bucket size, crop 0,0" (``distill.sdxl_label``).
    Raises one of ``IMAGE_ERRORS`` for an unusable image."""
    im = decode_image(source.read_bytes())
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
            raise BatchingError(f"no bucket holds a full global batch of {batch_size * world} images; "
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
    """Batches of a manifest's records: (bucket, records, sample ids). A sample's id is its
    record's index: the ranks' slices of a global batch hold different records, so no two ranks
    share an id within a step (the draws are keyed by step too), and a resume gives the same ids."""

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
    text, en, kind), bucketed on the fly; each rank reads its own shards. Unusable samples are
    skipped and counted once; captions are measured against the encoder's window on the first
    pass. Resuming replays the stream up to the saved batch.

    Sample ids (the key of each sample's timestep, noise and CFG-dropout draws, ``distill``): the
    n-th usable sample of rank r's stream is ``n * world + r``, unique across ranks and over every
    pass, and the same after a resume."""

    IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, urls: list[str], buckets: list[tuple[int, int]], batch_size: int, skipped: SkipCounter,
                 world: int = 1, rank: int = 0, captions: CaptionWindow | None = None):
        if len(urls) < world:
            raise BatchingError(f"{len(urls)} shards cannot be split over {world} processes")
        self.urls, self.buckets, self.batch_size, self.skipped = urls[rank::world], buckets, batch_size, skipped
        self.rank, self.world, self.captions = rank, world, captions

    def samples(self) -> Iterator[tuple[int, Record]]:
        """(pass over the shards, sample), endlessly."""
        try:
            import webdataset as wds
        except ImportError as e:
            raise RuntimeError("tar shards need the webdataset package: pip install webdataset") from e
        for epoch in itertools.count():
            for sample in wds.WebDataset(self.urls, shardshuffle=False, empty_check=False):
                where = f"{sample.get('__url__', '?')}:{sample['__key__']}"
                image = next((sample[k] for k in self.IMAGE_KEYS if k in sample), None)
                try:
                    text, en, native = caption_fields(json.loads(sample.get("json", b"{}")), where)
                except (ValueError, ManifestError) as e:  # bad JSON, not UTF-8, missing fields
                    self.skipped.add(where, e)
                    continue
                if image is None:
                    self.skipped.add(where, f"no image ({'|'.join(self.IMAGE_KEYS)}) in the sample")
                    continue
                yield epoch, Record(Path(where), text, en, native, data=image, where=where)

    def iterate(self, start: int = 0) -> Iterator[tuple[tuple[int, int], list[Record], list[int]]]:
        buffers: dict[tuple[int, int], list[tuple[Record, int]]] = {}
        emitted, position = 0, 0
        for epoch, record in self.samples():
            try:
                with record.open_image() as im:
                    bucket = nearest_bucket(*check_size(im), self.buckets)
            except IMAGE_ERRORS as e:
                self.skipped.add(record, e)
                continue
            if epoch == 0 and self.captions is not None:
                self.captions.measure([record])
            buffers.setdefault(bucket, []).append((record, position * self.world + self.rank))
            position += 1
            if len(buffers[bucket]) == self.batch_size:
                batch, buffers[bucket] = buffers[bucket], []
                emitted += 1
                if emitted > start:
                    yield bucket, [r for r, _ in batch], [sid for _, sid in batch]

    def position(self, n: int) -> dict:
        return {"batches": n}
