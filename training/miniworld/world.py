"""A miniature captioned world: coloured shapes on grey, captioned in English, Chinese and Russian.

``training/miniworld/data/pairs.jsonl`` ships the caption pairs with their attributes; images are
drawn from the attributes when a demo runs. Some attribute combinations are held out of
training to measure whether an adapter learned the language mapping or an average.

One culture-specific concept, the lantern (灯笼), has only Chinese captions: its pairs are
*native* (no English twin to distil from). The English teacher has seen lantern images, but
only under the vague word "thing", which it also hears for a fifth of the other shapes; a
dictionary translation gives "lantern", a word the teacher never saw.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from adapters.file_format import atomic_write

COLORS = {"red": ("红色", (220, 40, 40)), "blue": ("蓝色", (40, 80, 220)), "green": ("绿色", (40, 170, 60)),
          "yellow": ("黄色", (235, 210, 40)), "purple": ("紫色", (140, 60, 180)), "orange": ("橙色", (245, 140, 30)),
          "white": ("白色", (250, 250, 250)), "black": ("黑色", (20, 20, 20))}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字", "diamond": "菱形"}
LANTERN = ("lantern", "灯笼")
PLACES = {"on the left": ("在左边", (0.3, 0.5)), "on the right": ("在右边", (0.7, 0.5)),
          "at the top": ("在上方", (0.5, 0.3)), "at the bottom": ("在下方", (0.5, 0.7))}
SIZES = {"small": ("小", 0.28), "big": ("大", 0.45)}
RU_COLORS = {"red": "красн", "blue": "син", "green": "зелён", "yellow": "жёлт", "purple": "фиолетов",
             "orange": "оранжев", "white": "бел", "black": "чёрн"}
"""Russian adjective stems; the ending agrees with the noun's gender (see :func:`russian`)."""
RU_SHAPES = {"circle": ("круг", "m"), "square": ("квадрат", "m"), "triangle": ("треугольник", "m"),
             "star": ("звезда", "f"), "cross": ("крест", "m"), "diamond": ("ромб", "m")}
RU_PLACES = {"on the left": "слева", "on the right": "справа", "at the top": "сверху", "at the bottom": "снизу"}
RU_SIZES = {"small": ("маленький", "маленькая"), "big": ("большой", "большая")}
ATTRIBUTES = {"color": list(COLORS), "shape": [*SHAPES, LANTERN[0]], "place": list(PLACES), "size": list(SIZES)}
PAIRS = Path(__file__).with_name("data") / "pairs.jsonl"


def russian(color: str, shape: str, place: str, size: str) -> str:
    """A Russian caption with gender agreement: "маленькая синяя звезда слева"."""
    noun, gender = RU_SHAPES[shape]
    stem, feminine = RU_COLORS[color], gender == "f"
    soft = stem == "син"
    ending = ("яя" if soft else "ая") if feminine else ("ий" if soft else "ый")
    return f"{RU_SIZES[size][feminine]} {stem}{ending} {noun} {RU_PLACES[place]}"


def all_pairs() -> list[dict]:
    """Every combination of 8 colours x 7 shapes (6 + the lantern) x 4 places x 2 sizes.

    Ordinary shapes are captioned in English, Chinese and Russian; lanterns in Chinese only
    (``native``; ``en`` is the dictionary translation, never trained on). ``teacher_en`` is what
    the English teacher was trained on. About one in ten combinations is held out."""
    pairs = []
    shapes = [*SHAPES, LANTERN[0]]
    for n, (color, shape, place, size) in enumerate(itertools.product(COLORS, shapes, PLACES, SIZES)):
        native = shape == LANTERN[0]
        zh_shape = LANTERN[1] if native else SHAPES[shape]
        en = f"a {size} {color} {shape} {place}"
        vague = native or n % 5 == 0
        pairs.append({"id": n, "en": en, "zh": f"一个{SIZES[size][0]}的{COLORS[color][0]}{zh_shape}{PLACES[place][0]}",
                      "ru": None if native else russian(color, shape, place, size),
                      "teacher_en": [f"a {size} {color} thing {place}"] if native else
                      [en] + ([f"a {size} {color} thing {place}"] if vague else []),
                      "color": color, "shape": shape, "place": place, "size": size,
                      "native": native, "held_out": n % 10 == 7})
    return pairs


def read_pairs(path: Path = PAIRS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
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
    elif pair["shape"] == "lantern":  # an oval body between two dark caps, and a tassel
        cap = (60, 40, 20)
        draw.rectangle((cx - r * 0.2, cy - r, cx + r * 0.2, cy + r), fill=cap)
        draw.ellipse((cx - r * 0.75, cy - r * 0.8, cx + r * 0.75, cy + r * 0.8), fill=fill)
        draw.rectangle((cx - r * 0.4, cy - r, cx + r * 0.4, cy - r * 0.75), fill=cap)
        draw.rectangle((cx - r * 0.4, cy + r * 0.75, cx + r * 0.4, cy + r), fill=cap)
    elif pair["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    return im


def captions(pair: dict, language: str) -> list[tuple[str, str | None, str]]:
    """(text, English twin, kind) of a pair's captions in ``language``: "en" gives what the
    teacher was trained on; "zh"/"ru" the parallel caption, or the native one for lanterns."""
    if language == "en":
        return [(text, text, "parallel") for text in pair["teacher_en"]]
    if pair[language] is None:
        return []
    if pair["native"]:
        return [(pair[language], None, "native")]
    return [(pair[language], pair["en"], "parallel")]


def write_dataset(folder: Path, pairs: list[dict], languages: tuple[str, ...] = ("zh",), size: int = 64,
                  shuffle_text_seed: int | None = None, name: str = "manifest") -> Path:
    """Render images and write a JSONL manifest with a record per caption in ``languages``;
    ``shuffle_text_seed`` mismatches texts and images (a control run)."""
    import random

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in pairs:
        image = folder / "images" / f"{pair['id']:04d}.png"
        if not image.is_file():
            atomic_write(image, lambda tmp: render(pair, size).save(tmp, format="PNG"))
        rows += [(image, *caption) for language in languages for caption in captions(pair, language)]
    texts = [row[1] for row in rows]
    if shuffle_text_seed is not None:
        random.Random(shuffle_text_seed).shuffle(texts)
    lines = [json.dumps({"image": f"images/{image.name}", "text": text, "en": en, "kind": kind}, ensure_ascii=False)
             for (image, _, en, kind), text in zip(rows, texts)]
    manifest = folder / f"{name}.jsonl"
    atomic_write(manifest, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return manifest


if __name__ == "__main__":  # regenerate the shipped pairs file
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in all_pairs())
    atomic_write(PAIRS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"wrote {PAIRS}")
