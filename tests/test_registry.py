"""What the Comfy Registry checks when the pack is published: its code scan and pyproject.toml's fields
(read the way comfy-cli's registry/config_parser.py reads them)."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.host import releases

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


def test_registry_code_scan_passes():
    """The Registry's ruff rules: no exec (S102), no eval (S307), no statements joined by ';' (E702)."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "--select", "S102,S307,E702", "--no-cache"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pyproject_has_the_registry_fields():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,98}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    systems = [c.removeprefix("Operating System :: ") for c in project["classifiers"] if c.startswith("Operating System :: ")]
    assert systems and all(s.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for s in systems)
    accelerators = [c.removeprefix("Environment :: ") for c in project["classifiers"] if c.startswith("Environment ::")]
    assert accelerators and set(accelerators) <= ACCELERATORS


def test_requires_comfyui_is_the_oldest_tested_release():
    required = PYPROJECT["tool"]["comfy"]["requires-comfyui"]
    assert all(VERSION_PART.match(part.strip()) for part in required.split(",")), required
    archived = sorted(releases.archive_version(a) for a in releases.ARCHIVES.glob("ComfyUI-v*.tar.gz"))
    if archived:
        oldest = min(archived, key=lambda v: tuple(int(p) for p in v.split(".")))
        assert required == f">={oldest}", f"requires-comfyui {required}: the oldest release tested is {oldest}"


def test_pyproject_dependencies_are_requirements_txt():
    """The Registry reads pyproject's dependencies; ComfyUI-Manager and the README install requirements.txt."""
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert PYPROJECT["project"]["dependencies"] == [line.strip() for line in lines if line.strip()]
