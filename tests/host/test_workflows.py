"""Shipped workflows: UI files match the live node registry; API twins execute in a real server."""
from __future__ import annotations

import json
import os

import pytest

from tests.host.ui_workflows import FRONTEND_ONLY, NOTES, WORKFLOWS, api_to_ui, api_workflows

STAND_INS = {
    "v1-5-pruned-emaonly.safetensors": "sd15_standin.safetensors",
    "sd_xl_base_1.0.safetensors": "sdxl_standin.safetensors",
    "chinese-clip-vit-huge-patch14": "chinese-clip-tiny",
    "xlm-roberta-large-ViT-H-14": "laion/xlm-roberta-tiny",
    "pea_sd15_zh.safetensors": "pea_zh_sd15.safetensors",
    "pea_sdxl_zh.safetensors": "pea_zh_sdxl.safetensors",
    "pea_sdxl_multilingual.safetensors": "pea_xlmr_sdxl.safetensors",
}


def with_stand_ins(graph: dict) -> dict:
    """Real file names -> stand-ins; 64-pixel latents and 2 steps so a CPU runs it in seconds."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        inputs = node["inputs"]
        for k, v in inputs.items():
            if isinstance(v, str) and v in STAND_INS:
                inputs[k] = STAND_INS[v]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 2
    return graph


def test_every_workflow_has_a_ui_file_with_notes(server):
    info = server.get("/object_info")
    for name, api in api_workflows().items():
        ui = api_to_ui(api, info, NOTES[name])
        path = WORKFLOWS / f"{name}.json"
        if os.environ.get("PEA_WRITE_WORKFLOWS"):
            path.write_text(json.dumps(ui, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        assert json.loads(path.read_text(encoding="utf-8")) == ui, f"{path} is out of date: rerun with PEA_WRITE_WORKFLOWS=1"


@pytest.mark.parametrize("name", sorted(api_workflows()))
def test_ui_workflow_nodes_exist_and_links_match(server, name):
    info = server.get("/object_info")
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert any(n["type"] == "Note" and "models/" in n["widgets_values"][0] for n in ui["nodes"])
    for node in ui["nodes"]:
        assert node["type"] in info or node["type"] in FRONTEND_ONLY, f"missing node type {node['type']}"
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        out_type = info[nodes[src]["type"]]["output"][src_slot]
        in_type = nodes[dst]["inputs"][dst_slot]["type"]
        assert kind == out_type == in_type, (link_id, kind, out_type, in_type)


@pytest.mark.parametrize("name", sorted(api_workflows()))
def test_api_workflow_executes_with_stand_ins(server, name):
    entry = server.run(with_stand_ins(api_workflows()[name]))
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [im for out in entry["outputs"].values() for im in out.get("images", [])]
    assert images and all((server.base_dir / "output" / im["subfolder"] / im["filename"]).is_file() for im in images)
