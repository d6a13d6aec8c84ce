"""What the evaluator writes: results.json, results.md, a grid PNG per language, index.html, and
the thumbnails the page shows (``thumbs/``). The tables come from :mod:`evaluation.tables`, the
page from :mod:`evaluation.page`, the grids from :mod:`evaluation.grid`."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from adapters.file_format import atomic_write

from .grid import write_grids
from .page import page
from .paired import ALPHA, verdict
from .tables import (
    SHORT,
    Table,
    category_pivot,
    fid_table,
    interval,
    language_name,
    languages_of,
    method_table,
    present_scores,
    score_labels,
    scorer_table,
    settings_table,
)
from .thumbnails import BLANK_STD, add_thumbnails

SCORE_NAMES = {"clip_score": "CLIPScore (prompt's language)", "clip_score_judge": "CLIPScore (judge)",
               "clip_score_en": "CLIPScore (English reference)"}


def relative(path: Path, out: Path) -> str:
    return os.path.relpath(path, out).replace(os.sep, "/")


def _write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def write_json(out: Path, settings: dict, scoring: dict, summary: list[dict], compared: dict[str, list[dict]],
               fid: dict | None, records: list[dict]) -> Path:
    images = [{**r, "path": relative(r["path"], out), **({"thumb": relative(r["thumb"], out)} if "thumb" in r else {})}
              for r in records]
    data = {"settings": settings, "scorers": scoring, "summary": summary, "comparisons": compared, "fid": fid,
            "images": images}
    return _write_text(out / "results.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def markdown_table(table: Table) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return ["| " + " | ".join(map(cell, table.header)) + " |", "|" + "---|" * len(table.header),
            *("| " + " | ".join(map(cell, row)) + " |" for row in table.rows), ""]


def comparison_lines(compared: dict[str, list[dict]]) -> list[str]:
    """One table per score: each method against each baseline, language by language."""
    if not any(compared.values()):
        return ["Nothing to compare: the run has no `translate` or `english` baseline beside its other methods.", ""]
    lines = []
    for score, rows in compared.items():
        lines += [f"### {SCORE_NAMES[score]}", "",
                  "| language | method | against | prompts | mean difference [95% interval] | win / tie / loss "
                  "| p (Wilcoxon) | p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|",
                  *(f"| {r['language']} | {r['method']} | {r['against']} | {r['prompts']} | {interval(r)} "
                    f"| {r['wins']} / {r['ties']} / {r['losses']} | {r['p_value']:.3g} | {r['p_holm']:.3g} "
                    f"| {verdict(r)} |" for r in rows), ""]
    return lines


def blank_counts(records: list[dict]) -> dict[tuple[str, str], int]:
    """(method, language) -> how many of its images are blank."""
    return Counter((r["method"], r["language"]) for r in records if r.get("blank"))


def legend(language: str, scoring: dict, settings: dict, scores: list[str]) -> list[str]:
    """What the short score labels under each image mean in ``language``."""
    labels = score_labels(language, scoring, settings)
    return [f"{SHORT[s]}: {labels[s]}" for s in scores]


def sections(settings: dict, scoring: dict, summary: list[dict], compared: dict[str, list[dict]], fid: dict | None,
             records: list[dict]) -> dict:
    """Every table of the report, per language where it is one language's."""
    blanks = blank_counts(records)
    scores = present_scores(summary)
    languages = {}
    for lang in languages_of(summary):
        labels = score_labels(lang, scoring, settings)
        languages[lang] = {"methods": method_table(lang, summary, compared, labels, blanks),
                           "pivot": category_pivot(lang, summary, labels),
                           "legend": legend(lang, scoring, settings, scores)}
    return {"settings": settings_table(settings), "scorers": scorer_table(scoring),
            "fid": fid_table(fid) if fid else None, "languages": languages}


def markdown(parts: dict, compared: dict[str, list[dict]]) -> str:
    """results.md from :func:`sections`."""
    lines = ["# PEA evaluation", "",
             "CLIPScore = 100 × max(cos(image, text), 0), mean ± standard deviation over the images. Each "
             "language has its own scorer: compare methods within a language, never across languages. A "
             f"blank image (grey levels with a standard deviation under {BLANK_STD}) is counted, not hidden.", "",
             "## Settings", "", *markdown_table(parts["settings"]),
             "## Scorers", "", *markdown_table(parts["scorers"])]
    for lang, section in parts["languages"].items():
        lines += [f"## {lang} ({language_name(lang)})", "", *(f"- {line}" for line in section["legend"]), "",
                  *markdown_table(section["methods"]), "### By category", "", *markdown_table(section["pivot"])]
    lines += ["## Paired comparisons", "",
              "Per language, each prompt's score averaged over its seeds; the difference is method minus "
              "against, over the prompts. 95% interval: paired bootstrap over prompts. p: two-sided Wilcoxon "
              "signed-rank test, Holm-corrected over the comparisons of a score. A difference counts only "
              f"where its interval excludes 0 and p (Holm) < {ALPHA}; otherwise \"not distinguishable\".", "",
              *comparison_lines(compared)]
    if parts["fid"]:
        lines += ["## FID against the reference images", "", *markdown_table(parts["fid"])]
    return "\n".join(lines)


def write_report(out: Path, settings: dict, scoring: dict, summary: list[dict], compared: dict[str, list[dict]],
                 fid: dict | None, records: list[dict], grid_size: int) -> dict[str, Path | list[Path]]:
    """Every output file; returns their paths."""
    records = add_thumbnails(records, out, grid_size)
    parts = sections(settings, scoring, summary, compared, fid, records)
    categories = list(dict.fromkeys(r["category"] for r in records))
    legends = {lang: section["legend"] for lang, section in parts["languages"].items()}
    return {"json": write_json(out, settings, scoring, summary, compared, fid, records),
            "markdown": _write_text(out / "results.md", markdown(parts, compared)),
            "grids": write_grids(out, records, grid_size, legends),
            "html": _write_text(out / "index.html", page(out, parts, records, grid_size, categories))}
