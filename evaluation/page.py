"""``index.html``: a static page that works offline (from file://, no external assets): the
settings, the scorers, per language the methods table, the category pivot and every prompt with
its thumbnails (lazy-loaded, the full image on click), labelled scores, the per-prompt winner and
each method's difference from the reference, sortable; filters by language and category."""
from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .grid import by_language
from .tables import SHORT, Table, language_name, number, reference_method

STYLE = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top}th[data-sort]{cursor:pointer;text-decoration:underline}
.prompt{max-width:320px}.score{font-size:small}.blank{color:#b00000;font-weight:bold}
.blank img{outline:3px solid #b00000}#filters{position:sticky;top:0;background:#fff;padding:.5em 0}"""

SCRIPT = """const lang=document.getElementById('lang'),cat=document.getElementById('cat');
function applyFilters(){
 document.querySelectorAll('section[data-lang]').forEach(s=>{s.hidden=!!lang.value&&s.dataset.lang!==lang.value});
 document.querySelectorAll('tr[data-cat]').forEach(r=>{r.hidden=!!cat.value&&r.dataset.cat!==cat.value});}
lang.addEventListener('change',applyFilters);cat.addEventListener('change',applyFilters);
document.querySelectorAll('th[data-sort]').forEach(th=>th.addEventListener('click',()=>{
 const body=th.closest('table').tBodies[0],i=th.cellIndex,dir=th.dataset.dir==='desc'?'asc':'desc';th.dataset.dir=dir;
 const value=r=>parseFloat(r.cells[i].dataset.value);
 [...body.rows].sort((a,b)=>{const x=value(a),y=value(b);if(isNaN(x))return 1;if(isNaN(y))return -1;
  return dir==='asc'?x-y:y-x}).forEach(r=>body.appendChild(r));}));"""

e = html.escape


def link(path: Path, out: Path) -> str:
    return quote(os.path.relpath(path, out).replace(os.sep, "/"))


def table_html(table: Table, attrs: list[str] | None = None) -> str:
    """``table`` as HTML; ``attrs``: extra attributes of each body row."""
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    body = "".join(f"<tr{attrs[i] if attrs else ''}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(table.rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def prompt_means(cells: dict[str, list[dict]]) -> dict[str, float]:
    """method -> the mean own-scorer CLIPScore of its images of one prompt, blank images left out
    (a method whose images are all blank is not ranked)."""
    return {m: float(np.mean(scores)) for m, rs in cells.items()
            if (scores := [r["clip_score"] for r in rs if not r["blank"]])}


def _image_cell(records: list[dict], out: Path, size: int, scores: list[str]) -> str:
    parts = []
    for r in records:
        labelled = " · ".join(f"{SHORT[s]} {number(r[s])}" for s in scores)
        used = "" if r["conditioning_text"] in (r["text"], r["en"]) else f"<br>→ {e(r['conditioning_text'])}"
        flag = '<span class="blank">blank</span> ' if r["blank"] else ""
        parts.append(f'<div class="{"blank" if r["blank"] else "image"}"><a href="{link(Path(r["path"]), out)}">'
                     f'<img loading="lazy" src="{link(r["thumb"], out)}" width="{size}" '
                     f'alt="{e(r["id"])} {e(r["method"])} seed {r["seed"]}"></a>'
                     f'<div class="score">{flag}{labelled}{used}</div></div>')
    return "".join(parts)


def prompts_table(methods: list[str], prompts: dict, out: Path, size: int, scores: list[str]) -> str:
    """Every prompt of a language: its images by method, the winner by the own scorer (blank
    images left out) and each method's difference from the reference method, sortable."""
    reference = reference_method(methods)
    others = [m for m in methods if m != reference] if reference else []
    head = ["<th>prompt</th>", *(f"<th>{e(m)}</th>" for m in methods), '<th data-sort="winner">winner (own)</th>',
            *(f'<th data-sort="diff">{e(m)} − {e(reference)}</th>' for m in others)]
    rows = []
    for pid, cells in prompts.items():
        first = next(iter(cells.values()))[0]
        means = prompt_means(cells)
        winner = max(means, key=means.get) if means else None
        lead = sorted(means.values(), reverse=True)
        margin = lead[0] - lead[1] if len(lead) > 1 else float("nan")
        diffs = [means[m] - means[reference] if m in means and reference in means else None for m in others]
        rows.append(f'<tr data-cat="{e(first["category"])}"><td class="prompt"><b>{e(pid)}</b> ({e(first["category"])})'
                    f'<br>{e(first["text"])}<br><i>{e(first["en"])}</i></td>'
                    + "".join(f"<td>{_image_cell(cells.get(m, []), out, size, scores)}</td>" for m in methods)
                    + f'<td data-value="{margin}">{e(winner or "— (all blank)")}'
                    + (f" (by {margin:.2f})" if winner and len(lead) > 1 else "") + "</td>"
                    + "".join(f'<td data-value="{"nan" if d is None else d}">{"—" if d is None else f"{d:+.2f}"}</td>'
                              for d in diffs) + "</tr>")
    return f"<table class=\"prompts\"><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def page(out: Path, sections: dict, records: list[dict], size: int, categories: list[str]) -> str:
    """The page. ``sections``: "settings", "scorers" and "fid" tables (fid may be None), and per
    language ("languages": {lang: {"methods", "pivot": Table, "legend": [str]}})."""
    scores = [s for s in SHORT if any(r.get(s) is not None for r in records)]
    grouped = by_language(records)
    options = "".join(f'<option value="{e(lang)}">{e(lang)} ({e(language_name(lang))})</option>'
                      for lang in sections["languages"])
    parts = ["<!doctype html>", '<html><head><meta charset="utf-8"><title>PEA evaluation</title>',
             f"<style>{STYLE}</style></head><body>", "<h1>PEA evaluation</h1>",
             '<div id="filters"><label>Language <select id="lang"><option value="">all</option>'
             f'{options}</select></label> <label>Category <select id="cat"><option value="">all</option>'
             + "".join(f'<option value="{e(c)}">{e(c)}</option>' for c in categories) + "</select></label></div>",
             "<h2>Settings</h2>", table_html(sections["settings"]),
             "<h2>Scorers</h2>", table_html(sections["scorers"])]
    if sections.get("fid"):
        parts += ["<h2>FID against the reference images</h2>", table_html(sections["fid"])]
    for lang, section in sections["languages"].items():
        methods, prompts = grouped[lang]
        pivot = section["pivot"]
        parts += [f'<section data-lang="{e(lang)}"><h2>{e(lang)} ({e(language_name(lang))})</h2>',
                  "<ul>" + "".join(f"<li>{e(line)}</li>" for line in section["legend"]) + "</ul>",
                  table_html(section["methods"]), "<h3>By category</h3>",
                  table_html(pivot, [f' data-cat="{e(k)}"' for k in pivot.keys]),
                  f'<h3>Prompts</h3><p><a href="{quote(f"grid_{lang}.png")}">grid of the first images</a>. '
                  "Click a column marked sortable to sort; click an image for the full size.</p>",
                  prompts_table(methods, prompts, out, size, scores), "</section>"]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"
