"""A hostile client and hostile model files against the real server: a tokenizer that panics,
model names outside the registered folders, links the folder listing cannot follow."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.broken_files import PANIC_PROMPT, UNREADABLE_LINKS
from tests.host.test_server import error_message, pea_graph
from tests.host.test_workflows import api_workflows, with_stand_ins

NOT_A_NAME = "is not a model name: pick one from the list"


def test_a_panicking_tokenizer_fails_its_prompt_and_the_next_prompt_runs(server):
    """The tokenizers library panics (a BaseException) on this prompt; unconverted, it killed
    ComfyUI's prompt worker and every later prompt waited forever."""
    bad = server.run(pea_graph("sd15_standin.safetensors", "pea_zh_sd15.safetensors", clip_name="panicking-tokenizer",
                               positive=PANIC_PROMPT, prefix="pea_panic"), timeout=120)
    assert bad["status"]["status_str"] == "error"
    assert re.search(r"The tokenizer of .*panicking-tokenizer crashed on this text \(tokenizers library: Onig: Regex "
                     r"search error: retry-limit-in-match over\)", error_message(bad)), error_message(bad)
    good = server.run(pea_graph("sd15_standin.safetensors", "pea_zh_sd15.safetensors", prefix="pea_after_panic"),
                      timeout=120)
    assert good["status"]["status_str"] == "success", good["status"]


def test_the_score_node_turns_the_panic_into_a_node_error_too(server):
    graph = with_stand_ins(api_workflows()["11_sd15_chinese_best_of_four_by_clip_score"])
    score = next(k for k, n in graph.items() if n["class_type"] == "PEALanguageCLIPScore")
    graph[score]["inputs"].update(clip_name="panicking-tokenizer", text=PANIC_PROMPT)
    entry = server.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "error"
    assert "panicking-tokenizer crashed on this text" in error_message(entry), error_message(entry)
    assert server.alive() and server.get("/queue")["queue_running"] == []


def outside_names(server) -> dict[str, str]:
    """Names reaching outside models/language_clip, each with a missing twin of the same shape."""
    base = server.base_dir
    upload = base / "input" / "pea_upload.safetensors"  # a packed model uploaded as an "image"
    shutil.copy(base / "models" / "language_clip" / "chinese-clip-tiny-text.safetensors", upload)
    return {
        str(base / "models" / "language_clip" / "chinese-clip-tiny"): str(base / "models" / "no-such-model"),
        "../../input/pea_upload.safetensors": "../../input/no-such-upload.safetensors",
        "../../extra_models/language_clip/extra-chinese-clip": "../../extra_models/language_clip/no-such-model",
        "chinese-clip-tiny/../chinese-clip-tiny": "chinese-clip-tiny/../no-such-model",
    }


@pytest.mark.parametrize("node", ["PEALoadLanguageCLIP", "PEALanguageCLIPScore"])
def test_names_outside_the_model_folders_are_refused_alike_whether_or_not_they_exist(server, node):
    for existing, missing in outside_names(server).items():
        messages = []
        for name in (existing, missing):
            if node == "PEALoadLanguageCLIP":
                graph, key = pea_graph("sd15_standin.safetensors", "pea_zh_sd15.safetensors", clip_name=name), "2"
            else:
                graph = with_stand_ins(api_workflows()["11_sd15_chinese_best_of_four_by_clip_score"])
                key = next(k for k, n in graph.items() if n["class_type"] == node)
                graph[key]["inputs"]["clip_name"] = name
            status, body = server.queue(graph)
            assert status == 400, body
            messages.append(str(body["node_errors"][key]).replace(repr(name)[1:-1], "NAME"))
        assert NOT_A_NAME in messages[0] and messages[0] == messages[1], messages
    assert server.alive()


def test_listed_names_still_resolve_in_both_model_folders(server):
    info = server.get("/object_info/PEALoadLanguageCLIP")["PEALoadLanguageCLIP"]
    names = info["input"]["required"]["clip_name"][0]
    assert {"chinese-clip-tiny", "laion/xlm-roberta-tiny", "extra-chinese-clip"} <= set(names)
    for name in ("laion/xlm-roberta-tiny", "extra-chinese-clip"):
        status, body = server.queue(pea_graph("sd15_standin.safetensors", "pea_zh_sd15.safetensors", clip_name=name))
        assert status == 200, body


def test_links_that_cannot_be_followed_leave_the_listing_working_and_are_logged_once(server):
    for _ in range(3):  # each /object_info lists the folder again
        info = server.get("/object_info")
        names = info["PEALoadLanguageCLIP"]["input"]["required"]["clip_name"][0]
        assert "chinese-clip-tiny" in names and "PEALanguageCLIPScore" in info
        assert not {"self-loop", "org-with-loop/loop"} & set(names)
    log = Path(server.log.name).read_text(encoding="utf-8", errors="replace")
    for link in UNREADABLE_LINKS:
        assert len(re.findall(rf"PEA: skipping \S*language_clip/{link} in the language_clip listing", log)) == 1, link


def test_the_nodes_resolve_names_at_load_time_too(pack, base_dir):
    """A graph that skipped validation (or a node called from another pack) cannot load outside either."""
    loader = pack.NODE_CLASS_MAPPINGS["PEALoadLanguageCLIP"]()
    scorer = pack.NODE_CLASS_MAPPINGS["PEALanguageCLIPScore"]()
    inside = base_dir / "models" / "language_clip" / "chinese-clip-tiny"
    for name in (str(inside), "../language_clip/chinese-clip-tiny"):
        with pytest.raises(FileNotFoundError, match=NOT_A_NAME):
            loader.load(name, "default", "cpu")
        with pytest.raises(FileNotFoundError, match=NOT_A_NAME):
            scorer.score(torch.zeros(1, 32, 32, 3), "一只猫", name, "cpu")
