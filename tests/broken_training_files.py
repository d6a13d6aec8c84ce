"""Training files damaged the way disks, downloads, scrapers and power cuts damage them."""
from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """Smooth gradients plus fine noise: compresses like a photograph (dense entropy-coded data)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 255, y / height * 255, 128 + 60 * np.sin(x / 9) * np.cos(y / 13)], -1)
    pixels += rng.normal(0, 18, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def corrupt_middle(data: bytes, length: int = 4096, seed: int | None = None) -> bytes:
    """``data`` with ``length`` bytes in its middle overwritten (header and end intact): zeros, as
    a disk block never written before a power cut reads back, or random bytes from ``seed``."""
    fill = bytes(length) if seed is None else bytes(random.Random(seed).randrange(256) for _ in range(length))
    middle = len(data) // 2
    return data[:middle] + fill + data[middle + length:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels and whose pixel data is empty."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


INTERRUPTED_WRITES = """
import os, sys, threading
from pathlib import Path
from adapters.file_format import atomic_write
written = threading.Semaphore(0)
def write(tmp):
    Path(tmp).write_bytes(b"half")
    written.release()
    threading.Event().wait()
for target in sys.argv[1:]:
    threading.Thread(target=atomic_write, args=(Path(target), write), daemon=True).start()
for _ in sys.argv[1:]:
    written.acquire()
os._exit(9)
"""


def interrupted_writes(*paths: Path) -> None:
    """Leave the temp files of ``atomic_write`` calls killed mid-write (a real process, really cut)."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_WRITES, *map(str, paths)], cwd=root, timeout=120)
    assert result.returncode == 9 and not any(p.exists() for p in paths)
