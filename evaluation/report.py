"""What the evaluator writes: results.json, results.md, a grid PNG per language, index.html."""
from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageOps

from adapters.file_format import atomic_write

from .metrics import ALL, SCORES
from .paired import ALPHA, verdict

SCORE_NAMES = {"clip_score": "CLIPScore (prompt's language)", "clip_score_judge": "CLIPScore (judge)",
               "clip_score_en": "CLIPScore (English reference)"}


def relative(path: Path, out: Path) -> str:
    return os.path.relpath(path, out).replace(os.sep, "/")


def _write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def _number(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def _interval(row: dict) -> str:
    low, high = row["interval"]
    return "—" if low is None else f"{row['mean_difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def write_json(out: Path, settings: dict, scoring: dict, summary: list[dict], compared: dict[str, list[dict]],
               fid: dict | None, records: list[dict]) -> Path:
    images = [{**r, "path": relative(r["path"], out)} for r in records]
    data = {"settings": settings, "scorers": scoring, "summary": summary, "comparisons": compared, "fid": fid,
            "images": images}
    return _write_text(out / "results.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _truncated(entry: dict | None) -> str:
    if not entry:
        return "—"
    ids = entry["truncated"]
    return f"{len(ids)} of {entry['prompts']}" + (f": {', '.join(ids)}" if ids else "")


def _scorer(entry: dict | None) -> str:
    return f"{Path(entry['path']).name} ({entry['kind']})" if entry else "—"


def scorer_lines(scoring: dict) -> list[str]:
    """The table of which CLIP scored each language and which prompts it cut short."""
    lines = ["| language | scored by | unknown tokens | truncated prompts (token limit) | judge | judge truncated "
             "| English references truncated |", "|---|---|---|---|---|---|---|"]
    for lang, s in scoring.items():
        own, judge = s["score_clip"], s["judge_clip"]
        lines.append(f"| {lang} | {_scorer(own)} | {own['unknown_rate']:.1%} | {_truncated(own)} ({own['token_limit']}) "
                     f"| {_scorer(judge)} | {_truncated(judge)} | {_truncated(s['english_clip'])} |")
    return lines


def comparison_lines(compared: dict[str, list[dict]]) -> list[str]:
    """One table per score: each method against each baseline, language by language."""
    if not any(compared.values()):
        return ["Nothing to compare: the run has no `translate` or `english` baseline beside its other methods.", ""]
    lines = []
    for score, rows in compared.items():
        lines += [f"### {SCORE_NAMES[score]}", "",
                  "| language | method | against | prompts | mean difference [95% interval] | win / tie / loss "
                  "| p (Wilcoxon) | p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|",
                  *(f"| {r['language']} | {r['method']} | {r['against']} | {r['prompts']} | {_interval(r)} "
                    f"| {r['wins']} / {r['ties']} / {r['losses']} | {r['p_value']:.3g} | {r['p_holm']:.3g} "
                    f"| {verdict(r)} |" for r in rows), ""]
    return lines


def markdown(settings: dict, scoring: dict, summary: list[dict], compared: dict[str, list[dict]],
             fid: dict | None) -> str:
    """The tables of results.md."""
    scores = [s for s in SCORES if any(r[s]["mean"] is not None for r in summary)]

    def rows(select) -> list[str]:
        return [f"| {r['method']} | {r['language']} | {r['category']} | {r['images']} | "
                + " | ".join(_number(r[s]["mean"], r[s]["std"]) for s in scores) + " |"
                for r in summary if select(r)]

    header = ["| method | language | category | images | " + " | ".join(SCORE_NAMES[s] for s in scores) + " |",
              "|---|---|---|---|" + "---|" * len(scores)]
    lines = ["# PEA evaluation", "",
             *(f"- {key}: {json.dumps(value, ensure_ascii=False)}" for key, value in settings.items()), "",
             "CLIPScore = 100 × max(cos(image, text), 0), mean ± standard deviation over the images. Each "
             "language has its own scorer: compare methods within a language, never across languages.", "",
             "## Scorers", "", *scorer_lines(scoring), "",
             "## Per method and language", "", *header, *rows(lambda r: r["category"] == ALL), "",
             "## Paired comparisons", "",
             "Per language, each prompt's score averaged over its seeds; the difference is method minus "
             "against, over the prompts. 95% interval: paired bootstrap over prompts. p: two-sided Wilcoxon "
             f"signed-rank test, Holm-corrected over the comparisons of a score. A difference counts only "
             f"where its interval excludes 0 and p (Holm) < {ALPHA}; otherwise \"not distinguishable\".", "",
             *comparison_lines(compared),
             "## Per category", "", *header, *rows(lambda r: r["category"] != ALL), ""]
    if fid:
        lines += ["## FID against the reference images", "", "| method | images | FID |", "|---|---|---|",
                  *(f"| {m} | {v['images']} | {v['fid']:.2f} |" for m, v in fid.items()), ""]
    return "\n".join(lines)


def by_language(records: list[dict]) -> dict[str, tuple[list[str], dict]]:
    """language -> (methods in order, {prompt id: {method: [records by k]}})."""
    out: dict[str, tuple[list[str], dict]] = {}
    for r in records:
        methods, prompts = out.setdefault(r["language"], ([], defaultdict(lambda: defaultdict(list))))
        if r["method"] not in methods:
            methods.append(r["method"])
        prompts[r["id"]][r["method"]].append(r)
    return out


def grid(methods: list[str], prompts: dict, size: int) -> Image.Image:
    """First image of each prompt (rows) by method (columns), labelled with ids and method names."""
    label_w, header_h = 140, 24
    sheet = Image.new("RGB", (label_w + size * len(methods), header_h + size * len(prompts)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, method in enumerate(methods):
        draw.text((label_w + col * size + 4, 6), method[: size // 6], fill="black")
    for row, (pid, cells) in enumerate(prompts.items()):
        y = header_h + row * size
        draw.text((4, y + size // 2 - 6), pid[:22], fill="black")
        for col, method in enumerate(methods):
            if cells.get(method):
                with Image.open(cells[method][0]["path"]) as im:
                    thumb = ImageOps.contain(im.convert("RGB"), (size, size))
                sheet.paste(thumb, (label_w + col * size, y))
    return sheet


def write_grids(out: Path, records: list[dict], size: int) -> list[Path]:
    paths = []
    for language, (methods, prompts) in by_language(records).items():
        path = out / f"grid_{language}.png"
        sheet = grid(methods, prompts, size)
        atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
        paths.append(path)
    return paths


def page(out: Path, settings: dict, summary: list[dict], records: list[dict], size: int) -> str:
    """A static page: the per-language tables of prompts by method, with images and scores."""
    e = html.escape
    parts = ["<!doctype html>", '<html><head><meta charset="utf-8"><title>PEA evaluation</title>',
             "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px;vertical-align:top}.prompt{max-width:320px}.score{font-size:small}</style></head><body>",
             "<h1>PEA evaluation</h1>", "<ul>",
             *(f"<li>{e(k)}: {e(json.dumps(v, ensure_ascii=False))}</li>" for k, v in settings.items()), "</ul>",
             "<table><tr><th>method</th><th>language</th><th>images</th><th>CLIPScore</th><th>CLIPScore (English)</th></tr>",
             *(f"<tr><td>{e(r['method'])}</td><td>{e(r['language'])}</td><td>{r['images']}</td>"
               f"<td>{_number(r['clip_score']['mean'], r['clip_score']['std'])}</td>"
               f"<td>{_number(r['clip_score_en']['mean'], r['clip_score_en']['std'])}</td></tr>"
               for r in summary if r["category"] == ALL), "</table>"]
    for language, (methods, prompts) in by_language(records).items():
        parts += [f"<h2>{e(language)}</h2>", f'<p><a href="{quote(f"grid_{language}.png")}">grid</a></p>',
                  "<table><tr><th>prompt</th>", *(f"<th>{e(m)}</th>" for m in methods), "</tr>"]
        for pid, cells in prompts.items():
            first = next(iter(cells.values()))[0]
            parts.append(f'<tr><td class="prompt"><b>{e(pid)}</b> ({e(first["category"])})<br>{e(first["text"])}'
                         f'<br><i>{e(first["en"])}</i></td>')
            for method in methods:
                cell = []
                for r in cells.get(method, []):
                    src = quote(relative(r["path"], out))
                    used = "" if r["conditioning_text"] in (r["text"], r["en"]) else f"<br>→ {e(r['conditioning_text'])}"
                    cell.append(f'<a href="{src}"><img src="{src}" width="{size}" alt="{e(pid)} {e(method)}"></a>'
                                f'<div class="score">{_number(r["clip_score"])} / {_number(r["clip_score_en"])}{used}</div>')
                parts.append(f"<td>{''.join(cell)}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("<p>Scores: CLIPScore against the prompt in its language / against the English reference.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: Path, settings: dict, scoring: dict, summary: list[dict], compared: dict[str, list[dict]],
                 fid: dict | None, records: list[dict], grid_size: int) -> dict[str, Path | list[Path]]:
    """Every output file; returns their paths."""
    return {"json": write_json(out, settings, scoring, summary, compared, fid, records),
            "markdown": _write_text(out / "results.md", markdown(settings, scoring, summary, compared, fid)),
            "grids": write_grids(out, records, grid_size),
            "html": _write_text(out / "index.html", page(out, settings, summary, records, grid_size))}
