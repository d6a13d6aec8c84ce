"""Shipped workflows: UI files match the live node registry; API twins execute in a real server."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

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
    "sdxl_style_lora.safetensors": "sdxl_standin_lora.safetensors",
    "lcm-lora-sdxl.safetensors": "sdxl_standin_lora.safetensors",
    "controlnet-canny-sdxl-1.0.safetensors": "sdxl_standin_controlnet.safetensors",
    "sd_xl_base_1.0_inpainting_0.1.safetensors": "sdxl_standin_inpaint.safetensors",
}
WITH_CLIP = {"07_sd15_english_vs_chinese_side_by_side": {"v1-5-pruned-emaonly.safetensors": "sd15_standin_clip.safetensors"}}


def with_stand_ins(graph: dict, extra: dict | None = None) -> dict:
    """Real file names -> stand-ins; 64-pixel latents and 2 steps so a CPU runs it in seconds."""
    graph = json.loads(json.dumps(graph))
    names = {**STAND_INS, **(extra or {})}
    for node in graph.values():
        inputs = node["inputs"]
        for k, v in inputs.items():
            if isinstance(v, str) and v in names:
                inputs[k] = names[v]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSampler":
            inputs["steps"] = min(inputs["steps"], 2)
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
    entry = server.run(with_stand_ins(api_workflows()[name], WITH_CLIP.get(name)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [im for out in entry["outputs"].values() for im in out.get("images", [])]
    assert images and all((server.base_dir / "output" / im["subfolder"] / im["filename"]).is_file() for im in images)


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "workflows"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python library is not installed (pip install playwright; no browser download needed)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.mark.parametrize("name", sorted(api_workflows()))
def test_ui_workflow_opens_in_the_browser_without_missing_nodes(server, browser, name):
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    page = browser.new_page(viewport={"width": 2400, "height": 1400})
    errors: list[str] = []
    page.goto(server.url, wait_until="domcontentloaded")
    page.wait_for_function("window.app && window.app.graph", timeout=120_000)
    page.wait_for_timeout(1000)
    page.keyboard.press("Escape")  # a first-run templates dialog, if any
    page.on("pageerror", lambda e: errors.append(str(e)))  # from here on: errors caused by the workflow
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1500)
    dialogs = " ".join(page.locator(".p-dialog").all_inner_texts())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    types = page.evaluate("window.app.graph._nodes.map(n => n.type)")
    unregistered = page.evaluate("window.app.graph._nodes.filter(n => n.constructor.nodeData === undefined && "
                                 "!['Note', 'MarkdownNote'].includes(n.type)).map(n => n.type)")
    page.close()
    assert "missing" not in dialogs.lower(), dialogs
    assert not errors, errors
    assert sorted(types) == sorted(n["type"] for n in workflow["nodes"])
    assert unregistered == []


def test_fifty_queued_runs_finish_and_memory_stays_flat(server):
    """Load: one server run queues workflow 2 fifty times with different prompts."""
    import time

    import psutil

    graph = with_stand_ins(api_workflows()["02_sdxl_chinese_text_to_image"])
    subjects = ["猫", "狗", "山", "河", "花", "鸟", "船", "桥", "塔", "树"]
    ids = []
    for i in range(50):
        g = json.loads(json.dumps(graph))
        g["4"]["inputs"]["text"] = f"第{i}幅画：一只{subjects[i % 10]}，{subjects[(i * 3) % 10]}在远处"
        g["9"]["inputs"]["filename_prefix"] = f"pea_load_{i:02d}"
        status, body = server.queue(g)
        assert status == 200, body
        ids.append(body["prompt_id"])
    process = psutil.Process(server.proc.pid)
    rss, deadline = {}, time.time() + 600
    for n, prompt_id in enumerate(ids, start=1):
        while prompt_id not in server.get(f"/history/{prompt_id}"):
            assert time.time() < deadline, f"run {n} did not finish"
            time.sleep(0.2)
        if n in (5, 50):
            rss[n] = process.memory_info().rss
    statuses = [server.get(f"/history/{p}")[p]["status"]["status_str"] for p in ids]
    assert statuses == ["success"] * 50
    assert rss[50] <= 1.10 * rss[5], f"resident memory grew from {rss[5] / 2**20:.0f} MiB to {rss[50] / 2**20:.0f} MiB"
