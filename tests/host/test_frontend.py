"""The pack in ComfyUI's frontend: translations (locales/), help pages (web/docs/), search aliases, and
workflows saved with the socket type's first name."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.host.comfy_host import REPO, open_app
from tests.host.test_workflows import with_stand_ins
from tests.host.ui_workflows import WORKFLOWS

NODES = ("PEALoadLanguageCLIP", "PEAApplyAdapter", "PEAEncodePrompt", "PEALanguageCLIPScore")
LOCALES = REPO / "locales"
LANGUAGES = ("zh", "ru", "ja", "ko")
HELP = REPO / "web" / "docs"
ARTIFACTS = REPO / "test-artifacts" / "frontend"
PACK_URL = "/extensions/ComfyUI-PEA-Diffusion"
OLD_SOCKET_TYPE = "LANGUAGE_CLIP"
NODE_HELP_SINCE = (1, 27)
"""The oldest frontend seen here with node help pages (1.27.10, ComfyUI 0.3.64); 1.21.7 (0.3.41) has none."""


def english_node_defs(node_classes: dict, display_names: dict) -> dict:
    """The nodes' English texts in the frontend's nodeDefs.json layout: what locales/ translates."""
    defs = {}
    for node_id in NODES:
        cls = node_classes[node_id]
        spec = cls.INPUT_TYPES()
        inputs = {name: {"name": name, "tooltip": opts.get("tooltip")}
                  for section in ("required", "optional") for name, (_, *rest) in spec.get(section, {}).items()
                  for opts in [rest[0] if rest else {}]}
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        outputs = {str(i): {"name": name, "tooltip": tip} for i, (name, tip) in enumerate(zip(names, cls.OUTPUT_TOOLTIPS))}
        defs[node_id] = {"display_name": display_names[node_id], "description": cls.DESCRIPTION,
                         "inputs": inputs, "outputs": outputs}
    return defs


def shape(tree):
    """The keys of a nested dict, values replaced by whether they are set."""
    return {k: shape(v) for k, v in tree.items()} if isinstance(tree, dict) else tree is not None


def test_translations_cover_every_node_text(pack):
    """locales/en/nodeDefs.json is the English source of the translations: it must equal the nodes'
    live texts (rerun with PEA_WRITE_LOCALES=1 after changing one, then update zh, ru, ja and ko),
    and every language translates each text it has."""
    english = english_node_defs(pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS)
    source = LOCALES / "en" / "nodeDefs.json"
    if os.environ.get("PEA_WRITE_LOCALES"):
        source.write_text(json.dumps(english, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    assert json.loads(source.read_text(encoding="utf-8")) == english, \
        f"{source} is out of date: rerun with PEA_WRITE_LOCALES=1, then update the translations"
    for lang in LANGUAGES:
        translated = json.loads((LOCALES / lang / "nodeDefs.json").read_text(encoding="utf-8"))
        assert shape(translated) == shape(english), f"locales/{lang}/nodeDefs.json does not match the English texts"
        for node_id in NODES:
            for key in ("display_name", "description"):
                assert translated[node_id][key] not in ("", english[node_id][key]), (lang, node_id, key)


def test_search_aliases_name_the_languages(pack):
    for node_id in NODES:
        aliases = pack.NODE_CLASS_MAPPINGS[node_id].SEARCH_ALIASES
        assert {"multilingual", "translate", "中文", "翻译"} <= set(aliases), node_id
        assert len(set(aliases)) == len(aliases)


def test_server_serves_translations_and_help_pages(server):
    i18n = server.get("/i18n")
    for lang in LANGUAGES:
        assert i18n[lang]["nodeDefs"] == json.loads((LOCALES / lang / "nodeDefs.json").read_text(encoding="utf-8"))
    for node_id in NODES:
        for page in (f"{node_id}.md", f"{node_id}/zh.md"):
            text = server.get_text(f"{PACK_URL}/docs/{page}")
            assert text == (HELP / page).read_text(encoding="utf-8")


@pytest.fixture
def chinese_frontend(server):
    """The frontend's locale set to Chinese for one test (back to English afterwards)."""
    server.set_setting("Comfy.Locale", "zh")
    yield server
    server.set_setting("Comfy.Locale", "en")


def test_chinese_locale_shows_chinese_titles(chinese_frontend, browser):
    zh = json.loads((LOCALES / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    workflow = json.loads((WORKFLOWS / "11_sd15_chinese_best_of_four_by_clip_score.json").read_text(encoding="utf-8"))  # all four nodes
    page = open_app(browser, chinese_frontend.url)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1500)
    nodes = page.evaluate("window.app.graph._nodes.map(n => ({type: n.type, title: n.title, "
                          "inputs: (n.inputs || []).map(i => i.localized_name || i.label || i.name)}))")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chinese_titles.png"))
    page.close()
    shown = {n["type"]: n for n in nodes if n["type"] in NODES}
    assert set(shown) == set(NODES)
    for node_id, node in shown.items():
        assert node["title"] == zh[node_id]["display_name"], node
    assert "语言 CLIP" in shown["PEAApplyAdapter"]["inputs"], shown["PEAApplyAdapter"]


def test_help_page_opens_from_the_node_library(chinese_frontend, browser):
    page = open_app(browser, chinese_frontend.url)
    version = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")
    if tuple(int(p) for p in version.split(".")[:2]) < NODE_HELP_SINCE:
        page.close()
        pytest.skip(f"frontend {version} has no node help pages (first seen here in 1.27.10, ComfyUI 0.3.64)")
    fetched = []
    page.on("response", lambda r: fetched.append((r.url, r.status)) if r.url.endswith(".md") else None)
    page.locator(".node-library-tab-button").first.click()
    page.locator("input[placeholder]").first.fill("PEA")
    title = json.loads((LOCALES / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))["PEAApplyAdapter"]["display_name"]
    leaf = page.locator(".node-lib-node-container", has_text=title).first
    leaf.hover()
    leaf.locator(".help-button").click()
    heading = page.locator("h1", has_text=title)
    heading.wait_for(timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "help_page.png"))
    page.close()
    assert (f"{chinese_frontend.url}{PACK_URL}/docs/PEAApplyAdapter/zh.md", 200) in fetched, fetched


def test_workflow_saved_with_the_old_socket_type_loads_and_runs(server, browser):
    """Workflows saved before the socket type was prefixed name it LANGUAGE_CLIP on links and slots:
    the frontend keeps the link, and the prompt it queues runs."""
    current = (WORKFLOWS / "01_sd15_chinese_text_to_image.json").read_text(encoding="utf-8")
    old = json.loads(re.sub(r'"PEA_LANGUAGE_CLIP"', f'"{OLD_SOCKET_TYPE}"', current))
    assert OLD_SOCKET_TYPE in json.dumps(old["links"])
    page = open_app(browser, server.url)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", old)
    page.wait_for_timeout(1000)
    links = page.evaluate("(l => (l instanceof Map ? [...l.values()] : Object.values(l)).filter(Boolean).length)"
                          "(window.app.graph.links)")
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    page.close()
    assert links == len(old["links"])
    (adapter,) = [n for n in prompt.values() if n["class_type"] == "PEAApplyAdapter"]
    assert isinstance(adapter["inputs"]["language_clip"], list), adapter
    entry = server.run(with_stand_ins(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_help_pages_exist_for_every_node():
    for node_id in NODES:
        for page in (HELP / f"{node_id}.md", HELP / node_id / "zh.md"):
            assert page.read_text(encoding="utf-8").startswith("# "), page
    assert not list(Path(HELP).rglob("*.js")), "web/ holds help pages only: the frontend would load any .js as an extension"
