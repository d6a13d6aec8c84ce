"""``grid_<lang>.png``: the first image of each prompt (rows) by method (columns), the prompt's id,
category, text and English reference (grey) beside each row, that image's scores under each cell, a legend above."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from adapters.file_format import atomic_write

from .fonts import load_font
from .metrics import SCORES
from .tables import SHORT, number

LABEL_WIDTH = 300
FONT_SIZE = 13
LINE = FONT_SIZE + 4
PAD = 4


def by_language(records: list[dict]) -> dict[str, tuple[list[str], dict]]:
    """language -> (methods in order, {prompt id: {method: [records by k]}})."""
    out: dict[str, tuple[list[str], dict]] = {}
    for r in records:
        methods, prompts = out.setdefault(r["language"], ([], defaultdict(lambda: defaultdict(list))))
        if r["method"] not in methods:
            methods.append(r["method"])
        prompts[r["id"]][r["method"]].append(r)
    return out


def wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken into lines at most ``width`` pixels wide: at spaces where there are any,
    else (Chinese, Japanese) between characters."""
    lines, line = [], ""
    for word in text.replace("\n", " ").split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if font.getlength(line + char) > width and line:
                lines.append(line)
                line = ""
            line += char
    return lines + ([line] if line else [])


def score_lines(record: dict, scores: list[str]) -> list[str]:
    """The labelled scores of one image, "BLANK" first where its pixels are near-constant."""
    return (["BLANK"] if record.get("blank") else []) + [f"{SHORT[s]} {number(record[s])}" for s in scores]


def grid(methods: list[str], prompts: dict, size: int, legend: list[str], scores: list[str]) -> Image.Image:
    """The sheet of one language (see the module's docstring)."""
    font = load_font(FONT_SIZE)
    cell_h = size + LINE * (len(scores) + 1) + PAD
    header_h = max(len(legend), 1) * LINE + LINE + 2 * PAD
    sheet = Image.new("RGB", (LABEL_WIDTH + size * len(methods), header_h + cell_h * len(prompts)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(legend):
        draw.text((PAD, PAD + i * LINE), line, font=font, fill="black")
    for col, method in enumerate(methods):
        name = wrap(method, font, size - 2 * PAD)[0]
        draw.text((LABEL_WIDTH + col * size + PAD, header_h - LINE - PAD), name, font=font, fill="black")
    for row, (pid, cells) in enumerate(prompts.items()):
        y = header_h + row * cell_h
        draw.line((0, y, sheet.width, y), fill="#cccccc")
        first = next(iter(cells.values()))[0]
        text = wrap(first["text"], font, LABEL_WIDTH - 2 * PAD)
        lines = [(f"{pid} ({first['category']})", "#555555"), *((line, "black") for line in text),
                 *((line, "#555555") for line in wrap(first["en"], font, LABEL_WIDTH - 2 * PAD))]
        for i, (line, colour) in enumerate(lines[: cell_h // LINE - 1]):
            draw.text((PAD, y + PAD + i * LINE), line, font=font, fill=colour)
        for col, method in enumerate(methods):
            if not cells.get(method):
                continue
            record = cells[method][0]
            with Image.open(record["path"]) as im:
                sheet.paste(ImageOps.contain(im.convert("RGB"), (size, size)), (LABEL_WIDTH + col * size, y + 1))
            for i, line in enumerate(score_lines(record, scores)):
                draw.text((LABEL_WIDTH + col * size + PAD, y + size + 2 + i * LINE), line, font=font,
                          fill="#b00000" if record.get("blank") else "black")
    return sheet


def write_grids(out: Path, records: list[dict], size: int, legends: dict[str, list[str]]) -> list[Path]:
    """One grid a language; ``legends``: the lines written above each language's grid."""
    scores = [s for s in SCORES if any(r.get(s) is not None for r in records)]
    paths = []
    for language, (methods, prompts) in by_language(records).items():
        path = out / f"grid_{language}.png"
        sheet = grid(methods, prompts, size, legends.get(language, []), scores)
        atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
        paths.append(path)
    return paths
