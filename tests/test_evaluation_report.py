"""The report from a constructed results set (no ComfyUI): the per-language table with methods as
columns and the paired differences from `translate`, the category pivot, the settings table,
thumbnails made once, blank images flagged, the grid's font."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import fonts
from evaluation.metrics import summarize
from evaluation.paired import comparisons
from evaluation.report import write_report
from evaluation.tables import difference, interval

METHODS = ("translate", "english", "pea-zh")
PROMPTS = [("general-001", "animals", "一只红色的猫"), ("general-002", "animals", "两只黑狗"),
           ("general-003", "scenes", "蓝色的天空")]
SETTINGS = {"checkpoint": "sd15.safetensors", "sampling": {"width": 64, "steps": 2}, "seed": 0,
            "languages": ["zh"], "language_clip": None, "english_clip": "/models/clip-en"}
SCORING = {"zh": {"score_clip": {"path": "/models/chinese-clip-tiny", "kind": "chinese_clip", "unknown_rate": 0.0,
                                 "token_limit": 52, "prompts": 3, "truncated": ["general-003"]},
                  "judge_clip": None, "english_clip": {"token_limit": 77, "prompts": 3, "truncated": []},
                  "translation": {"path": "/models/opus-mt-zh-en", "prompts": 3, "truncated": ["general-002"]}}}


def constructed(out: Path) -> list[dict]:
    """Two seeds of three prompts by three methods; pea-zh scores 2 points above translate, plus
    noise; pea-zh's images of general-002 are all black (blank)."""
    rng = np.random.default_rng(0)
    records = []
    for m, method in enumerate(METHODS):
        for pid, category, text in PROMPTS:
            for k in range(2):
                path = out / "images" / method / "zh" / f"{pid}_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                blank = method == "pea-zh" and pid == "general-002"
                pixels = np.zeros((64, 64, 3), np.uint8) if blank else rng.integers(0, 255, (64, 64, 3), np.uint8)
                Image.fromarray(pixels).save(path)
                records.append({"method": method, "language": "zh", "id": pid, "category": category, "k": k,
                                "seed": k, "path": path, "text": text, "en": f"English {pid}", "conditioning_text": text,
                                "clip_score": 20.0 + 2.0 * (method == "pea-zh") + m * 0.1 + k + rng.normal(0, 0.1),
                                "clip_score_judge": None, "clip_score_en": 25.0 + m})
    return records


@pytest.fixture
def report(tmp_path):
    records = constructed(tmp_path)
    summary = summarize(records)
    compared = {s: comparisons(records, s) for s in ("clip_score", "clip_score_en")}
    files = write_report(tmp_path, SETTINGS, SCORING, summary, compared, None, records, 48)
    return tmp_path, records, summary, compared, files


def test_markdown_tables_per_language_with_differences_from_translate(report):
    out, records, summary, compared, _ = report
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| zh (Chinese) | translate | english | pea-zh |" in md, "methods are the columns"
    pea_vs_translate = difference(compared["clip_score"], "zh", "pea-zh", "translate")
    means = {r["method"]: r["clip_score"]["mean"] for r in summary if r["category"] == "all"}
    stds = {r["method"]: r["clip_score"]["std"] for r in summary if r["category"] == "all"}
    assert (f"| CLIPScore by chinese-clip-tiny (chinese_clip), the zh scorer, against the prompt: mean ± sd "
            f"| {means['translate']:.2f} ± {stds['translate']:.2f} | {means['english']:.2f} ± {stds['english']:.2f} "
            f"| {means['pea-zh']:.2f} ± {stds['pea-zh']:.2f} |") in md
    assert (f"| … difference from translate [95% interval], verdict | (reference) | — (not compared) "
            f"| {interval(pea_vs_translate)} not distinguishable |") in md, "3 prompts separate nothing"
    assert pea_vs_translate["mean_difference"] == pytest.approx(2.0 + 0.2, abs=0.2)
    assert "| CLIPScore by clip-en against the English reference: mean ± sd |" in md
    assert "| blank images (near-constant pixels) | 0 | 0 | 2 |" in md
    animals = {m: np.mean([r["clip_score"] for r in records if r["method"] == m and r["category"] == "animals"])
               for m in METHODS}
    assert (f"| animals | {animals['translate']:.2f} (4) | {animals['english']:.2f} (4) | {animals['pea-zh']:.2f} (4) |"
            in md), "the category pivot"
    assert "| sampling.steps | 2 |" in md and "| languages | zh |" in md and "| language_clip | — |" in md
    assert '{"width"' not in md, "settings are a table, not JSON"
    assert ("| zh | chinese-clip-tiny (chinese_clip) | 0.0% | 1 of 3: general-003 (52) | — | — | 0 of 3 | "
            "1 of 3: general-002 |") in md


def test_flipped_difference_reads_a_comparison_the_other_way():
    row = {"language": "zh", "method": "translate", "against": "english", "mean_difference": 1.5,
           "interval": [0.5, 2.5], "wins": 3, "ties": 0, "losses": 1, "distinguishable": True}
    other = difference([row], "zh", "english", "translate")
    assert (other["mean_difference"], other["interval"], other["wins"], other["losses"]) == (-1.5, [-2.5, -0.5], 1, 3)


def test_page_thumbnails_blank_flags_and_winners(report):
    out, records, *_ = report
    html = (out / "index.html").read_text(encoding="utf-8")
    thumbs = sorted(out.glob("thumbs/*/zh/*.jpg"))
    assert len(thumbs) == len(records) and all(Image.open(t).size == (48, 48) for t in thumbs)
    assert html.count('loading="lazy"') == len(records)
    assert 'href="images/pea-zh/zh/general-001_0.png"><img loading="lazy" src="thumbs/pea-zh/zh/general-001_0.jpg"' in html
    assert html.count('<span class="blank">blank</span>') == 2
    images = json.loads((out / "results.json").read_text(encoding="utf-8"))["images"]
    assert {(r["method"], r["id"]) for r in images if r["blank"]} == {("pea-zh", "general-002")}
    # general-002: pea-zh's blank images are not ranked, so the winner is another method
    row = html.split("<b>general-002</b>")[1].split("</tr>")[0]
    assert "<td data-value=\"nan\">—</td>" in row, "no difference for a method whose images are all blank"
    assert "pea-zh (by" not in row
    row = html.split("<b>general-001</b>")[1].split("</tr>")[0]
    assert "pea-zh (by" in row and 'data-sort="diff"' in html
    assert "own 2" in html and "EN 2" in html, "labelled scores"
    assert "<script>" in html and "http" not in html.split("<body>")[1], "no external assets"


def test_thumbnails_are_made_once_and_again_for_a_remade_image(tmp_path, report):
    out, records, summary, compared, _ = report
    thumb = out / "thumbs" / "translate" / "zh" / "general-001_0.jpg"
    stamp = thumb.stat().st_mtime_ns
    write_report(out, SETTINGS, SCORING, summary, compared, None, records, 48)
    assert thumb.stat().st_mtime_ns == stamp
    image = out / "images" / "translate" / "zh" / "general-001_0.png"
    Image.new("RGB", (64, 64), "white").save(image)
    write_report(out, SETTINGS, SCORING, summary, compared, None, records, 48)
    assert thumb.stat().st_mtime_ns > stamp
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["images"][0]["blank"] is True


def test_grid_shows_prompt_text_and_scores(report):
    out, *_ = report
    with Image.open(out / "grid_zh.png") as grid:
        assert grid.width == 300 + 3 * 48
        label = np.asarray(grid.convert("L").crop((0, 60, 300, grid.height)))
    assert (label < 128).sum() > 200, "the prompt text is drawn beside each row"


def test_a_cjk_font_is_found_or_the_default_is_used_with_a_note(tmp_path, caplog):
    if fonts.find_font() is None:
        pytest.skip("no CJK or DejaVu font on this machine (apt-get install fonts-wqy-microhei)")
    font = fonts.load_font(13)
    if "DejaVu" not in fonts.find_font().name:
        assert bytes(font.getmask("猫")) != bytes(font.getmask("狗")), "real glyphs, not the same box twice"
    assert bytes(font.getmask("Ж")) != bytes(font.getmask("Щ"))
    (tmp_path / "fonts").mkdir()
    with caplog.at_level(logging.WARNING, logger="evaluation.fonts"):
        default = fonts.load_font(13, (tmp_path / "fonts",))
    assert default.getbbox("a")[2] > 0
    assert "no font with CJK and Cyrillic found" in caplog.text and str(tmp_path / "fonts") in caplog.text
