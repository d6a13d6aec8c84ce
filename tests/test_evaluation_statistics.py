"""The evaluator's paired statistics and its choice of scorer, against computations written out
here (and scipy's Wilcoxon test), on tiny real-format scorers."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats

from adapters.clip_score import load_clip_scorer
from evaluation.errors import EvaluationError
from evaluation.evaluate import choose_scorers
from evaluation.metrics import summarize, truncated_prompts
from evaluation.paired import bootstrap_interval, comparisons, holm, signed_rank_p, verdict
from evaluation.prompts import Prompt


def test_bootstrap_interval_equals_the_resampling_written_out():
    differences = [0.8, -0.3, 1.9, 0.05, -1.2, 0.6, 2.4, -0.1, 0.9]
    resamples, n = 2000, len(differences)
    rng = np.random.default_rng(7)
    means = sorted(sum(differences[int(rng.integers(0, n))] for _ in range(n)) / n for _ in range(resamples))

    def percentile(q: float) -> float:  # linear interpolation between the order statistics
        position = q / 100 * (resamples - 1)
        low = math.floor(position)
        return means[low] + (position - low) * (means[min(low + 1, resamples - 1)] - means[low])

    low, high = bootstrap_interval(np.array(differences), resamples=resamples, seed=7)
    assert low == pytest.approx(percentile(2.5), abs=1e-12) and high == pytest.approx(percentile(97.5), abs=1e-12)
    assert bootstrap_interval(np.array(differences), resamples=resamples, seed=7) == (low, high), "a fixed seed"


def test_signed_rank_p_value_is_scipys_and_the_known_exact_value():
    # ten differences, all positive, distinct: of the 2^10 equally likely sign patterns under the
    # null only "all +" and "all -" are as extreme, so the exact two-sided p is 2 / 1024
    assert signed_rank_p(np.arange(1.0, 11.0)) == pytest.approx(2 / 1024, abs=1e-15)
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, 40)
    assert signed_rank_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, abs=1e-15)
    assert signed_rank_p(np.array([0.0, 2.0, -1.0, 0.0, 3.0])) == pytest.approx(stats.wilcoxon([2.0, -1.0, 3.0]).pvalue)
    assert signed_rank_p(np.zeros(5)) == 1.0


def test_holm_adjusts_step_down():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06): in the order given
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0]) and holm([]) == []  # 2 x 0.8 capped at 1; never below it


def records(scores: dict[tuple[str, str], list[list[float]]]) -> list[dict]:
    """Image records: (method, language) -> per prompt, its scores by seed."""
    return [{"method": m, "language": lang, "id": f"p{i}", "category": "c", "k": k, "clip_score": s,
             "clip_score_judge": None, "clip_score_en": None}
            for (m, lang), prompts in scores.items() for i, seeds in enumerate(prompts) for k, s in enumerate(seeds)]


def test_comparisons_average_seeds_pair_prompts_and_correct_for_every_test():
    clear = [[30.0 + i, 31.0 + i] for i in range(10)]  # seed means 30.5 + i
    base = [[29.0 + i + 0.1 * i, 29.0 + i] for i in range(10)]  # seed means 29 + 1.05 i
    noisy = [[20.0 + (-1) ** i * (i + 1)] * 2 for i in range(10)]
    flat = [[20.0, 20.0]] * 10
    data = records({("pea-a", "zh"): clear, ("translate", "zh"): base, ("english", "zh"): base,
                    ("pea-a", "ru"): noisy, ("translate", "ru"): flat, ("english", "ru"): noisy})
    rows = comparisons(data, "clip_score")
    assert [(r["language"], r["method"], r["against"]) for r in rows] == [
        ("zh", "pea-a", "translate"), ("zh", "pea-a", "english"), ("ru", "pea-a", "translate"), ("ru", "pea-a", "english")]
    zh, _, ru, tie = rows
    d = np.array([(30.5 + i) - (29.0 + 1.05 * i) for i in range(10)])
    assert zh["mean_difference"] == pytest.approx(d.mean()) and zh["prompts"] == 10
    assert (zh["wins"], zh["ties"], zh["losses"]) == (10, 0, 0)
    assert zh["interval"] == pytest.approx(list(bootstrap_interval(d)))
    assert zh["p_value"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p_value"] for r in rows]))
    assert zh["distinguishable"] and verdict(zh) == "pea-a better"
    assert (ru["wins"], ru["losses"]) == (5, 5) and ru["interval"][0] < 0 < ru["interval"][1]
    assert verdict(ru) == "not distinguishable"
    assert (tie["ties"], tie["mean_difference"], tie["p_value"]) == (10, 0.0, 1.0) and verdict(tie) == "not distinguishable"


def test_summary_never_pools_languages():
    data = records({("pea-a", "zh"): [[19.0]], ("pea-a", "ru"): [[65.5]]})
    summary = summarize(data)
    assert {(r["language"], r["category"]) for r in summary} == {("zh", "c"), ("zh", "all"), ("ru", "c"), ("ru", "all")}


def prompt(language: str, text: str, pid: str = "p1") -> Prompt:
    return Prompt(pid, language, text, "an English reference", "c", "general")


RUSSIAN = [prompt("ru", "красная кошка сидит на столе"), prompt("ru", "фонарь у двери", "p2")]
CHINESE = [prompt("zh", "一只红色的猫坐在桌子上")]


def test_russian_prompts_with_only_a_chinese_clip_are_refused_with_the_fix_named(encoder_dirs):
    chinese_clip = encoder_dirs["chinese_clip"]
    with pytest.raises(EvaluationError, match=r"--score-clip: chinese_clip \(chinese_clip\) reads Chinese, not the "
                                              r"Russian prompts; give a CLIP that reads Russian: --score-clip ru=FOLDER"):
        choose_scorers([], chinese_clip, "--score-clip", CHINESE + RUSSIAN, ["zh", "ru"])
    # named for Russian by the user, it is still refused: its tokenizer does not know Cyrillic words
    with pytest.raises(EvaluationError, match=r"does not read the Russian prompts \(\d+% of their tokens are unknown.*"
                                              r"--score-clip ru=FOLDER"):
        choose_scorers([f"ru={chinese_clip}"], chinese_clip, "--score-clip", CHINESE + RUSSIAN, ["zh", "ru"])
    with pytest.raises(EvaluationError, match="--judge-clip: clip .*reads English, not the Chinese prompts.*--judge-clip zh="):
        choose_scorers([str(encoder_dirs["clip"])], None, "--judge-clip", CHINESE, ["zh"])
    chosen = choose_scorers([f"ru={encoder_dirs['altclip']}"], chinese_clip, "--score-clip", CHINESE + RUSSIAN,
                            ["zh", "ru"])
    assert {lang: (c.path, c.kind, c.unknown_rate) for lang, c in chosen.items()} == {
        "zh": (chinese_clip, "chinese_clip", 0.0), "ru": (encoder_dirs["altclip"], "altclip", 0.0)}
    assert choose_scorers([], None, "--judge-clip", CHINESE, ["zh"]) == {}


def test_an_unknown_script_is_refused_by_its_unknown_token_rate(encoder_dirs):
    thai = [prompt("th", "แมวสีแดงนั่งอยู่บนโต๊ะ")]
    with pytest.raises(EvaluationError, match=r"does not read the Thai prompts \(\d+% of their tokens are unknown"):
        choose_scorers([str(encoder_dirs["open_clip"])], None, "--score-clip", thai, ["th"])


def test_truncated_prompts_are_counted_and_named(encoder_dirs):
    scorer = load_clip_scorer(encoder_dirs["chinese_clip"])
    long = prompt("zh", "".join(random.Random(0).choices("一只红色的猫坐在桌子上蓝天白云", k=60)), "long")
    counted = truncated_prompts(CHINESE + [long], {"zh": scorer})
    assert counted == {"zh": {"token_limit": 52, "prompts": 2, "truncated": ["long"]}}
    assert scorer.text_lengths([long.text]) == [62]  # one token a character, [CLS] and [SEP]
