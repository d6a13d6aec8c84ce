"""Finding, importing and serving a real ComfyUI for the host tests (never a mock)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from comfy_runtime import PACK_ROOT, load_pack  # noqa: F401  (load_pack: used by the fixtures)

REPO = PACK_ROOT


def call_node(node_class, **inputs) -> tuple:
    """Run a stock node class outside a graph, on whichever node API the release gives it:
    V3 nodes (``comfy_api`` ``io.ComfyNode``, from 0.3.4x on for many core nodes) through their
    classmethod ``execute``, V1 nodes through the method their ``FUNCTION`` names. The outputs,
    as a tuple."""
    if hasattr(node_class, "define_schema"):  # V3
        return tuple(node_class.execute(**inputs).args)
    out = getattr(node_class(), node_class.FUNCTION)(**inputs)
    return tuple(out["result"] if isinstance(out, dict) else out)


def open_app(browser, url: str, viewport: tuple[int, int] = (2400, 1400)):
    """A browser page with ComfyUI's frontend loaded and its graph ready."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_function("window.app && window.app.graph", timeout=120_000)
    page.wait_for_timeout(1000)
    return page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A real ComfyUI server on loopback, started once per test session."""

    def __init__(self, comfy_path: Path, base_dir: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_dir = base_dir
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base_dir), "--disable-auto-launch", "--dont-print-server",
             "--extra-model-paths-config", str(base_dir / "extra_model_paths.yaml")],
            cwd=comfy_path, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; see {self.log.name}")
            try:
                self.get("/object_info/KSampler")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
                continue
            # A returning user: pages open the default workflow, not the first-run templates browser,
            # whose loading placeholders animate as long as the page is open (a CPU core on 0.10.0,
            # where Escape does not close it).
            self.set_setting("Comfy.TutorialCompleted", True)
            return
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s; see {self.log.name}")

    def alive(self) -> bool:
        return self.proc.poll() is None and "KSampler" in self.get("/object_info/KSampler")

    def get(self, route: str):
        return json.loads(self.get_text(route))

    def get_text(self, route: str) -> str:
        with urllib.request.urlopen(self.url + route, timeout=30) as r:
            return r.read().decode("utf-8")

    def set_setting(self, setting: str, value) -> None:
        """A frontend setting (ComfyUI stores them per user on the server; pages read them when they load)."""
        req = urllib.request.Request(f"{self.url}/settings/{setting}", data=json.dumps(value).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.status

    def queue(self, graph: dict) -> tuple[int, dict]:
        """POST /prompt; (HTTP status, JSON body)."""
        data = json.dumps({"prompt": graph, "client_id": "pea-tests"}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """Queue a graph and wait for its history entry (status and outputs)."""
        status, body = self.queue(graph)
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {body}")
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
