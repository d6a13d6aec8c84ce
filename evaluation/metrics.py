"""Scores of the generated images: CLIPScore in the prompt's language (and by a second, judging
CLIP), CLIPScore of the English reference, their means per method, language and category, the
prompts each scorer cut short, and FID per method. Languages are never pooled: each may be
scored by another CLIP, and scores of two CLIPs are not comparable."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from adapters.clip_score import ClipScorer

from .generate import Job
from .prompts import Prompt

ALL = "all"


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


SCORES = ("clip_score", "clip_score_judge", "clip_score_en")
"""The scores of a record: by the language's scorer, by the judge, against the English reference."""


def score_images(jobs: list[Job], scorers: dict[str, ClipScorer], judges: dict[str, ClipScorer],
                 english: ClipScorer | None, batch_size: int = 16) -> list[dict]:
    """One record per image: what made it and its scores (``clip_score``: against the prompt in
    its own language with that language's scorer; ``clip_score_judge``: the same with the
    language's judging CLIP, None without one; ``clip_score_en``: against the English reference
    with the English CLIP, None without one)."""
    records = []
    with tqdm(total=len(jobs), desc="scoring", unit="image") as bar:
        for batch in _batches(jobs, batch_size):
            images = []
            for job in batch:
                with Image.open(job.path) as im:
                    images.append(im.convert("RGB"))
            own = _score_by_language(batch, images, scorers)
            judged = _score_by_language(batch, images, judges) if judges else [None] * len(batch)
            en = english.score(images, [j.prompt.en for j in batch]).tolist() if english else [None] * len(batch)
            for job, score, score_judge, score_en in zip(batch, own, judged, en):
                records.append({"method": job.method.name, "language": job.prompt.language, "id": job.prompt.id,
                                "category": job.prompt.category, "k": job.k, "seed": job.seed, "path": job.path,
                                "text": job.prompt.text, "en": job.prompt.en, "conditioning_text": job.text,
                                "clip_score": score, "clip_score_judge": score_judge, "clip_score_en": score_en})
            bar.update(len(batch))
    return records


def _score_by_language(jobs: list[Job], images: list[Image.Image], scorers: dict[str, ClipScorer]) -> list[float]:
    scores = [0.0] * len(jobs)
    by_language = defaultdict(list)
    for i, job in enumerate(jobs):
        by_language[job.prompt.language].append(i)
    for language, rows in by_language.items():
        values = scorers[language].score([images[i] for i in rows], [jobs[i].prompt.text for i in rows])
        for i, value in zip(rows, values.tolist()):
            scores[i] = float(value)
    return scores


def truncated_prompts(prompts: list[Prompt], scorers: dict[str, ClipScorer], english: bool = False) -> dict[str, dict]:
    """language -> the ids of its prompts longer than its scorer reads (``english``: their English
    references), and the scorer's token limit."""
    out = {}
    for language, scorer in scorers.items():
        own = [p for p in prompts if p.language == language]
        cut = scorer.truncated([p.en if english else p.text for p in own])
        out[language] = {"token_limit": scorer.text_limit, "prompts": len(own),
                         "truncated": [p.id for p, c in zip(own, cut) if c]}
    return out


def _stats(values: list[float | None]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarize(records: list[dict]) -> list[dict]:
    """Mean and spread of every score per (method, language, category) and per (method, language)
    over all categories (category "all"); by language, then category ("all" last), then method
    (in the order the methods came). Languages are never pooled."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in records:
        for key in ((r["method"], r["language"], r["category"]), (r["method"], r["language"], ALL)):
            groups[key].append(r)
    methods = list(dict.fromkeys(r["method"] for r in records))
    order = sorted(groups, key=lambda k: (k[1], k[2] == ALL, k[2], methods.index(k[0])))
    return [{"method": m, "language": lang, "category": c, "images": len(groups[m, lang, c]),
             **{score: _stats([r.get(score) for r in groups[m, lang, c]]) for score in SCORES}}
            for m, lang, c in order]


def fid_by_method(records: list[dict], fid) -> dict[str, dict]:
    """FID of each method's images against ``fid``'s reference set."""
    paths: dict[str, list[Path]] = defaultdict(list)
    for r in records:
        paths[r["method"]].append(r["path"])
    return {method: {"images": len(ps), "fid": fid.distance(ps)}
            for method, ps in tqdm(paths.items(), desc="FID", unit="method")}
