"""A miniature captioned world for the demo: coloured shapes, captioned in English and Chinese.

``training/demo_data/pairs.jsonl`` ships the caption pairs with their attributes; images are
drawn from the attributes when a demo runs. Some attribute combinations are held out of
training to measure whether an adapter learned the language mapping or an average.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": ("红色", (220, 40, 40)), "blue": ("蓝色", (40, 80, 220)), "green": ("绿色", (40, 170, 60)),
          "yellow": ("黄色", (235, 210, 40)), "purple": ("紫色", (140, 60, 180)), "orange": ("橙色", (245, 140, 30)),
          "white": ("白色", (250, 250, 250)), "black": ("黑色", (20, 20, 20))}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字", "diamond": "菱形"}
PLACES = {"on the left": ("在左边", (0.3, 0.5)), "on the right": ("在右边", (0.7, 0.5)),
          "at the top": ("在上方", (0.5, 0.3)), "at the bottom": ("在下方", (0.5, 0.7))}
SIZES = {"small": ("小", 0.28), "big": ("大", 0.45)}
PAIRS = Path(__file__).with_name("demo_data") / "pairs.jsonl"


def all_pairs() -> list[dict]:
    """Every combination, captioned in both languages: 8 colours x 6 shapes x 4 places x 2 sizes."""
    pairs = []
    for n, (color, shape, place, size) in enumerate(itertools.product(COLORS, SHAPES, PLACES, SIZES)):
        zh = f"一个{SIZES[size][0]}的{COLORS[color][0]}{SHAPES[shape]}{PLACES[place][0]}"
        pairs.append({"id": n, "en": f"a {size} {color} {shape} {place}", "zh": zh,
                      "color": color, "shape": shape, "place": place, "size": size,
                      "held_out": n % 10 == 7})
    return pairs


def read_pairs(path: Path = PAIRS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    import math

    if shape == "triangle":
        return [(cx, cy - r), (cx - r * 0.87, cy + r / 2), (cx + r * 0.87, cy + r / 2)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r / 2.5) * math.sin(k * math.pi / 5),
                 cy - (r if k % 2 == 0 else r / 2.5) * math.cos(k * math.pi / 5)) for k in range(10)]
    if shape == "cross":
        w = r / 3
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return None


def render(pair: dict, size: int = 64) -> Image.Image:
    """Draw one pair's shape on a plain grey background."""
    im = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    fill = COLORS[pair["color"]][1]
    cx, cy = (v * size for v in PLACES[pair["place"]][1])
    r = SIZES[pair["size"]][1] * size
    points = _polygon(pair["shape"], cx, cy, r)
    if points:
        draw.polygon(points, fill=fill)
    elif pair["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    return im


def write_dataset(folder: Path, pairs: list[dict], size: int = 64, shuffle_text_seed: int | None = None) -> Path:
    """Render images and write a manifest; ``shuffle_text_seed`` mismatches texts (control run)."""
    import random

    folder.mkdir(parents=True, exist_ok=True)
    texts = [p["zh"] for p in pairs]
    if shuffle_text_seed is not None:
        random.Random(shuffle_text_seed).shuffle(texts)
    lines = []
    for pair, text in zip(pairs, texts):
        image = folder / "images" / f"{pair['id']:04d}.png"
        if not image.is_file():
            image.parent.mkdir(exist_ok=True)
            render(pair, size).save(image)
        lines.append(json.dumps({"image": f"images/{image.name}", "text": text, "en": pair["en"]}, ensure_ascii=False))
    manifest = folder / ("manifest.jsonl" if shuffle_text_seed is None else "manifest_shuffled.jsonl")
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


if __name__ == "__main__":  # regenerate the shipped pairs file
    PAIRS.parent.mkdir(exist_ok=True)
    PAIRS.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in all_pairs()), encoding="utf-8")
    print(f"wrote {PAIRS}")
