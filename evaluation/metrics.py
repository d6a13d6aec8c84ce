"""Scores of the generated images: CLIPScore in the prompt's language, CLIPScore of the English
reference, their means per method, language and category, and FID per method."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from adapters.clip_score import ClipScorer

from .generate import Job

ALL = "all"


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def score_images(jobs: list[Job], scorers: dict[str, ClipScorer], english: ClipScorer | None,
                 batch_size: int = 16) -> list[dict]:
    """One record per image: what made it and its scores (``clip_score``: against the prompt in
    its own language with that language's scorer; ``clip_score_en``: against the English
    reference with the English CLIP, None without one)."""
    records = []
    with tqdm(total=len(jobs), desc="scoring", unit="image") as bar:
        for batch in _batches(jobs, batch_size):
            images = []
            for job in batch:
                with Image.open(job.path) as im:
                    images.append(im.convert("RGB"))
            own = [float(s) for s in _score_by_language(batch, images, scorers)]
            en = english.score(images, [j.prompt.en for j in batch]).tolist() if english else [None] * len(batch)
            for job, score, score_en in zip(batch, own, en):
                records.append({"method": job.method.name, "language": job.prompt.language, "id": job.prompt.id,
                                "category": job.prompt.category, "k": job.k, "seed": job.seed, "path": job.path,
                                "text": job.prompt.text, "en": job.prompt.en, "conditioning_text": job.text,
                                "clip_score": score, "clip_score_en": score_en})
            bar.update(len(batch))
    return records


def _score_by_language(jobs: list[Job], images: list[Image.Image], scorers: dict[str, ClipScorer]) -> list[float]:
    scores: list[float] = [0.0] * len(jobs)
    by_language = defaultdict(list)
    for i, job in enumerate(jobs):
        by_language[job.prompt.language].append(i)
    for language, rows in by_language.items():
        values = scorers[language].score([images[i] for i in rows], [jobs[i].prompt.text for i in rows])
        for i, value in zip(rows, values.tolist()):
            scores[i] = value
    return scores


def _stats(values: list[float | None]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarize(records: list[dict]) -> list[dict]:
    """Mean and spread of both scores per (method, language, category), per (method, language)
    over all categories and per method over everything; by language, then category, then method
    (in the order the methods came), "all" after the rest."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in records:
        for key in ((r["method"], r["language"], r["category"]), (r["method"], r["language"], ALL),
                    (r["method"], ALL, ALL)):
            groups[key].append(r)
    methods = list(dict.fromkeys(r["method"] for r in records))
    order = sorted(groups, key=lambda k: (k[1] == ALL, k[1], k[2] == ALL, k[2], methods.index(k[0])))
    return [{"method": m, "language": lang, "category": c, "images": len(groups[m, lang, c]),
             "clip_score": _stats([r["clip_score"] for r in groups[m, lang, c]]),
             "clip_score_en": _stats([r["clip_score_en"] for r in groups[m, lang, c]])}
            for m, lang, c in order]


def fid_by_method(records: list[dict], fid) -> dict[str, dict]:
    """FID of each method's images against ``fid``'s reference set."""
    paths: dict[str, list[Path]] = defaultdict(list)
    for r in records:
        paths[r["method"]].append(r["path"])
    return {method: {"images": len(ps), "fid": fid.distance(ps)}
            for method, ps in tqdm(paths.items(), desc="FID", unit="method")}
