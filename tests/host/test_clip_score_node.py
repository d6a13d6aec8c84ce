"""Language CLIP Score in ComfyUI: in-process against the scorer, and in the real server (workflow 11)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.clip_score import load_clip_scorer, to_pil
from tests.host.test_workflows import api_workflows, with_stand_ins

PROMPT = "一只红色的猫坐在桌子上"


def test_node_scores_like_the_scorer_and_sorts_best_first(pack, base_dir):
    node = pack.NODE_CLASS_MAPPINGS["PEALanguageCLIPScore"]()
    images = torch.from_numpy(np.random.default_rng(3).random((4, 40, 48, 3), dtype=np.float32))
    sorted_images, scores, ranking = node.score(images, PROMPT, "chinese-clip-tiny")
    expected = load_clip_scorer(base_dir / "models" / "language_clip" / "chinese-clip-tiny").score(to_pil(images), PROMPT)
    order = torch.argsort(expected, descending=True, stable=True)
    assert scores == pytest.approx(expected[order].tolist(), abs=1e-5)
    assert scores == sorted(scores, reverse=True) and torch.equal(sorted_images, images[order])
    assert ranking.splitlines()[0] == f"1. CLIPScore {scores[0]:.2f} (batch image {int(order[0]) + 1})"
    assert len(ranking.splitlines()) == 4, "a prompt the CLIP reads whole gets no truncation note"


def test_ranking_says_when_the_prompt_was_cut_short(pack):
    node = pack.NODE_CLASS_MAPPINGS["PEALanguageCLIPScore"]()
    images = torch.from_numpy(np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32))
    *_, ranking = node.score(images, PROMPT * 6, "chinese-clip-tiny")  # 66 characters, a token each
    assert ranking.splitlines()[-1] == "The prompt is longer than this CLIP reads (52 tokens): only its start was scored."


def test_ranking_flags_blank_images(pack):
    """A black and a one-colour image (every channel's pixel spread below 0.01) are flagged; a
    faint gradient above it and noise are not."""
    node = pack.NODE_CLASS_MAPPINGS["PEALanguageCLIPScore"]()
    noise = torch.from_numpy(np.random.default_rng(5).random((32, 32, 3), dtype=np.float32))
    red = torch.zeros(32, 32, 3)
    red[..., 0] = 1.0
    gradient = torch.linspace(0.5, 0.55, 32).reshape(1, 32, 1).expand(32, 32, 3)  # spread 0.0146
    images = torch.stack([noise, torch.zeros(32, 32, 3), red, gradient])
    _, scores, ranking = node.score(images, PROMPT, "chinese-clip-tiny")
    flagged = sorted(int(re.search(r"batch image (\d)", line)[1]) for line in ranking.splitlines()
                     if line.endswith(" - blank image (near-constant pixels)"))
    assert flagged == [2, 3] and len(ranking.splitlines()) == 4


def test_node_refuses_a_text_only_clip_and_an_empty_prompt(pack):
    node = pack.NODE_CLASS_MAPPINGS["PEALanguageCLIPScore"]()
    images = torch.zeros(1, 32, 32, 3)
    with pytest.raises(Exception, match="chinese-clip-tiny-text.safetensors is a single file.*vision tower"):
        node.score(images, PROMPT, "chinese-clip-tiny-text.safetensors")
    with pytest.raises(ValueError, match="the prompt is empty"):
        node.score(images, "  ", "chinese-clip-tiny")


def test_workflow_11_ranks_a_batch_of_four_in_the_server(server, base_dir):
    graph = with_stand_ins(api_workflows()["11_sd15_chinese_best_of_four_by_clip_score"])
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    by_class = {n["class_type"]: key for key, n in graph.items()}
    (ranking,) = entry["outputs"][by_class["PreviewAny"]]["text"]
    scores = [float(s) for s in re.findall(r"CLIPScore (\d+\.\d+)", ranking)]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    out = server.base_dir / "output"
    ranked = [out / im["subfolder"] / im["filename"] for im in entry["outputs"]["11"]["images"]]
    (best,) = [out / im["subfolder"] / im["filename"] for im in entry["outputs"]["13"]["images"]]
    scorer = load_clip_scorer(base_dir / "models" / "language_clip" / "chinese-clip-tiny")
    source, _ = graph[by_class["PEALanguageCLIPScore"]]["inputs"]["text"]
    assert graph[by_class["PEAEncodePrompt"]]["inputs"]["text"] == [source, 0], "the prompt is typed once"
    text = graph[source]["inputs"]["value"]
    saved = scorer.score([Image.open(p).convert("RGB") for p in ranked], text).tolist()
    assert saved == pytest.approx(scores, abs=0.006)  # the saved PNGs score as the node did (2 decimals)
    assert np.array_equal(np.asarray(Image.open(best)), np.asarray(Image.open(ranked[0])))


def test_a_text_only_clip_fails_the_prompt_and_the_server_keeps_running(server):
    graph = with_stand_ins(api_workflows()["11_sd15_chinese_best_of_four_by_clip_score"])
    by_class = {n["class_type"]: key for key, n in graph.items()}
    graph[by_class["PEALanguageCLIPScore"]]["inputs"]["clip_name"] = "chinese-clip-tiny-text.safetensors"
    entry = server.run(graph)
    errors = [m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and "only its text tower" in errors[0], errors
    assert server.alive()


def test_object_info_lists_the_score_node(server):
    info = server.get("/object_info/PEALanguageCLIPScore")["PEALanguageCLIPScore"]
    assert info["display_name"] == "Language CLIP Score" and info["category"] == "conditioning/PEA"
    assert info["output"] == ["IMAGE", "FLOAT", "STRING"] and info["output_is_list"] == [False, True, False]
    assert "chinese-clip-tiny" in info["input"]["required"]["clip_name"][0]
