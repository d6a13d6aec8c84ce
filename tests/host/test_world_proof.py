"""The miniature-world proof, reduced: one seed, the PEA row, no lantern rows (the full table is
``python -m training.miniworld.proof``; docs/world_proof.md)."""
from __future__ import annotations

import json

import pytest

FLOOR = 0.55
"""PEA / teacher mean attribute accuracy, in each language, must stay above this. The test trains
its student for QUICK_STEPS (700), not the table's 1200: the 3-seed table measured at 700 steps
(2026-11-28, one thread) gave 0.81 to 1.00 in Chinese, 0.67 to 0.96 in Russian, the lowest being
seed 0, the seed this test runs, undertrained at 700 steps (its final feature-KD loss twice the
other seeds'). The floor sits 0.12 below it, for other machines' arithmetic (thread counts change
the reductions, and seed 0 moves most with them), and far above a trainer that stops
transferring: text-space alignment measures 0.38x, chance 0.30x."""


@pytest.mark.slow
def test_reduced_world_proof_keeps_the_pea_student_near_the_teacher(comfy_path, tmp_path):
    from training.miniworld.proof import OURS, QUICK_STEPS, run_proof

    results = run_proof(tmp_path / "proof", seeds=[0], rows=(OURS,), steps=QUICK_STEPS, progress=False,
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
