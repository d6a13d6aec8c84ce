"""The report's numbers arranged for reading, as plain rows of text that results.md and
index.html both render: per language a table with the methods as columns (each score's mean and
each method's paired difference from the reference method), a category pivot, the scorers, FID and
the settings. Languages are never pooled: each may be scored by another CLIP."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .languages import LANGUAGES
from .metrics import ALL, SCORES
from .paired import BASELINE_ORDER, verdict

SHORT = {"clip_score": "own", "clip_score_judge": "judge", "clip_score_en": "EN"}
"""The short labels of the scores under each image; :func:`score_labels` says what each is."""


@dataclass
class Table:
    """A header and rows of text cells; ``keys`` (one per row, optional) is what a filter matches."""

    header: list[str]
    rows: list[list[str]]
    keys: list[str] = field(default_factory=list)


def number(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def interval(row: dict) -> str:
    low, high = row["interval"]
    return "—" if low is None else f"{row['mean_difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def language_name(code: str) -> str:
    return LANGUAGES[code][0] if code in LANGUAGES else code


def reference_method(methods: list[str]) -> str | None:
    """What the other methods are compared with: ``translate``, else ``english``, else nothing."""
    return next((b for b in BASELINE_ORDER if b in methods), None)


def methods_of(summary: list[dict], language: str) -> list[str]:
    return [r["method"] for r in summary if r["language"] == language and r["category"] == ALL]


def languages_of(summary: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["language"] for r in summary))


def present_scores(summary: list[dict]) -> list[str]:
    return [s for s in SCORES if any(r[s]["mean"] is not None for r in summary)]


def score_labels(language: str, scoring: dict, settings: dict) -> dict[str, str]:
    """Score -> what it is for ``language``: which CLIP scored which text."""
    entry = scoring.get(language, {})
    own, judge = entry.get("score_clip"), entry.get("judge_clip")
    english = settings.get("english_clip")
    return {"clip_score": f"CLIPScore by {_name(own)}, the {language} scorer, against the prompt",
            "clip_score_judge": f"CLIPScore by {_name(judge)}, the judge, against the prompt",
            "clip_score_en": f"CLIPScore by {Path(english).name if english else '—'} against the English reference"}


def _name(entry: dict | None) -> str:
    return f"{Path(entry['path']).name} ({entry['kind']})" if entry else "—"


def flipped(row: dict) -> dict:
    """A comparison row read the other way round (``against`` minus ``method``)."""
    low, high = row["interval"]
    return {**row, "method": row["against"], "against": row["method"],
            "mean_difference": None if row["mean_difference"] is None else -row["mean_difference"],
            "interval": [None, None] if low is None else [-high, -low], "wins": row["losses"], "losses": row["wins"]}


def difference(rows: list[dict], language: str, method: str, reference: str) -> dict | None:
    """The paired comparison of ``method`` with ``reference`` in ``language``, either way round."""
    for r in rows:
        if r["language"] != language:
            continue
        if (r["method"], r["against"]) == (method, reference):
            return r
        if (r["method"], r["against"]) == (reference, method):
            return flipped(r)
    return None


def _difference_cell(row: dict | None) -> str:
    if row is None:
        return "— (not compared)"
    return "—" if row["mean_difference"] is None else f"{interval(row)} {verdict(row)}"


def method_table(language: str, summary: list[dict], compared: dict[str, list[dict]], labels: dict[str, str],
                 blanks: dict[tuple[str, str], int]) -> Table:
    """The methods of ``language`` as columns; per score its mean ± sd and each method's mean
    difference from the reference method with its 95% interval and verdict."""
    methods = methods_of(summary, language)
    reference = reference_method(methods)
    totals = {r["method"]: r for r in summary if r["language"] == language and r["category"] == ALL}
    rows = [["images", *(str(totals[m]["images"]) for m in methods)],
            ["blank images (near-constant pixels)", *(str(blanks.get((m, language), 0)) for m in methods)]]
    for score in present_scores(summary):
        rows.append([f"{labels[score]}: mean ± sd", *(number(totals[m][score]["mean"], totals[m][score]["std"])
                                                       for m in methods)])
        if reference:
            rows.append([f"… difference from {reference} [95% interval], verdict",
                         *("(reference)" if m == reference else
                           _difference_cell(difference(compared.get(score, []), language, m, reference))
                           for m in methods)])
    return Table([f"{language} ({language_name(language)})", *methods], rows)


def category_pivot(language: str, summary: list[dict], labels: dict[str, str], score: str = "clip_score") -> Table:
    """Categories (rows) by methods (columns) of ``language``: the mean ``score`` and the images."""
    methods = methods_of(summary, language)
    cells = {(r["category"], r["method"]): r for r in summary if r["language"] == language and r["category"] != ALL}
    categories = list(dict.fromkeys(c for c, _ in cells))
    rows = [[c, *(f"{number(cells[c, m][score]['mean'])} ({cells[c, m]['images']})" if (c, m) in cells else "—"
                  for m in methods)] for c in categories]
    return Table([f"category — {labels[score]}: mean (images)", *methods], rows, keys=categories)


def _truncated(entry: dict | None) -> str:
    if not entry:
        return "—"
    ids = entry["truncated"]
    return f"{len(ids)} of {entry['prompts']}" + (f": {', '.join(ids)}" if ids else "")


def scorer_table(scoring: dict) -> Table:
    """Which CLIP scored each language and which prompts it cut short."""
    rows = []
    for lang, s in scoring.items():
        own, judge = s["score_clip"], s["judge_clip"]
        rows.append([lang, _name(own), f"{own['unknown_rate']:.1%}", f"{_truncated(own)} ({own['token_limit']})",
                     _name(judge), _truncated(judge), _truncated(s["english_clip"]), _truncated(s.get("translation"))])
    return Table(["language", "scored by", "unknown tokens", "truncated prompts (token limit)", "judge",
                  "judge truncated", "English references truncated", "cut short by the translator"], rows,
                 keys=list(scoring))


def fid_table(fid: dict) -> Table:
    return Table(["method", "images (all languages)", "reference images", "FID (lower is closer)"],
                 [[m, str(v["images"]), str(v.get("reference_images", "—")), f"{v['fid']:.2f}"]
                  for m, v in fid.items()])


def settings_table(settings: dict) -> Table:
    """One row a setting; nested settings as ``outer.inner``, lists joined by commas."""
    rows: list[list[str]] = []

    def add(key: str, value) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                add(f"{key}.{k}", v)
        elif isinstance(value, (list, tuple)):
            rows.append([key, ", ".join(map(str, value))])
        else:
            rows.append([key, "—" if value is None or value == {} else str(value)])

    for key, value in settings.items():
        add(key, value)
    return Table(["setting", "value"], rows)
