"""API-format graphs (the shipped workflows' nodes), run by ComfyUI's own executor in this process.

The evaluator samples every method through the graph a user builds: *Load Checkpoint*, then
for PEA *Load Language CLIP* -> *Apply PEA Adapter* -> *PEA Encode Prompt* (the negative prompt
through *CLIP Text Encode* on the PEA CLIP), for the baselines *CLIP Text Encode* on the
checkpoint's CLIP; *Empty Latent Image*, *KSampler*, *VAE Decode*, *Preview Image*. ComfyUI's
``execution.PromptExecutor`` validates and runs them (classic and V3 nodes alike) and keeps, in its
own cache, the outputs the next graph can reuse, so loaders run once per method rather than once
per image. The evaluator reads the decoded IMAGE from that cache and writes the PNG itself, so the
preview node is validated but not run.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from adapters.errors import PEAError

from .errors import EvaluationError

T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    """KSampler and latent settings shared by every method."""

    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str


def _sampled(graph: dict, positive: list, negative: list, sampling: Sampling, seed: int) -> dict:
    graph.update({
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": sampling.width, "height": sampling.height, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["checkpoint", 0], "positive": positive, "negative": negative, "latent_image": ["latent", 0],
            "seed": seed, "steps": sampling.steps, "cfg": sampling.cfg, "sampler_name": sampling.sampler,
            "scheduler": sampling.scheduler, "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    })
    return graph


def checkpoint_graph(checkpoint: str) -> dict:
    return {"checkpoint": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}


def english_graph(checkpoint: str, text: str, sampling: Sampling, seed: int) -> dict:
    """``text`` (English) through the checkpoint's own CLIP; the empty negative prompt too."""
    graph = checkpoint_graph(checkpoint)
    graph["positive"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["checkpoint", 1], "text": text}}
    graph["negative"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["checkpoint", 1], "text": ""}}
    return _sampled(graph, ["positive", 0], ["negative", 0], sampling, seed)


def pea_graph(checkpoint: str, language_clip: str, adapter: str, text: str, sampling: Sampling, seed: int) -> dict:
    """``text`` through Load Language CLIP -> Apply PEA Adapter -> PEA Encode Prompt."""
    graph = checkpoint_graph(checkpoint)
    graph["language_clip"] = {"class_type": "PEALoadLanguageCLIP", "inputs": {
        "clip_name": language_clip, "dtype": "default", "device": "default", "context_length": 0}}
    graph["pea_clip"] = {"class_type": "PEAApplyAdapter", "inputs": {
        "language_clip": ["language_clip", 0], "adapter_name": adapter, "model": ["checkpoint", 0]}}
    size = {"width": sampling.width, "height": sampling.height, "crop_w": 0, "crop_h": 0,
            "target_width": sampling.width, "target_height": sampling.height}
    graph["positive"] = {"class_type": "PEAEncodePrompt", "inputs": {"clip": ["pea_clip", 0], "text": text, **size}}
    graph["negative"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["pea_clip", 0], "text": ""}}
    return _sampled(graph, ["positive", 0], ["negative", 0], sampling, seed)


class Host:
    """The server side ComfyUI's executor expects from whoever embeds it (in ComfyUI, ``server.PromptServer``).

    Graphs run for its one client, :data:`CLIENT`: the executor then keeps ``last_node_id`` (the
    node running now) and sends that client's messages to :meth:`send_sync`, which drops them (the
    executor keeps its status messages itself). Step progress reaches :meth:`progress`, ComfyUI's
    global progress-bar hook.
    """

    CLIENT = "pea-evaluation"

    def __init__(self, on_progress: Callable[[str | None, int, int], None] | None = None):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.on_progress = on_progress

    def send_sync(self, event, data, sid=None) -> None:
        """A message for the client's web page; there is none."""

    def queue_updated(self) -> None:
        """The queue changed; the evaluator has none."""

    def progress(self, value, total, preview_image, prompt_id=None, node_id=None) -> None:
        """ComfyUI's progress-bar hook: step ``value`` of ``total`` in the node running now."""
        if self.on_progress is not None:
            self.on_progress(node_id or self.last_node_id, value, total)


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """``coroutine``'s result: run here, or, where this thread already runs an event loop (a
    caller's, e.g. a browser driver's), on a thread of its own, as ComfyUI's prompt worker runs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(asyncio.run, coroutine).result()

class GraphExecutor:
    """ComfyUI's ``execution.PromptExecutor`` in this process, with its classic output cache.

    Works with the executors of ComfyUI 0.3.41 (synchronous) to the newest (``execute_async``,
    asynchronous validation and cache); the nodes must be in ``nodes.NODE_CLASS_MAPPINGS``.
    """

    def __init__(self, host: Host | None = None):
        import execution

        class Executor(execution.PromptExecutor):
            failure = None
            """(node id, class type, exception) of the node that failed in the last graph."""

            def handle_execution_error(self, prompt_id, prompt, current_outputs, executed, error, ex):
                super().handle_execution_error(prompt_id, prompt, current_outputs, executed, error, ex)
                self.failure = (error["node_id"], prompt[error["node_id"]]["class_type"], ex)

        self.host = host or Host()
        wanted = inspect.signature(execution.PromptExecutor.__init__).parameters
        caching = {"cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}} if "cache_args" in wanted else {}
        self.executor = Executor(self.host, cache_type=execution.CacheType.CLASSIC, **caching)

    def run(self, graph: dict, output: str) -> tuple:
        """Validate ``graph``, run node ``output`` and what it needs, and return its outputs."""
        import comfy.utils

        comfy.utils.set_progress_bar_global_hook(self.host.progress)
        try:
            return run_to_end(self._run(graph, output))
        finally:
            comfy.utils.set_progress_bar_global_hook(None)

    @property
    def messages(self) -> list[tuple[str, dict]]:
        """What the executor reported on the last graph (execution_start, execution_cached, ...)."""
        return self.executor.status_messages

    async def _run(self, graph: dict, output: str) -> tuple:
        prompt_id = str(uuid.uuid4())
        await self._validate(graph, prompt_id)
        self.host.last_prompt_id = prompt_id
        self.executor.failure = None
        if hasattr(self.executor, "execute_async"):
            await self.executor.execute_async(graph, prompt_id, {"client_id": Host.CLIENT}, [output])
        else:
            self.executor.execute(graph, prompt_id, {"client_id": Host.CLIENT}, [output])
        if self.executor.failure is not None:
            node_id, class_type, ex = self.executor.failure
            if isinstance(ex, PEAError):  # the pack's own error, as the node raised it
                raise ex
            raise EvaluationError(f"{class_type} (node {node_id}) failed: {type(ex).__name__}: {ex}") from ex
        entry = self.executor.caches.outputs.get(output)
        if inspect.isawaitable(entry):
            entry = await entry
        outputs = getattr(entry, "outputs", entry)  # a CacheEntry from 0.10, the output lists before
        if outputs is None:
            raise EvaluationError(f"node {output} ({graph[output]['class_type']}) left no output")
        return tuple(values[0] for values in outputs)

    @staticmethod
    async def _validate(graph: dict, prompt_id: str) -> None:
        import execution

        if len(inspect.signature(execution.validate_prompt).parameters) == 1:
            checked = execution.validate_prompt(graph)
        else:
            checked = execution.validate_prompt(prompt_id, graph, None)
        if inspect.isawaitable(checked):
            checked = await checked
        valid, error, _outputs, node_errors = checked
        if not valid:
            reasons = [f"{e['class_type']} (node {node_id}): {r['message']}: {r['details']}"
                       for node_id, e in node_errors.items() for r in e["errors"]]
            why = "; ".join(reasons) or f"{error['message']} {error['details']}".strip()
            raise EvaluationError(f"ComfyUI refused the graph: {why}")
