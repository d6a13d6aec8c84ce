"""The miniature-world proof, reduced: one seed, the PEA row, no lantern rows (the full table is
``python -m training.miniworld.proof``; README, "Does it work?")."""
from __future__ import annotations

import json

import pytest

FLOOR = 0.70
"""PEA / teacher mean attribute accuracy, in each language, must stay above this. Measured with
the full table (3 seeds, 2026-11-26): 0.82 to 0.97 (the lowest: Chinese, seed 0, the seed this
test runs; Russian 0.89); the margin of 0.12 below it allows for other machines' arithmetic
taking the training elsewhere (on an H100 seed 0 gave 0.96 and 0.93)."""


@pytest.mark.slow
def test_reduced_world_proof_keeps_the_pea_student_near_the_teacher(comfy_path, tmp_path):
    from training.miniworld.proof import OURS, STUDENT_STEPS, run_proof

    results = run_proof(tmp_path / "proof", seeds=1, rows=(OURS,), steps=STUDENT_STEPS, progress=False,
                        concept=False)
    judge = results["judge_on_drawn_images"]
    assert min(judge[k] for k in ("color", "shape", "place", "size")) >= 0.95, judge
    summary = {row: s["mean"]["mean"] for row, s in results["summary"].items()}
    teacher = summary["teacher, English prompts"]
    assert teacher > 0.6, summary  # chance is 0.25 (8 colours, 7 shapes, 4 places, 2 sizes)
    for lang in ("zh", "ru"):
        assert summary[f"{OURS} ({lang})"] >= FLOOR * teacher, (lang, summary)
    saved = json.loads((tmp_path / "proof" / "proof.json").read_text(encoding="utf-8"))
    assert saved["summary"].keys() == results["summary"].keys()
    assert (tmp_path / "proof" / "samples.png").stat().st_size > 0
