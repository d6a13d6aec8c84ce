"""API-format graphs (the shipped workflows' nodes) and an in-process runner for them.

The evaluator samples every method through the graph a user builds: *Load Checkpoint*, then
for PEA *Load Language CLIP* -> *Apply PEA Adapter* -> *PEA Encode Prompt* (the negative prompt
through *CLIP Text Encode* on the PEA CLIP), for the baselines *CLIP Text Encode* on the
checkpoint's CLIP; *Empty Latent Image*, *KSampler*, *VAE Decode*. The runner calls the node
classes as ComfyUI's executor does (``VALIDATE_INPUTS``, then ``FUNCTION``, under
``torch.inference_mode``) and, like ComfyUI's default cache, keeps the outputs of the nodes the
last graph used, so loaders run once per method rather than once per image.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import torch

from .errors import EvaluationError


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


class GraphRunner:
    """Runs API-format graphs of classic (``FUNCTION``) nodes in this process."""

    def __init__(self, node_classes: dict[str, type]):
        self.node_classes = node_classes
        self.cache: dict[str, tuple] = {}

    def run(self, graph: dict, output: str) -> tuple:
        """The outputs of node ``output`` (and of everything it needs)."""
        signatures: dict[str, str] = {}
        used: dict[str, tuple] = {}

        def signature(key: str) -> str:
            if key not in signatures:
                node = graph[key]
                inputs = {name: ["link", signature(v[0]), v[1]] if isinstance(v, list) else v
                          for name, v in node["inputs"].items()}
                signatures[key] = json.dumps([node["class_type"], inputs], sort_keys=True, ensure_ascii=False)
            return signatures[key]

        def execute(key: str) -> tuple:
            sig = signature(key)
            if sig not in used:
                used[sig] = self.cache[sig] if sig in self.cache else self._call(key, graph[key], execute)
            return used[sig]

        with torch.inference_mode():
            result = execute(output)
        self.cache = used
        return result

    def _call(self, key: str, node: dict, execute) -> tuple:
        cls = self.node_classes.get(node["class_type"])
        if cls is None or not hasattr(cls, "FUNCTION"):
            raise EvaluationError(f"node {key}: {node['class_type']} is not a classic ComfyUI node known here")
        inputs = {name: execute(v[0])[v[1]] if isinstance(v, list) else v for name, v in node["inputs"].items()}
        if hasattr(cls, "VALIDATE_INPUTS"):
            wanted = inspect.signature(cls.VALIDATE_INPUTS).parameters
            valid = cls.VALIDATE_INPUTS(**{k: v for k, v in inputs.items() if k in wanted})
            if valid is not True:
                raise EvaluationError(f"{node['class_type']}: {valid}")
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        return out["result"] if isinstance(out, dict) else out
