"""The README as a front door and docs/ behind it: links and anchors resolve, the README stays short,
every docs page is reachable from it, and every node of the pack is documented. Read as text: no
ComfyUI needed (the node classes are found by parsing nodes/, not importing it)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
NODES_DOC = DOCS / "nodes.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced code blocks (their '#' lines are not headings, their brackets not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, repeated headings numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """The link and image targets of a page that point inside the repository (or at its own headings)."""
    text = INLINE_CODE.sub("", prose(page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def node_mappings(name: str) -> dict[str, str]:
    """String entries of every module-level ``name = {...}`` dict literal in nodes/ (``**`` merges skipped)."""
    entries = {}
    for source in sorted((REPO / "nodes").rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
        for stmt in tree.body:
            if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)):
                for key, value in zip(stmt.value.keys, stmt.value.values):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        entries[key.value] = value.value if isinstance(value, ast.Constant) else ""
    return entries


NODE_IDS = sorted(node_mappings("NODE_CLASS_MAPPINGS"))
DISPLAY_NAMES = node_mappings("NODE_DISPLAY_NAME_MAPPINGS")


def test_slug_is_githubs():
    assert slug("Load Language CLIP (`PEALoadLanguageCLIP`)") == "load-language-clip-pealoadlanguageclip"
    assert slug("Does it work? The miniature world's proof") == "does-it-work-the-miniature-worlds-proof"
    assert slug("FLUX.1") == "flux1"
    assert slug("Train an adapter — for 中文") == "train-an-adapter--for-中文"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if REPO not in dest.parents and dest != REPO:
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO).as_posix()}")
    assert not broken, f"{page.relative_to(REPO).as_posix()} has broken links:\n" + "\n".join(broken)


def test_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, \
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move the detail to docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    orphans = [p.relative_to(REPO).as_posix() for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link to: {orphans}"


def test_nodes_are_found_in_the_source():
    assert NODE_IDS and set(NODE_IDS) == set(DISPLAY_NAMES), (NODE_IDS, DISPLAY_NAMES)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_node_is_documented(node_id):
    """Each node has its section in docs/nodes.md, headed by its display name and id, and the README
    names it in its introduction (before the first section) and by id."""
    display = DISPLAY_NAMES[node_id]
    assert f"{slug(display)}-{node_id.lower()}" in anchors(NODES_DOC), \
        f"docs/nodes.md has no section '## {display} (`{node_id}`)'"
    readme = README.read_text(encoding="utf-8")
    intro = readme.split("\n## ", 1)[0]
    assert display in intro, f"README's introduction does not name {display}"
    assert f"`{node_id}`" in readme, f"README does not name the node id {node_id}"
