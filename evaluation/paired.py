"""Paired comparisons of two methods on the same prompts: does one score higher than the other?

Per language, every image's score is averaged over its seeds, so each prompt gives one number per
method; two methods are compared on the prompts both have, prompt by prompt (a paired design:
the same prompt, the same seeds, the same scorer). For each pair this module reports

- the mean difference over prompts (first method minus second) with a paired bootstrap 95%
  percentile interval (prompts resampled with replacement, a fixed seed, so a rerun prints the
  same interval);
- wins, ties and losses per prompt (a tie: the two means differ by at most ``TIE`` points, the
  float32 rounding of scoring the same image in two batches);
- the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; tied prompts dropped):
  it assumes no normal distribution of the differences, which on a few dozen prompts with an
  occasional failed image (a difference of tens of points) a paired t-test would need, and it is
  not carried by one outlier; then Holm's step-down correction over every comparison of one score
  in the run, since with 8 languages and 3 methods there are dozens of tests and some would pass
  at 0.05 by chance.

A difference counts (``distinguishable``) only where the interval excludes 0 and the Holm-adjusted
p-value is below ``ALPHA``; otherwise it is printed as "not distinguishable". scipy is a
requirement of ComfyUI itself, inside which the evaluator runs.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import stats

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
TIE = 1e-4
"""Per-prompt mean scores closer than this (CLIPScore points) count as a tie."""
BASELINE_ORDER = ("translate", "english")
"""Each other method is compared with these, where the run has them."""


def per_prompt(records: list[dict], score: str) -> dict[tuple[str, str], dict[str, float]]:
    """(method, language) -> {prompt id: the mean of ``score`` over that prompt's seeds}."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.get(score) is not None:
            values[r["method"], r["language"], r["id"]].append(r[score])
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (method, language, pid), scores in values.items():
        out[method, language][pid] = float(np.mean(scores))
    return dict(out)


def bootstrap_interval(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``differences`` over ``resamples`` resamplings of its
    entries with replacement, drawn by ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def signed_rank_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``differences`` (zeros dropped; 1.0 when all are zero)."""
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(a: dict[str, float], b: dict[str, float]) -> dict:
    """Method ``a`` against ``b``, each {prompt id: mean score}, on the prompts both have."""
    ids = [pid for pid in a if pid in b]
    d = np.array([a[pid] - b[pid] for pid in ids], dtype=np.float64)
    d[np.abs(d) <= TIE] = 0.0
    low, high = bootstrap_interval(d) if len(d) else (None, None)
    return {"prompts": len(ids), "mean_difference": float(d.mean()) if len(d) else None,
            "interval": [low, high], "wins": int((d > 0).sum()), "ties": int((d == 0).sum()),
            "losses": int((d < 0).sum()), "p_value": signed_rank_p(d) if len(d) else 1.0}


def pairs(methods: list[str]) -> list[tuple[str, str]]:
    """Each method that is not a baseline against ``translate`` and ``english``; ``translate``
    against ``english`` where the run has no other method."""
    baselines = [b for b in BASELINE_ORDER if b in methods]
    others = [m for m in methods if m not in BASELINE_ORDER]
    if not others and baselines == list(BASELINE_ORDER):
        return [("translate", "english")]
    return [(m, b) for m in others for b in baselines]


def comparisons(records: list[dict], score: str) -> list[dict]:
    """Every pair of :func:`pairs` in every language, compared on ``score``, with Holm-adjusted
    p-values over all of them and the verdict; by language, then pair."""
    means = per_prompt(records, score)
    methods = list(dict.fromkeys(r["method"] for r in records))
    languages = list(dict.fromkeys(r["language"] for r in records))
    rows = [{"language": language, "method": a, "against": b, **compare(means[a, language], means[b, language])}
            for language in languages for a, b in pairs(methods)
            if (a, language) in means and (b, language) in means]
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows])):
        low, high = row["interval"]
        row["p_holm"] = adjusted
        row["distinguishable"] = low is not None and (low > 0 or high < 0) and adjusted < ALPHA
    return rows


def verdict(row: dict) -> str:
    """``a better``, ``b better`` or ``not distinguishable`` for a row of :func:`comparisons`."""
    if not row["distinguishable"]:
        return "not distinguishable"
    return f"{row['method'] if row['mean_difference'] > 0 else row['against']} better"
